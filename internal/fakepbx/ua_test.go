package fakepbx

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/testutil"
)

// caller is a UA on loopback that calls the fake directly (no proxy): a
// sipgo client sending from the socket a sipgo server listens on, which
// answers the callee's requests (BYE, re-INVITE, NOTIFY) with 200 and keeps
// them.
type caller struct {
	t         *testing.T
	transport string
	host      string
	port      int
	client    *sipgo.Client

	mu       sync.Mutex
	received []*sip.Request
	changed  chan struct{}
}

func startCaller(t *testing.T, transport string) *caller {
	t.Helper()
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("fakepbx-test-caller"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	c := &caller{t: t, transport: transport, host: "127.0.0.1", changed: make(chan struct{})}
	done := make(chan struct{})
	var closeListener func()
	if transport == "UDP" {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c.port = pc.LocalAddr().(*net.UDPAddr).Port
		closeListener = func() { pc.Close() }
		go func() { defer close(done); _ = srv.ServeUDP(pc) }()
	} else {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c.port = ln.Addr().(*net.TCPAddr).Port
		closeListener = func() { ln.Close() }
		go func() { defer close(done); _ = srv.ServeTCP(ln) }()
	}
	c.client, err = sipgo.NewClient(ua, sipgo.WithClientHostname(c.host), sipgo.WithClientPort(c.port))
	if err != nil {
		t.Fatal(err)
	}
	handler := func(req *sip.Request, tx sip.ServerTransaction) {
		c.mu.Lock()
		c.received = append(c.received, req)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		if req.IsAck() {
			return
		}
		res := sip.NewResponseFromRequest(req, 200, "OK", nil)
		if req.IsInvite() {
			res.AppendHeader(c.contact())
			ct := sip.ContentTypeHeader("application/sdp")
			res.AppendHeader(&ct)
			res.SetBody([]byte("v=0\r\n"))
		}
		_ = tx.Respond(res)
	}
	for _, m := range []sip.RequestMethod{sip.INVITE, sip.ACK, sip.BYE, sip.NOTIFY, sip.INFO, sip.UPDATE} {
		srv.OnRequest(m, handler)
	}
	t.Cleanup(func() {
		closeListener()
		<-done
		ua.Close()
	})
	return c
}

func (c *caller) contact() *sip.ContactHeader {
	u := sip.Uri{Scheme: "sip", User: "alice", Host: c.host, Port: c.port, UriParams: sip.NewParams()}
	u.UriParams.Add("transport", strings.ToLower(c.transport))
	return &sip.ContactHeader{Address: u}
}

// waitReceived waits until the caller has received n requests of method m
// and returns the n-th.
func (c *caller) waitReceived(m sip.RequestMethod, n int) *sip.Request {
	c.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		c.mu.Lock()
		var got []*sip.Request
		for _, r := range c.received {
			if r.Method == m {
				got = append(got, r)
			}
		}
		ch := c.changed
		c.mu.Unlock()
		if len(got) >= n {
			return got[n-1]
		}
		select {
		case <-ch:
		case <-deadline:
			c.t.Fatalf("caller: %d %s received within 5s, want %d", len(got), m, n)
		}
	}
}

// leg is one call from a caller to the fake.
type leg struct {
	c       *caller
	pbx     *Server
	callID  string
	fromTag string
	cseq    uint32 // of the last request sent
	ruri    sip.Uri
	contact *sip.ContactHeader
	extra   []sip.Header // added to the INVITE (e.g. Record-Route)
	inv     *sip.Request // the authenticated INVITE as sent
	auth    sip.Header   // its credentials
	tx      sip.ClientTransaction
	toTag   string
	target  sip.Uri // the callee's Contact
}

func (c *caller) newLeg(pbx *Server) *leg {
	l := &leg{c: c, pbx: pbx, callID: sip.GenerateTagN(16) + "@caller", fromTag: sip.GenerateTagN(8), contact: c.contact()}
	if err := sip.ParseUri("sip:100@"+pbx.Addr(), &l.ruri); err != nil {
		c.t.Fatal(err)
	}
	l.target = l.ruri
	return l
}

// request builds a request of the leg with CSeq seq; in-dialog (To tag,
// Request-URI the callee's Contact) once the To tag is known.
func (l *leg) request(m sip.RequestMethod, seq uint32) *sip.Request {
	ruri := l.ruri
	if l.toTag != "" {
		ruri = l.target
	}
	req := sip.NewRequest(m, *ruri.Clone())
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "alice", Host: "127.0.0.1"}, Params: sip.NewParams()}
	from.Params.Add("tag", l.fromTag)
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: "100", Host: l.ruri.Host, Port: l.ruri.Port}, Params: sip.NewParams()}
	if l.toTag != "" {
		to.Params.Add("tag", l.toTag)
	}
	cid := sip.CallIDHeader(l.callID)
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: m})
	req.AppendHeader(&mf)
	if m == sip.INVITE {
		req.AppendHeader(sip.HeaderClone(l.contact))
	}
	req.SetBody(nil)
	// Sent from a socket of the client's own; responses come to the Via's
	// sent-by, the listening socket, served by the same UA. (Sending from
	// the listening socket, Laddr, would race its registration by
	// ServeUDP.)
	req.SetTransport(l.c.transport)
	req.SetDestination(l.pbx.Addr())
	return req
}

func withSDP(req *sip.Request) *sip.Request {
	ct := sip.ContentTypeHeader("application/sdp")
	req.AppendHeader(&ct)
	req.SetBody([]byte("v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"))
	return req
}

// invite sends the INVITE, answers the 401 or 407 with the fake's own
// digest (the authenticated re-send has CSeq 2) and leaves the
// authenticated INVITE's transaction in l.tx.
func (l *leg) invite(extra ...sip.Header) {
	t := l.c.t
	t.Helper()
	l.cseq = 1
	first := withSDP(l.request(sip.INVITE, l.cseq))
	for _, h := range append(l.extra, extra...) {
		first.AppendHeader(sip.HeaderClone(h))
	}
	res := l.do(first)
	if res.StatusCode != 401 && res.StatusCode != 407 {
		t.Fatalf("INVITE: %d, want a challenge", res.StatusCode)
	}
	code, ch := res.StatusCode, challengesOf(t, res)[0]
	l.cseq++
	req := withSDP(l.request(sip.INVITE, l.cseq))
	for _, h := range append(l.extra, extra...) {
		req.AppendHeader(sip.HeaderClone(h))
	}
	l.auth = answer(t, code, ch, req, "alice", "pw", 1)
	req.AppendHeader(l.auth)
	l.inv = req
	l.tx = l.send(req)
	t.Cleanup(l.tx.Terminate)
}

func (l *leg) send(req *sip.Request) sip.ClientTransaction {
	l.c.t.Helper()
	tx, err := l.c.client.TransactionRequest(context.Background(), req, sipgo.ClientRequestAddVia)
	if err != nil {
		l.c.t.Fatalf("%s: %v", req.Method, err)
	}
	return tx
}

// do sends req in a transaction and returns its final response.
func (l *leg) do(req *sip.Request) *sip.Response {
	l.c.t.Helper()
	tx := l.send(req)
	defer tx.Terminate()
	return l.waitFinal(tx)
}

func (l *leg) waitFinal(tx sip.ClientTransaction) *sip.Response {
	l.c.t.Helper()
	for {
		res := l.next(tx)
		if !res.IsProvisional() {
			return res
		}
	}
}

// next returns the next response of tx.
func (l *leg) next(tx sip.ClientTransaction) *sip.Response {
	l.c.t.Helper()
	select {
	case res := <-tx.Responses():
		return res
	case <-tx.Done():
		select {
		case res := <-tx.Responses():
			return res
		default:
		}
		l.c.t.Fatalf("transaction ended: %v", tx.Err())
	case <-time.After(5 * time.Second):
		l.c.t.Fatal("no response within 5s")
	}
	return nil
}

// learn takes the dialog from a response to the INVITE.
func (l *leg) learn(res *sip.Response) {
	l.c.t.Helper()
	tag, _ := res.To().Params.Get("tag")
	if tag == "" {
		l.c.t.Fatalf("%d without To tag", res.StatusCode)
	}
	if l.toTag != "" && tag != l.toTag {
		l.c.t.Fatalf("%d To tag %q, earlier %q", res.StatusCode, tag, l.toTag)
	}
	l.toTag = tag
	if ct := res.Contact(); ct != nil {
		l.target = ct.Address
	}
}

// ack sends the ACK for the INVITE's 2xx with CSeq seq, with the INVITE's
// credentials when auth.
func (l *leg) ack(seq uint32, auth bool) {
	l.c.t.Helper()
	req := l.request(sip.ACK, seq)
	if auth {
		req.AppendHeader(sip.HeaderClone(l.auth))
	}
	if err := l.c.client.WriteRequest(req, sipgo.ClientRequestAddVia); err != nil {
		l.c.t.Fatal(err)
	}
}

// answered places an authenticated call and ACKs its 200: the common start.
func (l *leg) answered() *sip.Response {
	l.c.t.Helper()
	l.invite()
	res := l.waitFinal(l.tx)
	wantStatus(l.c.t, res, 200)
	l.learn(res)
	l.ack(l.cseq, true)
	l.pbx.WaitCall(l.c.t, 5*time.Second, func(cs []Call) bool { return len(cs) == 1 && cs[0].Acked })
	return res
}

func oneCall(t *testing.T, pbx *Server) Call {
	t.Helper()
	cs := pbx.Calls()
	if len(cs) != 1 {
		t.Fatalf("%d calls, want 1: %+v", len(cs), cs)
	}
	return cs[0]
}

func noErrors(t *testing.T, c Call) {
	t.Helper()
	if len(c.Errors) != 0 {
		t.Errorf("call errors: %q", c.Errors)
	}
}

func TestCallAnsweredAckBye(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{Ring: 150 * time.Millisecond}})
			l := startCaller(t, tp).newLeg(pbx)
			l.invite()
			ringing := l.next(l.tx)
			wantStatus(t, ringing, 180)
			rang := time.Now()
			l.learn(ringing)
			if ringing.Contact() == nil {
				t.Error("180 without Contact")
			}
			if c := oneCall(t, pbx); c.State != StateEarly || c.LocalTag != l.toTag || c.RemoteTag != l.fromTag || c.InviteCSeq != 2 || c.FinalCode != 0 {
				t.Errorf("ringing call %+v", c)
			}
			ok := l.next(l.tx)
			wantStatus(t, ok, 200)
			if d := time.Since(rang); d < 100*time.Millisecond {
				t.Errorf("answered %v after the 180, want Ring (150ms)", d)
			}
			l.learn(ok)
			if ct := ok.ContentType(); ct == nil || ct.Value() != "application/sdp" || !strings.Contains(string(ok.Body()), "m=audio ") {
				t.Errorf("200 body %q", ok.Body())
			}
			if !strings.Contains(l.target.String(), pbx.Addr()) {
				t.Errorf("Contact %s", l.target.String())
			}
			l.ack(2, true)
			c := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return cs[0].Acked })[0]
			if c.State != StateConfirmed || !c.AckCSeqOK || !c.AckAuthOK || c.FinalCode != 200 || c.InviteBranch != l.inv.Via().Params.GetOr("branch", "?") {
				t.Errorf("confirmed call %+v", c)
			}
			if !strings.HasPrefix(c.RemoteTarget, "sip:alice@127.0.0.1:") || len(c.RouteSet) != 0 {
				t.Errorf("target %q routes %q", c.RemoteTarget, c.RouteSet)
			}

			l.cseq++
			wantStatus(t, l.do(l.request(sip.BYE, l.cseq)), 200)
			c = oneCall(t, pbx)
			if c.State != StateTerminated {
				t.Errorf("state %s after BYE", c.State)
			}
			if got := methodsOf(c.Requests); !slices.Equal(got, []string{"ACK/2", "BYE/3"}) {
				t.Errorf("call requests %v", got)
			}
			if b := c.Requests[1].Branch; b == "" || b == c.InviteBranch {
				t.Errorf("BYE branch %q", b)
			}
			noErrors(t, c)
			if s := pbx.Strays(); len(s) != 0 {
				t.Errorf("strays %+v", s)
			}

			// In a terminated dialog: 481.
			l.cseq++
			wantStatus(t, l.do(l.request(sip.INFO, l.cseq)), 481)
			if c := oneCall(t, pbx); len(c.Errors) != 1 || !strings.Contains(c.Errors[0], "terminated") {
				t.Errorf("errors %q", c.Errors)
			}
		})
	}
}

// The ACK for the 2xx must repeat the INVITE's CSeq and credentials.
func TestAckChecks(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
	c := startCaller(t, "UDP")
	for _, tc := range []struct {
		name             string
		cseq             uint32
		auth             bool
		cseqOK, authOK   bool
		wantErrorContain string
	}{
		{"client's CSeq", 1, true, false, true, "ACK CSeq 1"},
		{"no credentials", 2, false, true, false, "credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := c.newLeg(pbx)
			l.invite()
			res := l.waitFinal(l.tx)
			wantStatus(t, res, 200)
			l.learn(res)
			l.ack(tc.cseq, tc.auth)
			calls := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return cs[len(cs)-1].Acked })
			call := calls[len(calls)-1]
			if call.AckCSeqOK != tc.cseqOK || call.AckAuthOK != tc.authOK {
				t.Errorf("AckCSeqOK %v AckAuthOK %v", call.AckCSeqOK, call.AckAuthOK)
			}
			if len(call.Errors) != 1 || !strings.Contains(call.Errors[0], tc.wantErrorContain) {
				t.Errorf("errors %q", call.Errors)
			}
		})
	}
}

// Over UDP an unACKed 2xx is retransmitted (T1 = 500ms, doubling) until its
// ACK arrives.
func TestUnackedOKRetransmitted(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
	l := startCaller(t, "UDP").newLeg(pbx)
	var mu sync.Mutex
	var again []*sip.Response
	l.invite()
	l.tx.OnRetransmission(func(res *sip.Response) {
		mu.Lock()
		defer mu.Unlock()
		again = append(again, res)
	})
	res := l.waitFinal(l.tx)
	wantStatus(t, res, 200)
	l.learn(res)
	pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return cs[0].Retransmissions >= 1 })
	l.ack(2, true)
	c := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return cs[0].Acked })[0]
	n := c.Retransmissions
	// The retransmissions end with the ACK: the loop says so when it
	// stops, and one retransmission at most raced the ACK.
	c = pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return cs[0].RetransmissionsAcked })[0]
	if c.Retransmissions > n+1 {
		t.Errorf("retransmissions went on after the ACK: %d -> %d", n, c.Retransmissions)
	}
	// The retransmissions the fake sent reach the caller.
	testutil.Eventually(t, "the caller seeing a retransmission", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(again) > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if again[0].StatusCode != 200 {
		t.Errorf("caller saw retransmissions %v", again)
	}
}

// The callee hangs up: BYE to the caller's Contact (no route set), or to
// the first Record-Route (lr) with the Contact as Request-URI.
func TestHangUp(t *testing.T) {
	for _, tp := range transports {
		for _, routed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/routed=%v", tp, routed), func(t *testing.T) {
				pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
				c := startCaller(t, tp)
				l := c.newLeg(pbx)
				rrA := fmt.Sprintf("<sip:127.0.0.1:%d;transport=%s;lr>", c.port, strings.ToLower(tp))
				rrB := "<sip:192.0.2.1:5070;lr>"
				if routed {
					// A Contact nothing listens on: the BYE must go to the
					// route instead, which the caller plays.
					l.contact = &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "alice", Host: "127.0.0.1", Port: 9, UriParams: sip.HeaderParams{{K: "ob", V: ""}}}}
					l.extra = []sip.Header{sip.NewHeader("Record-Route", rrA), sip.NewHeader("Record-Route", rrB)}
				}
				res := l.answered()
				if routed && len(res.GetHeaders("Record-Route")) != 2 {
					t.Errorf("200 lacks the Record-Route: %s", res.String())
				}
				call := oneCall(t, pbx)
				if routed && !slices.Equal(call.RouteSet, []string{strings.Trim(rrA, "<>"), strings.Trim(rrB, "<>")}) {
					t.Errorf("route set %q", call.RouteSet)
				}

				if got := pbx.HangUp(t, l.callID); got != 200 {
					t.Fatalf("HangUp: %d", got)
				}
				bye := c.waitReceived(sip.BYE, 1)
				if bye.Recipient.String() != call.RemoteTarget {
					t.Errorf("BYE Request-URI %s, want the Contact %s", bye.Recipient.String(), call.RemoteTarget)
				}
				var routes []string
				for _, h := range bye.GetHeaders("Route") {
					routes = append(routes, h.Value())
				}
				if want := []string(nil); !routed && !slices.Equal(routes, want) {
					t.Errorf("Route %q", routes)
				}
				if want := []string{rrA, rrB}; routed && !slices.Equal(routes, want) {
					t.Errorf("Route %q, want %q", routes, want)
				}
				from, _ := bye.From().Params.Get("tag")
				to, _ := bye.To().Params.Get("tag")
				if from != call.LocalTag || to != l.fromTag || bye.CallID().Value() != l.callID ||
					bye.CSeq().SeqNo != call.LocalCSeq+1 || bye.MaxForwards() == nil || bye.Via() == nil {
					t.Errorf("BYE\n%s", bye.String())
				}
				if tp == "UDP" && bye.Source() != pbx.Addr() {
					t.Errorf("BYE from %s, want the fake's own socket %s", bye.Source(), pbx.Addr())
				}
				after := oneCall(t, pbx)
				if after.State != StateTerminated || after.LocalCSeq != call.LocalCSeq+1 {
					t.Errorf("after HangUp %+v", after)
				}
				noErrors(t, after)
			})
		}
	}
}

func TestReInviteBothWays(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
			c := startCaller(t, tp)
			l := c.newLeg(pbx)
			l.answered()

			// The caller's re-INVITE: 200 with SDP, then its ACK.
			l.cseq++
			res := l.do(withSDP(l.request(sip.INVITE, l.cseq)))
			wantStatus(t, res, 200)
			if !strings.Contains(string(res.Body()), "o=fakepbx ") || res.Contact() == nil {
				t.Errorf("200 to re-INVITE\n%s", res.String())
			}
			ack := l.request(sip.ACK, l.cseq)
			if err := l.c.client.WriteRequest(ack, sipgo.ClientRequestAddVia); err != nil {
				t.Fatal(err)
			}
			pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool {
				return slices.Equal(methodsOf(cs[0].Requests), []string{"ACK/2", "INVITE/3", "ACK/3"})
			})

			// The callee's re-INVITE: SDP offer, ACKed after the 200.
			if got := pbx.ReInvite(t, l.callID); got != 200 {
				t.Fatalf("ReInvite: %d", got)
			}
			inv := c.waitReceived(sip.INVITE, 1)
			ack2 := c.waitReceived(sip.ACK, 1)
			if !strings.Contains(string(inv.Body()), "o=fakepbx ") || inv.Contact() == nil {
				t.Errorf("re-INVITE\n%s", inv.String())
			}
			if ack2.CSeq().SeqNo != inv.CSeq().SeqNo || ack2.Recipient.String() != inv.Recipient.String() || ack2.Via().Params.GetOr("branch", "") == inv.Via().Params.GetOr("branch", "") {
				t.Errorf("ACK\n%s\nfor\n%s", ack2.String(), inv.String())
			}
			if got := pbx.Notify(t, l.callID); got != 200 {
				t.Errorf("Notify: %d", got)
			}
			if n := c.waitReceived(sip.NOTIFY, 1); n.CSeq().SeqNo != inv.CSeq().SeqNo+1 {
				t.Errorf("NOTIFY CSeq %d after re-INVITE %d", n.CSeq().SeqNo, inv.CSeq().SeqNo)
			}
			call := oneCall(t, pbx)
			noErrors(t, call)
			if call.State != StateConfirmed {
				t.Errorf("state %s", call.State)
			}
		})
	}
}

func TestInviteBusy(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			// Ring: sipgo hands each received message to a goroutine of its
			// own, so a 180 and a final response sent back to back can reach
			// the client transaction in either order.
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{FinalCode: 486, Ring: 50 * time.Millisecond}})
			l := startCaller(t, tp).newLeg(pbx)
			l.invite()
			ringing := l.next(l.tx)
			wantStatus(t, ringing, 180)
			l.learn(ringing)
			res := l.waitFinal(l.tx)
			wantStatus(t, res, 486)
			l.learn(res) // same To tag as the 180
			// sipgo's client transaction ACKs the 486 itself.
			c := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return len(cs[0].Requests) == 1 })[0]
			if c.State != StateTerminated || c.FinalCode != 486 || c.Requests[0].Method != "ACK" || c.Requests[0].CSeq != 2 {
				t.Errorf("call %+v", c)
			}
			noErrors(t, c)
		})
	}
}

// cancel sends a CANCEL for the authenticated INVITE (its branch and CSeq)
// and returns the CANCEL's final response.
func (l *leg) cancel() *sip.Response {
	l.c.t.Helper()
	return l.cancelTo(l.inv.Recipient)
}

// cancelTo is cancel with the Request-URI ruri.
func (l *leg) cancelTo(ruri sip.Uri) *sip.Response {
	l.c.t.Helper()
	inv := l.inv
	req := sip.NewRequest(sip.CANCEL, *ruri.Clone())
	req.AppendHeader(inv.Via().Clone())
	req.AppendHeader(sip.HeaderClone(inv.From()))
	req.AppendHeader(sip.HeaderClone(inv.To()))
	req.AppendHeader(sip.HeaderClone(inv.CallID()))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.SetBody(nil)
	req.SetTransport(inv.Transport())
	req.SetDestination(inv.Destination())
	tx, err := l.c.client.TransactionRequest(context.Background(), req, func(*sipgo.Client, *sip.Request) error { return nil })
	if err != nil {
		l.c.t.Fatal(err)
	}
	defer tx.Terminate()
	return l.waitFinal(tx)
}

func TestCancelWhileRinging(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{NoAnswer: true}})
			l := startCaller(t, tp).newLeg(pbx)
			l.invite()
			l.learn(l.next(l.tx))
			cres := l.cancel()
			wantStatus(t, cres, 200)
			if tag, _ := cres.To().Params.Get("tag"); tag != l.toTag {
				t.Errorf("200 to CANCEL with To tag %q, the dialog's is %q", tag, l.toTag)
			}
			res := l.waitFinal(l.tx)
			wantStatus(t, res, 487)
			l.learn(res) // the UA's 487 carries the dialog's To tag
			c := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return len(cs[0].Requests) == 2 })[0]
			if c.State != StateCancelled || !c.Cancelled || c.FinalCode != 487 {
				t.Errorf("call %+v", c)
			}
			cancel, ack := c.Requests[0], c.Requests[1]
			if cancel.Method != "CANCEL" || cancel.CSeq != c.InviteCSeq || cancel.Branch != c.InviteBranch || ack.Method != "ACK" {
				t.Errorf("requests %+v", c.Requests)
			}
			noErrors(t, c)
			// INVITE, ACK (407), INVITE, CANCEL, ACK (487)
			reqs := pbx.WaitFor(t, 5*time.Second, func(reqs []Request) bool { return len(reqs) == 5 })
			if got := methodsOf(reqs); !slices.Equal(got, []string{"INVITE/1", "ACK/1", "INVITE/2", "CANCEL/2", "ACK/2"}) {
				t.Errorf("requests %v", got)
			}
		})
	}
}

// With AnswerOnCancel the INVITE's 200 goes out before the CANCEL is
// processed: the CANCEL gets 200 and the call is up.
func TestAnswerOnCancel(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{NoAnswer: true, AnswerOnCancel: true}})
			l := startCaller(t, tp).newLeg(pbx)
			l.invite()
			l.learn(l.next(l.tx))
			wantStatus(t, l.cancel(), 200)
			res := l.waitFinal(l.tx)
			wantStatus(t, res, 200)
			l.learn(res)
			l.ack(2, true)
			pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return cs[0].Acked })
			l.cseq++
			wantStatus(t, l.do(l.request(sip.BYE, l.cseq)), 200)
			c := oneCall(t, pbx)
			if c.State != StateTerminated || !c.Cancelled || c.FinalCode != 200 || !c.Acked || !c.AckCSeqOK || !c.AckAuthOK {
				t.Errorf("call %+v", c)
			}
			if got := methodsOf(c.Requests); !slices.Equal(got, []string{"CANCEL/2", "ACK/2", "BYE/3"}) {
				t.Errorf("requests %v", got)
			}
			noErrors(t, c)
		})
	}
}

// prack sends the PRACK for a reliable provisional with RAck rack.
func (l *leg) prack(rack string) *sip.Response {
	l.c.t.Helper()
	l.cseq++
	req := l.request(sip.PRACK, l.cseq)
	req.AppendHeader(sip.NewHeader("RAck", rack))
	return l.do(req)
}

func TestReliableProvisional(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{Reliable: true}})
			c := startCaller(t, tp)
			for _, tc := range []struct {
				rack string
				ok   bool
			}{{"1 2 INVITE", true}, {"1 1 INVITE", false}} {
				l := c.newLeg(pbx)
				l.invite(sip.NewHeader("Supported", "100rel"))
				prov := l.next(l.tx)
				wantStatus(t, prov, 183)
				l.learn(prov)
				if h := prov.GetHeader("Require"); h == nil || h.Value() != "100rel" {
					t.Errorf("183 Require %v", h)
				}
				if h := prov.GetHeader("RSeq"); h == nil || h.Value() != "1" {
					t.Errorf("183 RSeq %v", h)
				}
				if !strings.Contains(string(prov.Body()), "m=audio") {
					t.Errorf("183 body %q", prov.Body())
				}
				wantStatus(t, l.prack(tc.rack), 200)
				res := l.waitFinal(l.tx)
				wantStatus(t, res, 200)
				l.ack(2, true)
				call := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return cs[len(cs)-1].Acked })
				got := call[len(call)-1]
				if got.PRACKOK != tc.ok || (len(got.Errors) == 0) == !tc.ok {
					t.Errorf("RAck %q: PRACKOK %v, errors %q", tc.rack, got.PRACKOK, got.Errors)
				}
				if m := methodsOf(got.Requests); !slices.Equal(m, []string{"PRACK/3", "ACK/2"}) {
					t.Errorf("requests %v", m)
				}
			}
		})
	}
}

func TestChallengeInDialog(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{ChallengeInDialog: true}})
	l := startCaller(t, "UDP").newLeg(pbx)
	l.answered()
	challenges := pbx.Challenges()

	l.cseq++
	res := l.do(l.request(sip.BYE, l.cseq))
	wantStatus(t, res, 407)
	ch := challengesOf(t, res)[0]
	l.cseq++
	req := l.request(sip.BYE, l.cseq)
	req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 1))
	wantStatus(t, l.do(req), 200)

	c := oneCall(t, pbx)
	if c.State != StateTerminated || pbx.Challenges() != challenges+1 {
		t.Errorf("call %+v, challenges %d", c, pbx.Challenges())
	}
	if got := methodsOf(c.Requests); !slices.Equal(got, []string{"ACK/2", "BYE/3", "BYE/4"}) {
		t.Errorf("requests %v", got)
	}
	if r := c.Requests[2]; !r.Authenticated || r.AuthUsername != "alice" {
		t.Errorf("BYE recorded %+v", r)
	}
	noErrors(t, c)
}

// A BYE whose CSeq is not above the INVITE's (a proxy that forgot the +1
// of its authenticated re-send) gets 500.
func TestInDialogCSeqOutOfOrder(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
			l := startCaller(t, tp).newLeg(pbx)
			l.answered()
			res := l.do(l.request(sip.BYE, 2))
			wantStatus(t, res, 500)
			if res.Reason != "CSeq out of order" {
				t.Errorf("reason %q", res.Reason)
			}
			c := oneCall(t, pbx)
			if c.State != StateConfirmed || len(c.Errors) != 1 || !strings.Contains(c.Errors[0], "BYE CSeq 2") {
				t.Errorf("call %+v", c)
			}
			wantStatus(t, l.do(l.request(sip.BYE, 3)), 200)
		})
	}
}

func TestStrays(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
	l := startCaller(t, "TCP").newLeg(pbx)
	l.answered()

	// Right Call-ID, wrong To tag.
	good := l.toTag
	l.toTag = "not-a-tag"
	l.cseq++
	wantStatus(t, l.do(l.request(sip.BYE, l.cseq)), 481)
	// A Call-ID the fake never saw.
	other := l.c.newLeg(pbx)
	other.toTag, other.target = "whatever", l.target
	wantStatus(t, other.do(other.request(sip.BYE, 5)), 481)
	other.ack(5, false)
	// WaitCall wakes up on every change, strays included.
	pbx.WaitCall(t, 5*time.Second, func([]Call) bool { return len(pbx.Strays()) == 3 })
	s := pbx.Strays()
	if s[0].CallID != l.callID || s[0].ToTag != "not-a-tag" || s[1].Method != "BYE" || s[2].Method != "ACK" || s[2].CallID != other.callID {
		t.Errorf("strays %+v", s)
	}
	c := oneCall(t, pbx)
	if c.State != StateConfirmed || len(c.Errors) != 1 || !strings.Contains(c.Errors[0], "unknown dialog") {
		t.Errorf("call %+v", c)
	}
	l.toTag = good
	l.cseq++
	wantStatus(t, l.do(l.request(sip.BYE, l.cseq)), 200)
}

// Forks: several 2xx with different To tags through one server
// transaction; sipgo's client transaction hands the first to Responses()
// and the others to OnRetransmission.
func TestForks(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{Forks: 3}})
			l := startCaller(t, tp).newLeg(pbx)
			var mu sync.Mutex
			tags := map[string]bool{}
			l.invite()
			l.tx.OnRetransmission(func(res *sip.Response) {
				tag, _ := res.To().Params.Get("tag")
				mu.Lock()
				defer mu.Unlock()
				tags[tag] = true
			})
			res := l.waitFinal(l.tx)
			wantStatus(t, res, 200)
			first, _ := res.To().Params.Get("tag")
			calls := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return len(cs) == 3 })
			testutil.Eventually(t, "the other forks' 2xx retransmitted", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(tags) >= 2
			})
			mu.Lock()
			tags[first] = true
			got := len(tags)
			mu.Unlock()
			if got != 3 {
				t.Fatalf("%d distinct To tags, want 3", got)
			}
			for i, c := range calls {
				if c.Fork != i || c.State != StateConfirmed || !tags[c.LocalTag] {
					t.Errorf("call %d: %+v", i, c)
				}
				l.toTag = c.LocalTag
				l.ack(2, true)
			}
			calls = pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool {
				return cs[0].Acked && cs[1].Acked && cs[2].Acked
			})
			// Each fork is a dialog of its own with its own CSeq space.
			for _, c := range calls {
				l.toTag = c.LocalTag
				wantStatus(t, l.do(l.request(sip.BYE, 3)), 200)
			}
			for _, c := range pbx.Calls() {
				if c.State != StateTerminated || !c.AckCSeqOK || !c.AckAuthOK {
					t.Errorf("fork %+v", c)
				}
				noErrors(t, c)
			}
		})
	}
}

// An early dialog ended by the caller's BYE: 200, and 487 to the INVITE.
func TestByeInEarlyDialog(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{NoAnswer: true}})
	l := startCaller(t, "UDP").newLeg(pbx)
	l.invite()
	l.learn(l.next(l.tx))
	l.cseq++
	wantStatus(t, l.do(l.request(sip.BYE, l.cseq)), 200)
	wantStatus(t, l.waitFinal(l.tx), 487)
	c := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return len(cs[0].Requests) == 2 })[0]
	if c.State != StateTerminated || c.FinalCode != 487 || c.Cancelled {
		t.Errorf("call %+v", c)
	}
}

func TestCallConfigValidation(t *testing.T) {
	for _, cc := range []CallConfig{{FinalCode: 180}, {Forks: -1}, {Ring: -time.Second}} {
		if err := cc.validate(); err == nil {
			t.Errorf("%+v accepted", cc)
		}
	}
	if err := (CallConfig{}).validate(); err != nil {
		t.Error(err)
	}
}

func TestHeaderTag(t *testing.T) {
	for in, want := range map[string]string{
		`<sip:a@b;tag=x>;tag=abc`:          "abc",
		`"x;tag=no" <sip:a@b>;TAG=y ;z=1`:  "y",
		`sip:a@b;tag=q`:                    "q",
		`<sip:a@b>`:                        "",
		`sip:a@b`:                          "",
		`"Bob" <sip:b@c>;foo=bar;tag=1234`: "1234",
	} {
		if got := headerTag(in); got != want {
			t.Errorf("headerTag(%q) = %q, want %q", in, got, want)
		}
	}
}

// Nothing the UA started outlives the fake: ringing INVITEs, unACKed 2xx
// being retransmitted, requests it sent.
func TestUANoGoroutineOutlivesTheFake(t *testing.T) {
	_, maxBefore := goroutines()
	t.Run("traffic", func(t *testing.T) {
		for _, tp := range transports {
			ringing := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{NoAnswer: true, Reliable: true}})
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
			c := startCaller(t, tp)
			r := c.newLeg(ringing)
			r.invite()
			wantStatus(t, r.next(r.tx), 183) // no PRACK: still waiting for it at cleanup
			l := c.newLeg(pbx)
			l.answered()
			if got := pbx.ReInvite(t, l.callID); got != 200 {
				t.Errorf("ReInvite: %d", got)
			}
			unacked := c.newLeg(pbx)
			unacked.invite()
			wantStatus(t, unacked.waitFinal(unacked.tx), 200)
		}
	})
	noGoroutineAfter(t, maxBefore)
}
