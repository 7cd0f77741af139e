package scenarios

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// requestLine waits for the log line authproxy writes when it is done
// with the request of callID and returns its fields.
func requestLine(t *testing.T, h *harness, callID string) map[string]any {
	t.Helper()
	var fields map[string]any
	testutil.Eventually(t, "the request line of call "+callID, func() bool {
		for line := range strings.SplitSeq(h.Logs.String(), "\n") {
			if !strings.Contains(line, `"msg":"request"`) || !strings.Contains(line, `"call_id":"`+callID+`"`) {
				continue
			}
			if err := json.Unmarshal([]byte(line), &fields); err != nil {
				t.Fatalf("request line %q: %v", line, err)
			}
			return true
		}
		return false
	})
	return fields
}

// TestTroubleshootingOutcomes: what the README's troubleshooting table
// says the client sees and the request's log line says, case by case:
// status, outcome, and the fields the line always has.
func TestTroubleshootingOutcomes(t *testing.T) {
	ha1 := md5.Sum([]byte("alice:asterisk:" + alicePassword))
	deadLn, err := net.Listen("tcp", "127.0.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := deadLn.Addr().String()
	_ = deadLn.Close()
	for _, tc := range []struct {
		name    string
		opts    harnessOptions
		ruri    string
		status  int
		outcome string
	}{
		{name: "rejected", opts: harnessOptions{A: fakepbx.Config{Accounts: map[string]string{"alice": "not-the-configured-one"}}},
			ruri: "sip:1002@pbx-a.example.com", status: 401, outcome: "rejected"},
		{name: "no-usable-challenge", opts: harnessOptions{A: fakepbx.Config{Algorithms: []string{"SHA-256"}},
			Credentials: func(a, b string) []credentials.Entry {
				// An MD5 HA1 only: nothing to answer a SHA-256 challenge with.
				return []credentials.Entry{{Username: "alice", HA1: map[string]credentials.Secret{"MD5": credentials.NewSecret(hex.EncodeToString(ha1[:]))}, Server: a}}
			}},
			ruri: "sip:1002@pbx-a.example.com", status: 401, outcome: "no-usable-challenge"},
		{name: "no-route", ruri: "sip:1002@elsewhere.example.net", status: 404, outcome: "no-route"},
		{name: "timeout", opts: harnessOptions{A: fakepbx.Config{Silent: true}, UpstreamTimeout: 1500 * time.Millisecond},
			ruri: "sip:1002@pbx-a.example.com", status: 408, outcome: "timeout"},
		{name: "unreachable", opts: harnessOptions{ExtraUpstreams: []proxy.Upstream{{Name: "dead", Address: dead, Transport: "tcp", Domains: []string{"dead.example.com"}}}},
			ruri: "sip:1002@dead.example.com", status: 503, outcome: "unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, tc.opts)
			callID := uuid.NewString()
			res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: tc.ruri, FromUser: "1001", CallID: callID})
			if res.StatusCode != tc.status {
				t.Fatalf("client got %d, want %d", res.StatusCode, tc.status)
			}
			line := requestLine(t, h, callID)
			if line["outcome"] != tc.outcome {
				t.Errorf("outcome %v, want %s: %v", line["outcome"], tc.outcome, line)
			}
			if line["status"] != float64(tc.status) {
				t.Errorf("logged status %v, want %d", line["status"], tc.status)
			}
			keys := []string{"method", "call_id", "challenges", "realms_answered", "duration"}
			if tc.outcome != "no-route" {
				keys = append(keys, "upstream")
			}
			for _, k := range keys {
				if _, ok := line[k]; !ok {
					t.Errorf("request line lacks %s: %v", k, line)
				}
			}
		})
	}
}
