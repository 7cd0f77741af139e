package metrics

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/authproxy/authproxy/proxy"
)

type fakeSource struct {
	inFlight, dialogs int
	health            []proxy.UpstreamHealth
}

func (f *fakeSource) InFlight() int                          { return f.inFlight }
func (f *fakeSource) DialogCount() int                       { return f.dialogs }
func (f *fakeSource) UpstreamHealth() []proxy.UpstreamHealth { return f.health }

func TestObserverCounters(t *testing.T) {
	m := New("v1.2.3")
	m.RequestDone("MESSAGE", "pbx-a", 200, "relayed", 30*time.Millisecond, 20*time.Millisecond)
	m.RequestDone("MESSAGE", "pbx-a", 200, "relayed", 30*time.Millisecond, 20*time.Millisecond)
	m.RequestDone("INVITE", "", 404, "no-route", time.Millisecond, 0)
	m.RequestDone("X-INVENTED", "pbx-a", 0, "", time.Millisecond, 0)
	m.RequestDone("REGISTER", "pbx-b", 401, "challenge-limit", time.Millisecond, time.Millisecond)
	m.ChallengeAnswered("pbx-a", "asterisk", false)
	m.ChallengeAnswered("pbx-a", "asterisk", true)
	m.AuthRejected("pbx-b")
	m.RequestResent("pbx-a")
	m.Refused("rate-limited")
	m.UpstreamStateChanged("pbx-a", false)
	m.ConfigReloaded(ReloadRejected)
	m.Failover("carrier-a", "timeout")
	m.Failover("carrier-a", "503")
	m.Failover("carrier-a", "503")

	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"requests MESSAGE pbx-a 200", value(t, m.requests.WithLabelValues("MESSAGE", "pbx-a", "200")), 2},
		{"requests INVITE none 404", value(t, m.requests.WithLabelValues("INVITE", "none", "404")), 1},
		{"requests other pbx-a none", value(t, m.requests.WithLabelValues("other", "pbx-a", "none")), 1},
		{"outcome none", value(t, m.outcomes.WithLabelValues("pbx-a", "none")), 1},
		{"challenges", value(t, m.challenges.WithLabelValues("pbx-a", "asterisk")), 2},
		{"stale", value(t, m.staleRetries.WithLabelValues("pbx-a")), 1},
		{"rejected", value(t, m.authFailures.WithLabelValues("pbx-b", "rejected")), 1},
		{"challenge-limit", value(t, m.authFailures.WithLabelValues("pbx-b", "challenge-limit")), 1},
		{"retries", value(t, m.retries.WithLabelValues("pbx-a")), 1},
		{"refused", value(t, m.refused.WithLabelValues("rate-limited")), 1},
		{"state changes", value(t, m.stateChanges.WithLabelValues("pbx-a", "down")), 1},
		{"reloads", value(t, m.reloads.WithLabelValues("rejected")), 1},
		{"failovers timeout", value(t, m.failovers.WithLabelValues("carrier-a", "timeout")), 1},
		{"failovers 503", value(t, m.failovers.WithLabelValues("carrier-a", "503")), 2},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if n := series(m.duration); n != 4 {
		t.Errorf("request_duration_seconds has %d series, want 4 (MESSAGE, INVITE, other, REGISTER)", n)
	}
	if n := series(m.upstreamTime); n != 2 {
		t.Errorf("upstream_request_duration_seconds has %d series, want 2 (no observation without a next hop)", n)
	}
}

func TestRealmCap(t *testing.T) {
	m := New("test")
	for i := range maxRealms + 10 {
		m.ChallengeAnswered("pbx-a", fmt.Sprintf("realm-%d", i), false)
	}
	if n := series(m.challenges); n != maxRealms+1 {
		t.Fatalf("%d realm series, want %d and \"other\"", n, maxRealms)
	}
	if got := value(t, m.challenges.WithLabelValues("pbx-a", "other")); got != 10 {
		t.Fatalf("other = %v, want 10", got)
	}
	m.ChallengeAnswered("pbx-a", "realm-0", false) // seen before the cap: kept
	if got := value(t, m.challenges.WithLabelValues("pbx-a", "realm-0")); got != 2 {
		t.Fatalf("realm-0 = %v, want 2", got)
	}
}

func TestHandlerGaugesAndHealth(t *testing.T) {
	m := New("v9")
	src := &fakeSource{inFlight: 3, dialogs: 2, health: []proxy.UpstreamHealth{
		{Name: "pbx-a", State: proxy.HealthUp, LastRTT: 1500 * time.Microsecond, Pings: 10, Failures: 1},
		{Name: "pbx-b", State: proxy.HealthDown, Pings: 4, Failures: 4},
		{Name: "pbx-c", State: proxy.HealthUnknown},
		{Name: "carrier", State: proxy.HealthUp, Resolved: time.Unix(1700000000, 0), ResolveError: "lookup timed out", Targets: []proxy.TargetHealth{
			{Transport: "udp", Address: "192.0.2.1:5060", State: proxy.HealthUp},
			{Transport: "udp", Address: "192.0.2.2:5060", State: proxy.HealthDown},
			{Transport: "tcp", Address: "[2001:db8::1]:5060", State: proxy.HealthUnknown},
		}},
	}}
	m.Attach(src)
	m.Attach(src) // a second call does nothing (no duplicate registration panic)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	text := string(body)
	for _, want := range []string{
		"authproxy_active_transactions 3",
		"authproxy_dialogs 2",
		`authproxy_upstream_up{upstream="pbx-a"} 1`,
		`authproxy_upstream_up{upstream="pbx-b"} 0`,
		`authproxy_upstream_ping_rtt_seconds{upstream="pbx-a"} 0.0015`,
		`authproxy_upstream_pings_total{result="answered",upstream="pbx-a"} 9`,
		`authproxy_upstream_pings_total{result="failed",upstream="pbx-b"} 4`,
		`authproxy_build_info{goversion="go`,
		`version="v9"} 1`,
		`authproxy_upstream_targets{upstream="carrier"} 3`,
		`authproxy_upstream_target_up{target="192.0.2.1:5060",transport="udp",upstream="carrier"} 1`,
		`authproxy_upstream_target_up{target="192.0.2.2:5060",transport="udp",upstream="carrier"} 0`,
		`authproxy_upstream_resolve_last_success_timestamp_seconds{upstream="carrier"} 1.7e+09`,
		`authproxy_upstream_resolve_ok{upstream="carrier"} 0`,
		"go_goroutines",
		"process_",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(text, `authproxy_upstream_up{upstream="pbx-c"}`) {
		t.Error("an upstream of unknown health has an authproxy_upstream_up series")
	}
	if !strings.Contains(text, `authproxy_upstream_pings_total{result="failed",upstream="pbx-c"} 0`) {
		t.Error("an upstream not pinged yet has no authproxy_upstream_pings_total series at 0")
	}
	if strings.Contains(text, `target="[2001:db8::1]:5060"`) {
		t.Error("a target of unknown health has a health series")
	}
	if strings.Contains(text, "authproxy_requests_total{") {
		t.Error("request series before any request")
	}
}

// value returns the value of a counter or gauge.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// series counts the series a collector reports.
func series(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 1024)
	c.Collect(ch)
	close(ch)
	return len(ch)
}
