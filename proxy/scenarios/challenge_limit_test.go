package scenarios

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
)

// TestChallengeLimit: an upstream that answers every answer with a new
// stale=true challenge (stale retries are allowed, so nothing else ends
// the loop) gets exactly max_challenges re-sends of a request; then its
// last challenge reaches the client, logged as challenge-limit. Default
// budget (3) and configured ones, under the default configuration and
// with preemptive off, for a request on the fast lane (MESSAGE over UDP),
// one on a transaction (MESSAGE over TCP) and an INVITE.
func TestChallengeLimit(t *testing.T) {
	for _, pm := range preemptiveModes(t) {
		for _, budget := range []int{0, 1, 5} {
			for _, tc := range []struct {
				method    sip.RequestMethod
				transport string
			}{{sip.MESSAGE, "udp"}, {sip.MESSAGE, "tcp"}, {sip.INVITE, "udp"}} {
				t.Run(fmt.Sprintf("%s/max_challenges=%d/%s/%s", pm.name, budget, tc.method, tc.transport), func(t *testing.T) {
					testChallengeLimit(t, pm, budget, tc.method, tc.transport)
				})
			}
		}
	}
}

// testChallengeLimit is one case of TestChallengeLimit; budget 0 leaves
// the default.
func testChallengeLimit(t *testing.T, pm preemptiveMode, budget int, method sip.RequestMethod, transport string) {
	h := startHarness(t, harnessOptions{Preemptive: pm.mode, A: fakepbx.Config{StaleAlways: true}})
	want := 3 // proxy.max_challenges' default (README)
	if budget > 0 {
		cfg := h.Config
		cfg.MaxChallenges = budget
		if err := h.Proxy.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		want = budget
	}
	c := siptest.Request{Method: method, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"}
	res := h.final(t, transport, c)
	if res.StatusCode != 401 {
		t.Fatalf("status %d %s, want the upstream's 401 relayed", res.StatusCode, res.Reason)
	}
	reqs := h.A.Requests()
	var sent []fakepbx.Request
	for _, r := range reqs {
		if r.Method == string(method) {
			sent = append(sent, r)
		}
	}
	if got := len(sent) - 1; got != want {
		t.Fatalf("upstream got %d re-sends, want max_challenges = %d: %v", got, want, summarize(sent))
	}
	for i, r := range sent[1:] {
		if !strings.Contains(strings.Join(r.Authorization, " "), `username="alice"`) {
			t.Fatalf("re-send %d carries no answer: %v", i+1, r.Authorization)
		}
	}
	if n := h.A.Challenges(); n != want+1 {
		t.Fatalf("upstream sent %d challenges, want %d", n, want+1)
	}
	// The client got the last challenge: stale, with a nonce no request
	// answered.
	hdr := res.GetHeader("WWW-Authenticate")
	if hdr == nil {
		t.Fatalf("401 without WWW-Authenticate:\n%s", res)
	}
	ch, err := digest.ParseChallenge(hdr.Value())
	if err != nil {
		t.Fatal(err)
	}
	if !ch.Stale {
		t.Errorf("relayed challenge %q is not the stale re-challenge", hdr.Value())
	}
	for _, r := range reqs {
		if strings.Contains(strings.Join(r.Authorization, " "), ch.Nonce) {
			t.Errorf("the relayed challenge's nonce was answered upstream: it is not the last one")
		}
	}
	testutil.Eventually(t, "the request logged as challenge-limit", func() bool {
		return strings.Contains(h.Logs.String(), `"outcome":"challenge-limit"`)
	})
}
