package scenarios

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
)

// TestOpsMetricsPromtoolLint scrapes /metrics of a running proxy after a
// few requests (so that histograms and labelled counters have series) and
// feeds it to Prometheus' own linter, `promtool check metrics`: any
// finding (a name without its unit, a counter without _total, a
// non-base unit...) fails the test. promtool is in the Debian package
// prometheus (scripts/install-peers); without it the test skips, or fails
// with CI=true.
func TestOpsMetricsPromtoolLint(t *testing.T) {
	peers.Require(t, "promtool")
	promtool, err := peers.LookPath("promtool")
	if err != nil {
		t.Fatal(err)
	}
	h := startOps(t, opsOptions{})
	if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}); res.StatusCode != 200 {
		t.Fatalf("MESSAGE to pbx-a: %d", res.StatusCode)
	}
	if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1@nowhere.example.net", FromUser: "1001"}); res.StatusCode != 404 {
		t.Fatalf("MESSAGE to an unknown host: %d, want 404", res.StatusCode)
	}
	h.tap.waitRequests(t, 2)
	code, body := testutil.HTTPGet(t, h.admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{"authproxy_request_duration_seconds_bucket", `authproxy_requests_refused_total{reason="rate-limited"} 0`} {
		if !strings.Contains(body, want) {
			t.Fatalf("/metrics lacks %s; nothing to lint", want)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if err != nil || strings.TrimSpace(out.String()) != "" {
		t.Fatalf("promtool check metrics: %v\n%s", err, out.String())
	}
}
