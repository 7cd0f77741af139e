package e2e

import (
	"fmt"
	"regexp"
	"sync"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/proxy"
)

var ncParam = regexp.MustCompile(`\bnc=([0-9a-fA-F]{8})\b`)

// ncOf returns the nc of the first credentials of r, "" when none.
func ncOf(r fakepbx.Request) string {
	for _, a := range r.Authorization {
		if m := ncParam.FindStringSubmatch(a); m != nil {
			return m[1]
		}
	}
	return ""
}

// sendNew sends one out-of-dialog request (a new Call-ID) through pbx-a and
// returns the requests pbx-a received for it.
func sendNew(t *testing.T, h *harness, method sip.RequestMethod) []fakepbx.Request {
	t.Helper()
	before := len(h.A.Requests())
	res := h.final(t, "udp", clientRequest{Method: method, RequestURI: ruriFor(method, "pbx-a.example.com", "alice"), FromUser: "alice", Body: []byte("hi"), ContentType: "text/plain"})
	if res.StatusCode != sip.StatusOK {
		t.Fatalf("%s: status %d, want 200", method, res.StatusCode)
	}
	return h.A.Requests()[before:]
}

// TestPreemptiveAuth: after one challenge, the next request of the same
// method to the same upstream goes with credentials on the first try, the
// nonce's nc incremented.
func TestPreemptiveAuth(t *testing.T) {
	for _, m := range []sip.RequestMethod{sip.MESSAGE, sip.REGISTER, sip.OPTIONS} {
		t.Run(string(m), func(t *testing.T) {
			h := startHarness(t, harnessOptions{Preemptive: proxy.PreemptiveAll})
			if got := sendNew(t, h, m); len(got) != 2 {
				t.Fatalf("first %s: pbx-a got %d requests, want 2 (challenge, answer)", m, len(got))
			}
			for i, wantNC := range []string{"00000002", "00000003"} {
				got := sendNew(t, h, m)
				if len(got) != 1 {
					t.Fatalf("%s #%d: pbx-a got %d requests, want 1 (preemptive)", m, i+2, len(got))
				}
				if !got[0].Authenticated {
					t.Fatalf("%s #%d: not authenticated", m, i+2)
				}
				if nc := ncOf(got[0]); nc != wantNC {
					t.Errorf("%s #%d: nc=%s, want %s", m, i+2, nc, wantNC)
				}
			}
			if got, want := h.A.Challenges(), 1; got != want {
				t.Errorf("challenges = %d, want %d", got, want)
			}
		})
	}
}

// TestPreemptiveModes: off keeps the challenge round trip for every
// request; registrations saves it for REGISTER only.
func TestPreemptiveModes(t *testing.T) {
	for _, tc := range []struct {
		mode   proxy.Preemptive
		method sip.RequestMethod
		want   int // requests pbx-a sees for the second one
	}{
		{proxy.PreemptiveOff, sip.MESSAGE, 2},
		{proxy.PreemptiveOff, sip.REGISTER, 2},
		{proxy.PreemptiveRegistrations, sip.MESSAGE, 2},
		{proxy.PreemptiveRegistrations, sip.REGISTER, 1},
	} {
		t.Run(fmt.Sprintf("%s/%s", tc.mode, tc.method), func(t *testing.T) {
			h := startHarness(t, harnessOptions{Preemptive: tc.mode})
			sendNew(t, h, tc.method)
			if got := sendNew(t, h, tc.method); len(got) != tc.want {
				t.Fatalf("second %s: pbx-a got %d requests, want %d", tc.method, len(got), tc.want)
			}
		})
	}
}

// TestPreemptiveFallback: when the upstream challenges a preemptive answer
// anyway (stale nonce, or a nonce it no longer knows), the normal exchange
// follows with no failure, and is not taken for rejected credentials; the
// new nonce is used from then on.
func TestPreemptiveFallback(t *testing.T) {
	for _, tc := range []struct {
		name   string
		expire func(*fakepbx.Server)
	}{
		{"stale", (*fakepbx.Server).ExpireNonces},
		{"unknown-nonce", (*fakepbx.Server).ForgetNonces},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, harnessOptions{Preemptive: proxy.PreemptiveAll})
			sendNew(t, h, sip.MESSAGE)
			tc.expire(h.A)
			got := sendNew(t, h, sip.MESSAGE)
			if len(got) != 2 {
				t.Fatalf("after expiry: pbx-a got %d requests, want 2 (preemptive refused, answer)", len(got))
			}
			if got[0].Authenticated || !got[1].Authenticated {
				t.Fatalf("authenticated = %v, %v; want false, true", got[0].Authenticated, got[1].Authenticated)
			}
			if nc := ncOf(got[1]); nc != "00000001" {
				t.Errorf("answer to the new challenge: nc=%s, want 00000001", nc)
			}
			got = sendNew(t, h, sip.MESSAGE)
			if len(got) != 1 || !got[0].Authenticated {
				t.Fatalf("after fallback: pbx-a got %d requests, want 1 authenticated", len(got))
			}
			if nc := ncOf(got[0]); nc != "00000002" {
				t.Errorf("preemptive with the new nonce: nc=%s, want 00000002", nc)
			}
		})
	}
}

// TestPreemptiveConcurrent sends from many goroutines at once: every
// request succeeds, and the fake (which refuses a repeated or lower nc for
// a nonce) saw some of them authenticated on the first try.
func TestPreemptiveConcurrent(t *testing.T) {
	h := startHarness(t, harnessOptions{Preemptive: proxy.PreemptiveAll})
	sendNew(t, h, sip.MESSAGE)
	const workers, each = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for range workers {
		wg.Go(func() {
			for range each {
				req := clientRequest{Method: sip.MESSAGE, RequestURI: "sip:alice@pbx-a.example.com", FromUser: "alice", Body: []byte("hi"), ContentType: "text/plain"}.build(t)
				rs := h.do(t, "udp", req)
				if c := rs[len(rs)-1].StatusCode; c != sip.StatusOK {
					errs <- fmt.Errorf("status %d", c)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]bool{}
	for _, r := range h.A.Requests() {
		for _, a := range r.Authorization {
			if seen[a] {
				t.Errorf("credentials sent twice: %s", a)
			}
			seen[a] = true
		}
	}
	// Reordering on loopback may make the fake refuse some counts; those
	// fall back to a challenge. Some must have gone through first time.
	if c := h.A.Challenges(); c >= workers*each {
		t.Errorf("%d challenges for %d requests: no preemptive answer accepted", c, workers*each)
	}
}
