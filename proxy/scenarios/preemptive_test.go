package scenarios

import (
	"fmt"
	"regexp"
	"sync"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
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
	res := h.final(t, "udp", siptest.Request{Method: method, RequestURI: ruriFor(method, "pbx-a.example.com", "alice"), FromUser: "alice", Body: []byte("hi"), ContentType: "text/plain"})
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

// TestPreemptiveConcurrent sends from many goroutines at once, after one
// challenge was answered and accepted. Every request succeeds and no
// credentials are ever sent twice. Against an upstream that accepts counts
// in any order (Asterisk keeps none), that first challenge is the only
// one: each request reaches it once, with a preemptive answer, and the
// counts are exactly the next ones of the nonce. Against one that wants
// them increasing (Kamailio), requests overtaking each other may be
// refused; each such request is challenged once, answered, and accepted.
func TestPreemptiveConcurrent(t *testing.T) {
	for _, anyOrder := range []bool{true, false} {
		t.Run(fmt.Sprintf("counts_in_any_order=%v", anyOrder), func(t *testing.T) {
			testPreemptiveConcurrent(t, anyOrder)
		})
	}
}

func testPreemptiveConcurrent(t *testing.T, anyOrder bool) {
	h := startHarness(t, harnessOptions{Preemptive: proxy.PreemptiveAll, A: fakepbx.Config{Clock: frozenClock(), NCAnyOrder: anyOrder}})
	sendNew(t, h, sip.MESSAGE)
	const workers, each = 16, 8
	reqs := make([][]*sip.Request, workers)
	callIDs := map[string]bool{}
	for w := range workers {
		for range each {
			req := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:alice@pbx-a.example.com", FromUser: "alice", Body: []byte("hi"), ContentType: "text/plain"}.Build(t)
			reqs[w] = append(reqs[w], req)
			callIDs[req.CallID().Value()] = true
		}
	}
	before, challenges := len(h.A.Requests()), h.A.Challenges()
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for _, req := range reqs[w] {
				res, err := siptest.Send(h.client, h.Addr["udp"], "udp", req)
				if err == nil && res.StatusCode != sip.StatusOK {
					err = fmt.Errorf("%s: status %d", req.CallID().Value(), res.StatusCode)
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	got := h.A.Requests()[before:]
	seen := map[string]bool{}
	perCall := map[string][]fakepbx.Request{}
	for _, r := range got {
		if !callIDs[r.CallID] {
			t.Fatalf("a request of another Call-ID reached pbx-a: %v", summarize([]fakepbx.Request{r}))
		}
		perCall[r.CallID] = append(perCall[r.CallID], r)
		for _, a := range r.Authorization {
			if seen[a] {
				t.Errorf("credentials sent twice: %s", a)
			}
			seen[a] = true
		}
	}
	challenged := h.A.Challenges() - challenges
	if anyOrder {
		// The exact bound: no challenge, one request each, counts 2 to
		// workers*each+1 of the first nonce, each once.
		if challenged != 0 || len(got) != workers*each {
			t.Fatalf("%d challenges and %d requests upstream for %d client requests, want 0 and %d", challenged, len(got), workers*each, workers*each)
		}
		ncs := map[string]bool{}
		for _, r := range got {
			if !r.Authenticated {
				t.Fatalf("not accepted: %v", summarize([]fakepbx.Request{r}))
			}
			ncs[ncOf(r)] = true
		}
		for nc := 2; nc <= workers*each+1; nc++ {
			if !ncs[fmt.Sprintf("%08x", nc)] {
				t.Errorf("nc %08x never sent; sent %d distinct counts", nc, len(ncs))
			}
		}
		return
	}
	// Each request: accepted at once, or refused (its count overtaken by a
	// higher one) and challenged once, then accepted.
	resent := 0
	for id, rs := range perCall {
		switch {
		case len(rs) == 1 && rs[0].Authenticated:
		case len(rs) == 2 && !rs[0].Authenticated && rs[1].Authenticated && rs[1].CSeq == rs[0].CSeq+1:
			resent++
		default:
			t.Errorf("Call-ID %s at pbx-a: %v, want accepted at once, or challenged once and then accepted", id, summarize(rs))
		}
	}
	if len(perCall) != workers*each || challenged != resent {
		t.Errorf("%d Call-IDs upstream, %d challenges for %d re-sent requests; want %d and one challenge each", len(perCall), challenged, resent, workers*each)
	}
	t.Logf("%d of %d requests were challenged (counts overtaken on the way)", resent, workers*each)
}

// TestPreemptiveAnswerForTheRequestLineSent: a preemptive answer's digest
// uri is the Request-URI the upstream receives, byte for byte, also on the
// fast lane (which sends the client's own request line) when the client
// writes it in a form the parser renders differently (scheme in capitals,
// a port with a leading zero): a strict upstream compares the two.
func TestPreemptiveAnswerForTheRequestLineSent(t *testing.T) {
	for _, ruri := range []string{"SIP:1002@pbx-a.example.com", "sip:1002@pbx-a.example.com:05060"} {
		t.Run(ruri, func(t *testing.T) {
			h := startHarness(t, harnessOptions{Preemptive: productDefaultPreemptive(t), A: fakepbx.Config{Clock: frozenClock()}})
			rc := newRawClient(t, "127.0.0.1", h.Addr["udp"])
			for i := range 3 {
				before := len(h.A.Requests())
				callID := uuid.NewString()
				rc.sendRaw(fmt.Sprintf("MESSAGE %s SIP/2.0\r\n"+
					"Via: SIP/2.0/UDP %%[1]s;branch=z9hG4bK-%s;rport\r\n"+
					"Max-Forwards: 70\r\n"+
					"From: <sip:1001@pbx-a.example.com>;tag=a%d\r\n"+
					"To: <sip:1002@pbx-a.example.com>\r\n"+
					"Call-ID: %s\r\n"+
					"CSeq: 1 MESSAGE\r\n"+
					"Content-Length: 0\r\n\r\n", ruri, callID, i, callID))
				if res, _ := rc.readUntilFinal(callID); res.StatusCode != 200 {
					t.Fatalf("request %d: %d, want 200; upstream saw %v", i+1, res.StatusCode, summarize(h.A.Requests()[before:]))
				}
				got := h.A.Requests()[before:]
				if i > 0 && (len(got) != 1 || !got[0].Authenticated) {
					t.Fatalf("request %d: upstream saw %v, want one accepted with a preemptive answer", i+1, summarize(got))
				}
			}
		})
	}
}

// TestPreemptiveNeverWithoutQOP: a challenge without qop is never reused
// (without nc and cnonce a second answer to its nonce is a replay): every
// request to such an upstream is challenged and answered afresh, under
// preemptive = "all".
func TestPreemptiveNeverWithoutQOP(t *testing.T) {
	h := startHarness(t, harnessOptions{Preemptive: proxy.PreemptiveAll, Profile: lenientProfile, A: fakepbx.Config{QOP: "none"}})
	for i := range 3 {
		got := sendNew(t, h, sip.MESSAGE)
		if len(got) != 2 || len(got[0].Authorization) != 0 {
			t.Fatalf("MESSAGE #%d: pbx-a got %s, want a request without credentials, then the answer", i+1, summarize(got))
		}
	}
	if got := h.A.Challenges(); got != 3 {
		t.Errorf("pbx-a challenged %d times, want 3", got)
	}
}
