package scenarios

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
)

// callTarget is one of the two fake PBXs as the callee of a call.
type callTarget struct {
	name, ruri string
	pbx        func(h *harness) *fakepbx.Server
}

var callTargets = []callTarget{
	{"pbx-a", "sip:1002@pbx-a.example.com", func(h *harness) *fakepbx.Server { return h.A }},
	{"pbx-b", "sip:2002@pbx-b.example.com", func(h *harness) *fakepbx.Server { return h.B }},
}

// waitCallState waits until the fake has a call with this Call-ID in state.
func waitCallState(t *testing.T, pbx *fakepbx.Server, callID, state string) fakepbx.Call {
	t.Helper()
	var found fakepbx.Call
	pbx.WaitCall(t, 5*time.Second, func(cs []fakepbx.Call) bool {
		for _, c := range cs {
			if c.CallID == callID && c.State == state {
				found = c
				return true
			}
		}
		return false
	})
	return found
}

func assertNoCallErrors(t *testing.T, pbx *fakepbx.Server) {
	t.Helper()
	for _, c := range pbx.Calls() {
		if len(c.Errors) > 0 {
			t.Errorf("call %s: upstream saw protocol errors: %q", c.CallID, c.Errors)
		}
	}
	if s := pbx.Strays(); len(s) > 0 {
		t.Errorf("upstream got requests for unknown dialogs: %v", summarize(s))
	}
}

// waitDialogs waits until the proxy tracks n dialogs.
func waitDialogs(t *testing.T, h *harness, n int) {
	t.Helper()
	testutil.Eventually(t, fmt.Sprintf("%d dialogs at the proxy", n), func() bool { return h.Proxy.DialogCount() == n })
}

// TestCall: challenged calls to each upstream, over every combination of
// client and upstream transport, against Asterisk-like (401) and
// Kamailio-like (407) strict upstreams that also challenge the caller's
// BYE, under the default configuration (preemptive answers) and with
// preemptive off; the caller hangs up. The upstream must see the ACK with
// the INVITE's CSeq and credentials, no CSeq going backwards, and the ACK
// and BYE sent to its Contact through the route set. Two calls go to each
// upstream: under the default the second call's INVITE and BYE carry
// answers before any challenge (and are accepted without one), its ACK the
// INVITE's credentials; with preemptive off both calls are challenged.
func TestCall(t *testing.T) {
	for _, pm := range preemptiveModes(t) {
		for _, profile := range strictProfiles {
			for _, upTCP := range []bool{false, true} {
				for _, clientTP := range []string{"udp", "tcp"} {
					t.Run(fmt.Sprintf("%s/%s/client=%s/upstream_tcp=%v", pm.name, profile, clientTP, upTCP), func(t *testing.T) {
						testCall(t, pm, profile, clientTP, upTCP)
					})
				}
			}
		}
	}
}

// testCall is one case of TestCall.
func testCall(t *testing.T, pm preemptiveMode, profile pbxProfile, clientTP string, upTCP bool) {
	callee := fakepbx.Config{Clock: frozenClock(), Call: fakepbx.CallConfig{Ring: 50 * time.Millisecond, ChallengeInDialog: true}}
	h := startHarness(t, harnessOptions{UpstreamTCP: upTCP, Profile: profile, Preemptive: pm.mode, A: callee, B: callee})
	for _, tg := range callTargets {
		t.Run(tg.name, func(t *testing.T) {
			ph := siptest.StartPhone(t, "1001", clientTP, h.Addr[clientTP])
			for n := range 2 {
				// The second call's INVITE and BYE go with answers from the
				// first call's challenges, under the default.
				preemptive := pm.on() && n == 1
				c := ph.Dial(tg.ruri, siptest.SDP)
				res := c.WaitFinal(10 * time.Second)
				if res.StatusCode != 200 {
					t.Fatalf("call %d INVITE: %d %s", n+1, res.StatusCode, res.Reason)
				}
				var ringing bool
				for _, r := range c.Responses {
					if r.StatusCode == 401 || r.StatusCode == 407 {
						t.Fatalf("client saw the challenge %d", r.StatusCode)
					}
					if r.StatusCode == 180 {
						ringing = true
					}
					if r.CSeq().SeqNo != 1 {
						t.Fatalf("%d relayed with CSeq %d, client sent 1", r.StatusCode, r.CSeq().SeqNo)
					}
				}
				if !ringing {
					t.Fatal("180 Ringing not relayed")
				}
				if len(c.Routes) == 0 {
					t.Fatal("2xx carries no Record-Route: in-dialog requests would bypass authproxy")
				}
				c.Ack()
				waitCallState(t, tg.pbx(h), c.CallID, "confirmed")
				fc := waitAck(t, tg.pbx(h), c.CallID)
				if !fc.AckCSeqOK || !fc.AckAuthOK {
					t.Fatalf("ACK at upstream: CSeq ok %v, credentials ok %v", fc.AckCSeqOK, fc.AckAuthOK)
				}
				if acks := callRequests(fc, "ACK"); len(acks[0].Authorization) == 0 {
					t.Fatal("the ACK for the 2xx carries no credentials: the INVITE's must go with it (RFC 3261 §22.1)")
				}
				if len(fc.RouteSet) == 0 {
					// With it the strict upstream also checks that the
					// caller's requests come from that hop.
					t.Fatal("the INVITE reached the upstream without Record-Route: its BYE would bypass authproxy")
				}
				assertChallengedOnce(t, "INVITE", invitesOf(tg.pbx(h), c.CallID), preemptive)
				if bye := c.Request(sip.BYE, nil); bye.StatusCode != 200 {
					t.Fatalf("BYE: %d", bye.StatusCode)
				}
				fc = waitCallState(t, tg.pbx(h), c.CallID, "terminated")
				assertChallengedOnce(t, "BYE", callRequests(fc, "BYE"), preemptive)
			}
			assertNoCallErrors(t, tg.pbx(h))
		})
	}
	assertOnlyUsernames(t, "pbx-a", h.A, "alice")
	assertOnlyUsernames(t, "pbx-b", h.B, "bob")
	waitDialogs(t, h, 0)
}

// assertChallengedOnce checks the copies of one request the upstream got:
// with preemptive, one, carrying an answer and accepted at once; without,
// one without credentials (challenged) and then one accepted.
func assertChallengedOnce(t *testing.T, what string, got []fakepbx.Request, preemptive bool) {
	t.Helper()
	if preemptive {
		if len(got) != 1 || !got[0].Authenticated || len(got[0].Authorization) == 0 {
			t.Fatalf("%s at upstream: %v, want one, accepted with a preemptive answer", what, summarize(got))
		}
		return
	}
	if len(got) != 2 || got[0].Authenticated || len(got[0].Authorization) != 0 || !got[1].Authenticated {
		t.Fatalf("%s at upstream: %v, want one challenged, then one accepted", what, summarize(got))
	}
}

// invitesOf returns the INVITEs the fake received for a Call-ID.
func invitesOf(pbx *fakepbx.Server, callID string) []fakepbx.Request {
	var out []fakepbx.Request
	for _, r := range pbx.Requests() {
		if r.Method == "INVITE" && r.CallID == callID {
			out = append(out, r)
		}
	}
	return out
}

// callRequests returns the requests of one method the fake received in a
// dialog.
func callRequests(fc fakepbx.Call, method string) []fakepbx.Request {
	var out []fakepbx.Request
	for _, r := range fc.Requests {
		if r.Method == method {
			out = append(out, r)
		}
	}
	return out
}

// waitAck waits until the fake has seen the ACK of the call.
func waitAck(t *testing.T, pbx *fakepbx.Server, callID string) fakepbx.Call {
	t.Helper()
	var found fakepbx.Call
	pbx.WaitCall(t, 5*time.Second, func(cs []fakepbx.Call) bool {
		for _, c := range cs {
			if c.CallID != callID {
				continue
			}
			for _, r := range c.Requests {
				if r.Method == "ACK" {
					found = c
					return true
				}
			}
		}
		return false
	})
	return found
}

// waitAcks waits until the fake has seen n ACKs in the call.
func waitAcks(t *testing.T, pbx *fakepbx.Server, callID string, n int) {
	t.Helper()
	pbx.WaitCall(t, 5*time.Second, func(cs []fakepbx.Call) bool {
		for _, c := range cs {
			if c.CallID != callID {
				continue
			}
			acks := 0
			for _, r := range c.Requests {
				if r.Method == "ACK" {
					acks++
				}
			}
			if acks >= n {
				return true
			}
		}
		return false
	})
}

// TestCalleeHangsUp: the BYE the upstream sends reaches the client through
// authproxy, with the upstream's own CSeq.
func TestCalleeHangsUp(t *testing.T) {
	for _, tc := range []struct {
		profile  pbxProfile
		clientTP string
	}{{asteriskProfile, "udp"}, {asteriskProfile, "tcp"}, {kamailioProfile, "udp"}, {kamailioProfile, "tcp"}} {
		clientTP := tc.clientTP
		t.Run(tc.profile.String()+"/"+clientTP, func(t *testing.T) {
			h := startHarness(t, harnessOptions{Profile: tc.profile})
			c := answeredCall(t, h, clientTP)
			waitAck(t, h.A, c.CallID)
			if code := h.A.HangUp(t, c.CallID); code != 200 {
				t.Fatalf("callee BYE: %d", code)
			}
			bye := c.Phone.WaitReceived(sip.BYE, 5*time.Second)
			if bye.CallID().Value() != c.CallID {
				t.Fatalf("BYE for call %s", bye.CallID().Value())
			}
			waitDialogs(t, h, 0)
			assertNoCallErrors(t, h.A)
		})
	}
}

// answeredCall dials 1002 at pbx-a through authproxy from a phone (1001)
// over transport, expects the 200 and ACKs it.
func answeredCall(t *testing.T, h *harness, transport string) *siptest.Call {
	t.Helper()
	ph := siptest.StartPhone(t, "1001", transport, h.Addr[transport])
	c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("INVITE: %d", res.StatusCode)
	}
	c.Ack()
	return c
}

// TestReInviteHoldAndBack: two re-INVITEs in the dialog, each answered and
// ACKed; the upstream's strict CSeq check passes only if every request of
// the dialog is shifted by the challenge's offset.
func TestReInviteHoldAndBack(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	c := answeredCall(t, h, "udp")
	waitAcks(t, h.A, c.CallID, 1)
	hold := []byte(strings.Replace(string(siptest.SDP), "a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/8000\r\na=sendonly", 1))
	for i, body := range [][]byte{hold, siptest.SDP} {
		if res := c.Request(sip.INVITE, body); res.StatusCode != 200 {
			t.Fatalf("re-INVITE: %d", res.StatusCode)
		}
		// The fake judges an ACK against the latest INVITE; let this one's
		// ACK arrive before the next INVITE (sipgo may reorder them).
		waitAcks(t, h.A, c.CallID, i+2)
	}
	if res := c.Request(sip.INFO, nil); res.StatusCode != 200 {
		t.Fatalf("INFO: %d", res.StatusCode)
	}
	if res := c.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE: %d", res.StatusCode)
	}
	waitCallState(t, h.A, c.CallID, "terminated")
	assertNoCallErrors(t, h.A)
	// The callee's own re-INVITE reaches the client too.
	c2 := c.Phone.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
	if res := c2.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("INVITE: %d", res.StatusCode)
	}
	c2.Ack()
	waitAck(t, h.A, c2.CallID)
	if code := h.A.ReInvite(t, c2.CallID); code != 200 {
		t.Fatalf("callee re-INVITE: %d", code)
	}
	c.Phone.WaitReceived(sip.INVITE, 5*time.Second)
	if res := c2.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE after callee re-INVITE: %d", res.StatusCode)
	}
	assertNoCallErrors(t, h.A)
}

// TestInDialogChallenges: the upstream challenges every in-dialog request
// too; authproxy answers, the offset grows, the client never notices.
func TestInDialogChallenges(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{ChallengeInDialog: true}}})
	c := answeredCall(t, h, "tcp")
	waitAcks(t, h.A, c.CallID, 1)
	if res := c.Request(sip.INVITE, siptest.SDP); res.StatusCode != 200 {
		t.Fatalf("challenged re-INVITE: %d", res.StatusCode)
	}
	waitAcks(t, h.A, c.CallID, 2)
	if res := c.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("challenged BYE: %d", res.StatusCode)
	}
	waitCallState(t, h.A, c.CallID, "terminated")
	assertNoCallErrors(t, h.A)
}

// TestCancelBeforeAnswer: the client's CANCEL cancels the authenticated
// INVITE authproxy has outstanding (its branch and CSeq), and the client
// gets 487.
func TestCancelBeforeAnswer(t *testing.T) {
	for _, clientTP := range []string{"udp", "tcp"} {
		t.Run(clientTP, func(t *testing.T) {
			h := startHarness(t, harnessOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{NoAnswer: true}}})
			ph := siptest.StartPhone(t, "1001", clientTP, h.Addr[clientTP])
			c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
			c.WaitProvisional(5 * time.Second)
			if res := c.Cancel(); res.StatusCode != 200 {
				t.Fatalf("CANCEL: %d", res.StatusCode)
			}
			if res := c.WaitFinal(5 * time.Second); res.StatusCode != 487 {
				t.Fatalf("INVITE final %d, want 487", res.StatusCode)
			}
			rs := h.A.WaitFor(t, 5*time.Second, func(rs []fakepbx.Request) bool {
				for _, r := range rs {
					if r.Method == "CANCEL" {
						return true
					}
				}
				return false
			})
			var invite, cancel *fakepbx.Request
			for i := range rs {
				r := &rs[i]
				switch {
				case r.Method == "INVITE" && r.Authenticated:
					invite = r
				case r.Method == "CANCEL":
					cancel = r
				}
			}
			if invite == nil {
				t.Fatal("no authenticated INVITE upstream")
			}
			if cancel.CSeq != invite.CSeq || cancel.Branch != invite.Branch || cancel.RequestURI != invite.RequestURI {
				t.Fatalf("CANCEL cseq %d branch %s to %s, outstanding INVITE cseq %d branch %s to %s",
					cancel.CSeq, cancel.Branch, cancel.RequestURI, invite.CSeq, invite.Branch, invite.RequestURI)
			}
			waitDialogs(t, h, 0)
			assertNoCallErrors(t, h.A)
		})
	}
}

// TestCancelRacingChallenge: a CANCEL sent at each step of the challenge
// exchange: at once (it may even reach authproxy before its handler has
// run), while the 407 is on its way, and while the authenticated INVITE
// rings (its 2xx comes 300 ms later, so the CANCEL may also cross the 2xx).
// Whatever the interleaving, the client gets 487 and no call is left up at
// the upstream.
func TestCancelRacingChallenge(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{Ring: 300 * time.Millisecond}}})
	sentInvite := func(authenticated bool) func(c *siptest.Call, rs []fakepbx.Request) bool {
		return func(c *siptest.Call, rs []fakepbx.Request) bool {
			for _, r := range rs {
				if r.CallID == c.CallID && r.Method == "INVITE" && r.Authenticated == authenticated {
					return true
				}
			}
			return false
		}
	}
	for _, step := range []struct {
		name    string
		reached func(c *siptest.Call, rs []fakepbx.Request) bool // nil: cancel at once
	}{
		{"at-once", nil},
		{"challenged", sentInvite(false)},
		{"ringing", sentInvite(true)},
	} {
		for i := range 3 {
			t.Run(fmt.Sprintf("%s/%d", step.name, i), func(t *testing.T) {
				ph := siptest.StartPhone(t, "1001", "udp", h.Addr["udp"])
				c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
				if step.reached != nil {
					h.A.WaitFor(t, testutil.EventuallyLimit, func(rs []fakepbx.Request) bool { return step.reached(c, rs) })
				}
				cancelUntilMatched(t, c)
				switch res := c.WaitFinal(testutil.EventuallyLimit); res.StatusCode {
				case sip.StatusRequestTerminated:
				case sip.StatusOK:
					// The 2xx was relayed before the CANCEL arrived, which
					// then has no effect (RFC 3261 §9.1): the caller has
					// the call and hangs up itself.
					c.Ack()
					if bye := c.Request(sip.BYE, nil); bye.StatusCode != sip.StatusOK {
						t.Fatalf("BYE after the 2xx won: %d", bye.StatusCode)
					}
				default:
					t.Fatalf("INVITE final %d, want 487 (or 200 when the 2xx came first)", res.StatusCode)
				}
				// Once authproxy is done with the INVITE, it sends nothing
				// more for it but the BYE that ends a call whose 2xx crossed
				// the CANCEL: every call the upstream has must end.
				waitRequestDone(t, h, "INVITE", c.CallID)
				h.A.WaitCall(t, testutil.EventuallyLimit, func(cs []fakepbx.Call) bool {
					for _, fc := range cs {
						if fc.CallID == c.CallID && fc.State != fakepbx.StateCancelled && fc.State != fakepbx.StateTerminated {
							return false
						}
					}
					return true
				})
				assertNoCallErrors(t, h.A)
			})
		}
	}
}

// cancelUntilMatched sends the CANCEL for c's INVITE until authproxy has
// the INVITE's transaction to match it to. A CANCEL sent right after its
// INVITE can overtake it (sipgo handles each datagram on a goroutine of
// its own) and get a 481 (RFC 3261 §9.2); the client then sends it again,
// a bounded number of times.
func cancelUntilMatched(t *testing.T, c *siptest.Call) {
	t.Helper()
	for try := 0; c.Cancel().StatusCode == sip.StatusCallTransactionDoesNotExists; try++ {
		if try == 100 {
			t.Fatalf("CANCEL answered 481 for 100 tries")
		}
	}
}

// waitRequestDone waits until authproxy has logged the end of its
// handling of the request (the "request" line, written when the handler
// returns).
func waitRequestDone(t *testing.T, h *harness, method, callID string) {
	t.Helper()
	want := []string{`"msg":"request"`, `"method":"` + method + `"`, `"call_id":"` + callID + `"`}
	testutil.Eventually(t, "authproxy to finish the "+method+" of call "+callID, func() bool {
		for line := range strings.SplitSeq(h.Logs.String(), "\n") {
			if containsAll(line, want) {
				return true
			}
		}
		return false
	})
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// Test2xxRacingCancel: the upstream answers 200 just as the CANCEL
// arrives. The client already has its 487, so authproxy ACKs and BYEs the
// call upstream itself.
func Test2xxRacingCancel(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{NoAnswer: true, AnswerOnCancel: true}}})
	ph := siptest.StartPhone(t, "1001", "udp", h.Addr["udp"])
	c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
	c.WaitProvisional(5 * time.Second)
	c.Cancel()
	if res := c.WaitFinal(5 * time.Second); res.StatusCode != 487 {
		t.Fatalf("INVITE final %d, want 487", res.StatusCode)
	}
	waitCallState(t, h.A, c.CallID, "terminated")
	// ACK and BYE leave back to back; the fake handles each on its own
	// goroutine, so the BYE may be seen first.
	fc := waitAck(t, h.A, c.CallID)
	if !fc.AckCSeqOK || !fc.AckAuthOK {
		t.Fatalf("authproxy's ACK: CSeq ok %v, credentials ok %v; call %+v", fc.AckCSeqOK, fc.AckAuthOK, summarize(fc.Requests))
	}
	assertNoCallErrors(t, h.A)
}

// TestInviteRetransmittedAfterItsTransaction: a client that saw neither
// the 100 nor the 2xx retransmits its INVITE after authproxy's server
// transaction ended (Timer L, 5 s after the 2xx). authproxy absorbs it; the
// upstream sees no second INVITE for the call (it would be a merged
// request there, RFC 3261 §8.2.2.2).
func TestInviteRetransmittedAfterItsTransaction(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	c := answeredCall(t, h, "udp")
	waitAck(t, h.A, c.CallID)
	invites := func() int {
		n := 0
		for _, r := range h.A.Requests() {
			if r.Method == "INVITE" && r.CallID == c.CallID {
				n++
			}
		}
		return n
	}
	before := invites()
	conn, err := net.Dial("udp", h.Addr["udp"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The client retransmits its INVITE (RFC 3261 §17.1.1.2): sipgo's
	// server transaction absorbs the copies until Timer L ends it, then
	// authproxy absorbs them itself, logging each as handled.
	absorbed := []string{`"msg":"request"`, `"outcome":"retransmission-absorbed"`, `"call_id":"` + c.CallID + `"`}
	testutil.Eventually(t, "a retransmission absorbed after the server transaction ended", func() bool {
		if _, err := conn.Write([]byte(c.Invite.String())); err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(h.Logs.String(), "\n") {
			if containsAll(line, absorbed) {
				return true
			}
		}
		return false
	})
	if after := invites(); after != before {
		t.Fatalf("the upstream got %d INVITEs for the call after the late retransmission, want %d", after, before)
	}
	if res := c.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE: %d", res.StatusCode)
	}
	assertNoCallErrors(t, h.A)
}

// TestPRACK: a reliable 183 is PRACKed through authproxy; the RAck names
// the INVITE in the upstream's numbering.
func TestPRACK(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{Reliable: true}}})
	ph := siptest.StartPhone(t, "1001", "udp", h.Addr["udp"])
	c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP, sip.NewHeader("Supported", "100rel"))
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("INVITE: %d", res.StatusCode)
	}
	c.Ack()
	fc := waitAck(t, h.A, c.CallID)
	if !fc.PRACKOK {
		t.Fatal("PRACK's RAck did not name the INVITE as the upstream numbered it")
	}
	if res := c.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE: %d", res.StatusCode)
	}
	assertNoCallErrors(t, h.A)
}

// TestCallRejected: busy and unavailable finals reach the client (a 503
// as 500: RFC 3261 §16.7 step 6); the hop-by-hop ACK is never forwarded,
// and no dialog is left behind.
func TestCallRejected(t *testing.T) {
	for _, tc := range []struct{ code, relayed int }{{486, 486}, {503, 500}} {
		code := tc.code
		for _, clientTP := range []string{"udp", "tcp"} {
			t.Run(fmt.Sprintf("%d/%s", code, clientTP), func(t *testing.T) {
				h := startHarness(t, harnessOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{FinalCode: code}}})
				ph := siptest.StartPhone(t, "1001", clientTP, h.Addr[clientTP])
				c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
				if res := c.WaitFinal(10 * time.Second); res.StatusCode != tc.relayed {
					t.Fatalf("INVITE final %d, want %d", res.StatusCode, tc.relayed)
				}
				// The phone sent its ACK before it passed the final up; a
				// request it sends now is read by authproxy after it, and
				// reaches the upstream only after a challenge round trip,
				// later than a wrongly forwarded ACK would.
				ph.Barrier(c.RURI)
				acks := 0
				for _, r := range h.A.Requests() {
					if r.Method == "ACK" && r.CallID == c.CallID {
						acks++
					}
				}
				// One ACK for the 407 and one for the final, both from
				// authproxy's client transactions; none forwarded.
				if acks > 2 {
					t.Fatalf("upstream saw %d ACKs, want at most 2", acks)
				}
				waitDialogs(t, h, 0)
			})
		}
	}
}

// TestCallAuthInt: an INVITE with SDP answered with qop=auth-int.
func TestCallAuthInt(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{QOP: "auth-int", Algorithms: []string{"SHA-256"}}})
	c := answeredCall(t, h, "udp")
	if res := c.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE: %d", res.StatusCode)
	}
}

// TestForking: two 2xx with different To tags both reach the client, and
// its ACK and BYE reach the right dialog.
func TestForking(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{Forks: 2}}})
	c := answeredCall(t, h, "udp")
	var other *sip.Response
	testutil.Eventually(t, "the second fork's 2xx relayed", func() bool {
		for _, r := range c.Extra2xx() {
			if tag, _ := r.To().Params.Get("tag"); tag != c.ToTag {
				other = r
			}
		}
		return other != nil
	})
	c.AckFork(other)
	// Both ACKs must be in before the BYEs (sipgo may reorder them).
	h.A.WaitCall(t, 5*time.Second, func(cs []fakepbx.Call) bool {
		acked := 0
		for _, fc := range cs {
			if fc.CallID == c.CallID && fc.Acked {
				acked++
			}
		}
		return acked >= 2
	})
	second := c.Fork(other)
	// CSeq is per dialog, but the fake PBX checks it per Call-ID: keep the
	// second dialog's numbers above the first's.
	second.CSeq += 10
	for _, d := range []*siptest.Call{c, second} {
		if res := d.Request(sip.BYE, nil); res.StatusCode != 200 {
			t.Fatalf("BYE to fork %s: %d", d.ToTag, res.StatusCode)
		}
	}
	waitDialogs(t, h, 0)
	assertNoCallErrors(t, h.A)
}

// TestTimerC: a callee that rings forever is CANCELled upstream and the
// client gets 408 once Timer C fires.
func TestTimerC(t *testing.T) {
	h := startHarness(t, harnessOptions{TimerC: time.Second, A: fakepbx.Config{Call: fakepbx.CallConfig{NoAnswer: true}}})
	ph := siptest.StartPhone(t, "1001", "udp", h.Addr["udp"])
	c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 408 {
		t.Fatalf("INVITE final %d, want 408", res.StatusCode)
	}
	h.A.WaitFor(t, 5*time.Second, func(rs []fakepbx.Request) bool {
		for _, r := range rs {
			if r.Method == "CANCEL" {
				return true
			}
		}
		return false
	})
	assertNoCallErrors(t, h.A)
}

// TestManyCallsLeaveNoState: the dialog table is back at zero after many
// calls.
func TestManyCallsLeaveNoState(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	ph := siptest.StartPhone(t, "1001", "udp", h.Addr["udp"])
	for i := 0; i < 30; i++ {
		c := ph.Dial(callTargets[i%2].ruri, siptest.SDP)
		if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
			t.Fatalf("call %d: %d", i, res.StatusCode)
		}
		c.Ack()
		if res := c.Request(sip.BYE, nil); res.StatusCode != 200 {
			t.Fatalf("call %d BYE: %d", i, res.StatusCode)
		}
	}
	waitDialogs(t, h, 0)
}

// Test2xxRetransmissionsRelayed: while the client's ACK is missing, the
// callee retransmits its 2xx (RFC 3261 §13.3.1.4); sipgo hands those only
// to OnRetransmission, and authproxy relays them to the client.
func Test2xxRetransmissionsRelayed(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	ph := siptest.StartPhone(t, "1001", "udp", h.Addr["udp"])
	c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("INVITE: %d", res.StatusCode)
	}
	// The fake retransmits after T1 (500ms), then 1s later.
	testutil.Eventually(t, "a 2xx retransmission at the client", func() bool { return len(c.Extra2xx()) > 0 })
	if tag, _ := c.Extra2xx()[0].To().Params.Get("tag"); tag != c.ToTag {
		t.Fatalf("retransmission for another dialog (tag %s)", tag)
	}
	if cs := c.Extra2xx()[0].CSeq().SeqNo; cs != 1 {
		t.Fatalf("retransmitted 2xx relayed with CSeq %d, client sent 1", cs)
	}
	c.Ack()
	if res := c.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE: %d", res.StatusCode)
	}
	assertNoCallErrors(t, h.A)
}
