package proxy

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/emiago/sipgo/siptest"

	"github.com/authproxy/authproxy/internal/testutil"
)

// ringingUpstream is a socketless upstream for CANCEL tests. It challenges
// an INVITE without credentials (407), rings (180) on one with credentials
// and answers it 200 when answer is set; a CANCEL gets 200 and its INVITE
// 487 (RFC 3261 §9.2); any other request gets 200.
type ringingUpstream struct {
	answer bool

	mu      sync.Mutex
	sent    []*sip.Request
	invites map[string]*siptest.ClientTxResponder // by top Via branch
}

func (u *ringingUpstream) onRequest(req *sip.Request, w *siptest.ClientTxResponder) {
	u.mu.Lock()
	u.sent = append(u.sent, req.Clone())
	branch, _ := req.Via().Params.Get("branch")
	var inv *siptest.ClientTxResponder
	switch {
	case req.IsInvite():
		if u.invites == nil {
			u.invites = map[string]*siptest.ClientTxResponder{}
		}
		u.invites[branch] = w
	case req.IsCancel():
		inv = u.invites[branch]
	}
	u.mu.Unlock()

	withTag := func(code int, reason string) *sip.Response {
		res := sip.NewResponseFromRequest(req, code, reason, nil)
		res.To().Params.Add("tag", "callee")
		return res
	}
	switch {
	case req.IsInvite() && req.GetHeader("Proxy-Authorization") == nil:
		res := sip.NewResponseFromRequest(req, 407, "Proxy Authentication Required", nil)
		res.AppendHeader(sip.NewHeader("Proxy-Authenticate", `Digest realm="asterisk", nonce="n1", qop="auth", algorithm=MD5`))
		w.Receive(res)
	case req.IsInvite():
		w.Receive(withTag(180, "Ringing"))
		if u.answer {
			ok := withTag(200, "OK")
			ok.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "1002", Host: "127.0.0.2", Port: 5060}})
			w.Receive(ok)
		}
	case req.IsCancel():
		w.Receive(sip.NewResponseFromRequest(req, 200, "OK", nil))
		if inv != nil {
			inv.Receive(withTag(487, "Request Terminated"))
		}
	default:
		w.Receive(sip.NewResponseFromRequest(req, 200, "OK", nil))
	}
}

// methods returns the methods of the requests sent upstream, in order.
func (u *ringingUpstream) methods() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for _, r := range u.sent {
		out = append(out, r.Method.String())
	}
	return out
}

// cancelTestProxy is a socketless proxy in front of a ringingUpstream.
func cancelTestProxy(t *testing.T, answer bool) (*socketlessProxy, *ringingUpstream) {
	t.Helper()
	sp := newSocketlessProxy(t, nil)
	sp.p.cfg.UpstreamTimeout = 10 * time.Second
	sp.p.cfg.TimerC = 10 * time.Second
	up := &ringingUpstream{answer: answer}
	sp.p.client.TxRequester = &siptest.ClientTxRequesterResponder{OnRequest: up.onRequest}
	return sp, up
}

// clientInvite is a client's INVITE to pbx-a (a UDP upstream) over
// transport, and the CANCEL for it.
func clientInvite(t *testing.T, transport string) (inv, cancel *sip.Request) {
	t.Helper()
	parse := func(method string) *sip.Request {
		raw := fmt.Sprintf("%[1]s sip:1002@pbx-a.example.com SIP/2.0\r\n"+
			"Via: SIP/2.0/%[2]s 127.0.0.1:5999;branch=z9hG4bK-cancel-test\r\n"+
			"From: <sip:1001@pbx-a.example.com>;tag=caller\r\n"+
			"To: <sip:1002@pbx-a.example.com>\r\n"+
			"Call-ID: cancel-test\r\n"+
			"CSeq: 1 %[1]s\r\n"+
			"Contact: <sip:1001@127.0.0.1:5999>\r\n"+
			"Max-Forwards: 70\r\n"+
			"Content-Length: 0\r\n\r\n", method, transport)
		m, err := sip.ParseMessage([]byte(raw))
		if err != nil {
			t.Fatalf("parse %s: %v", method, err)
		}
		r := m.(*sip.Request)
		r.SetTransport(transport)
		r.SetSource("127.0.0.1:5999")
		return r
	}
	return parse("INVITE"), parse("CANCEL")
}

// ackFor is the client's ACK for a non-2xx final to inv (RFC 3261
// §17.1.1.3: the INVITE's branch, the final's To tag).
func ackFor(t *testing.T, inv *sip.Request, final *sip.Response) *sip.Request {
	t.Helper()
	ack := sip.NewRequest(sip.ACK, *inv.Recipient.Clone())
	ack.AppendHeader(inv.Via().Clone())
	ack.AppendHeader(sip.HeaderClone(inv.From()))
	ack.AppendHeader(sip.HeaderClone(final.To()))
	ack.AppendHeader(sip.HeaderClone(inv.CallID()))
	ack.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.ACK})
	mf := sip.MaxForwardsHeader(70)
	ack.AppendHeader(&mf)
	ack.SetBody(nil)
	ack.SetTransport(inv.Transport())
	ack.SetSource(inv.Source())
	return ack
}

// handleInBackground runs the proxy's handler for inv and returns a
// channel closed when it returns.
func handleInBackground(t *testing.T, sp *socketlessProxy, inv *sip.Request, tx sip.ServerTransaction) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); sp.p.handle(inv, tx) }()
	t.Cleanup(func() { <-done })
	return done
}

// finalTo returns the last final response the server transaction sent.
func finalTo(tx *siptest.ServerTxRecorder) *sip.Response {
	var final *sip.Response
	for _, r := range tx.Result() {
		if !r.IsProvisional() {
			final = r
		}
	}
	return final
}

// assertAckAbsorbed hands the client's ACK for the INVITE's 487 to the
// proxy, as sipgo does over TCP once the server transaction has ended, and
// checks that the proxy absorbed it instead of forwarding it upstream as a
// stray ACK.
func assertAckAbsorbed(t *testing.T, sp *socketlessProxy, inv *sip.Request, final *sip.Response) {
	t.Helper()
	sp.p.handleAck(ackFor(t, inv, final), nil)
	if !strings.Contains(sp.logString(), "absorbing the ACK for a non-2xx final") {
		t.Errorf("the ACK for the 487 was not absorbed; logs:\n%s", sp.logString())
	}
}

// TestCancelBeforeForwarding: the client's CANCEL reaches sipgo's server
// transaction before the handler has got anywhere (on a busy machine, the
// handler's goroutine may not have run yet). sipgo answers 487 itself; the
// INVITE must then not go upstream at all (RFC 3261 §16.10), where nobody
// would ever cancel or hang up the call it would set up.
func TestCancelBeforeForwarding(t *testing.T) {
	for _, transport := range []string{"UDP", "TCP"} {
		t.Run(transport, func(t *testing.T) {
			sp, up := cancelTestProxy(t, true)
			inv, cancel := clientInvite(t, transport)
			tx := siptest.NewServerTxRecorder(inv)
			defer tx.Terminate()
			if err := tx.Receive(cancel); err != nil {
				t.Fatal(err)
			}
			<-handleInBackground(t, sp, inv, tx)
			if got := up.methods(); len(got) != 0 {
				t.Errorf("upstream received %q after the client's CANCEL, want nothing", got)
			}
			final := finalTo(tx)
			if final == nil || final.StatusCode != sip.StatusRequestTerminated {
				t.Fatalf("client's final response %v, want 487", final)
			}
			if n := sp.p.DialogCount(); n != 0 {
				t.Errorf("%d dialogs recorded, want 0", n)
			}
			if transport == "TCP" {
				assertAckAbsorbed(t, sp, inv, final)
			}
		})
	}
}

// TestCancelWhileRinging: the CANCEL arrives while the authenticated INVITE
// rings. It goes upstream naming that INVITE, the handler ends with the
// upstream's 487, and over TCP the client's ACK for its own 487, arriving
// after that, is absorbed.
func TestCancelWhileRinging(t *testing.T) {
	for _, transport := range []string{"UDP", "TCP"} {
		t.Run(transport, func(t *testing.T) {
			sp, up := cancelTestProxy(t, false)
			inv, cancel := clientInvite(t, transport)
			tx := siptest.NewServerTxRecorder(inv)
			defer tx.Terminate()
			done := handleInBackground(t, sp, inv, tx)
			testutil.Eventually(t, "the 180 relayed to the client", func() bool {
				for _, r := range tx.Result() {
					if r.StatusCode == sip.StatusRinging {
						return true
					}
				}
				return false
			})
			if err := tx.Receive(cancel); err != nil {
				t.Fatal(err)
			}
			<-done
			if got, want := strings.Join(up.methods(), " "), "INVITE INVITE CANCEL"; got != want {
				t.Errorf("upstream received %q, want %q", got, want)
			}
			final := finalTo(tx)
			if final == nil || final.StatusCode != sip.StatusRequestTerminated {
				t.Fatalf("client's final response %v, want 487", final)
			}
			if transport == "TCP" {
				assertAckAbsorbed(t, sp, inv, final)
			}
		})
	}
}

// cancelAt2xx is a server transaction whose client cancels at the worst
// moment: just before the upstream's 2xx is relayed, after the proxy
// decided to relay it.
type cancelAt2xx struct {
	*siptest.ServerTxRecorder
	cancel *sip.Request
	once   sync.Once
}

func (c *cancelAt2xx) Respond(res *sip.Response) error {
	if res.IsSuccess() {
		c.once.Do(func() { _ = c.ServerTxRecorder.Receive(c.cancel) })
	}
	return c.ServerTxRecorder.Respond(res)
}

// TestCancelWinsOver2xx: the client's CANCEL takes the server transaction
// while the upstream's 2xx is on its way to the client. The client has a
// 487, so the 2xx can never reach it: authproxy must hang the call up
// upstream (BYE) and keep no dialog, or the call stays up at the upstream
// with no one to end it.
func TestCancelWinsOver2xx(t *testing.T) {
	sp, up := cancelTestProxy(t, true)
	inv, cancel := clientInvite(t, "UDP")
	tx := &cancelAt2xx{ServerTxRecorder: siptest.NewServerTxRecorder(inv), cancel: cancel}
	defer tx.Terminate()
	<-handleInBackground(t, sp, inv, tx)
	final := finalTo(tx.ServerTxRecorder)
	if final == nil || final.StatusCode != sip.StatusRequestTerminated {
		t.Fatalf("client's final response %v, want 487", final)
	}
	testutil.Eventually(t, "a BYE upstream", func() bool {
		return strings.Contains(strings.Join(up.methods(), " "), "BYE")
	})
	if n := sp.p.DialogCount(); n != 0 {
		t.Errorf("%d dialogs recorded for a call the client cancelled, want 0", n)
	}
}

// inviteSources keeps the first sender of each branch an INVITE carries,
// forgets a branch on request, and lets entries go after two spans.
func TestInviteSources(t *testing.T) {
	s := newInviteSources(time.Minute)
	t0 := time.Unix(1_000_000, 0)
	client := netip.MustParseAddrPort("192.0.2.1:5060")
	other := netip.MustParseAddrPort("192.0.2.1:5061")
	invite := []byte("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-top\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-low\r\n\r\n")
	s.note(invite, "UDP", client, t0)
	s.note(invite, "UDP", other, t0) // a copy from elsewhere changes nothing
	for _, b := range []string{"z9hG4bK-top", "z9hG4bK-low"} {
		if src, ok := s.source(b, t0); !ok || src != makeInviteSource("UDP", client) {
			t.Fatalf("%s: %v %v, want the first sender %v", b, src, ok, client)
		}
	}
	if src, _ := s.source("z9hG4bK-top", t0); src == makeInviteSource("TCP", client) {
		t.Fatal("the same address over TCP is another source")
	}
	s.forget("z9hG4bK-top")
	if _, ok := s.source("z9hG4bK-top", t0); ok {
		t.Fatal("a forgotten branch still known")
	}
	if _, ok := s.source("z9hG4bK-low", t0.Add(90*time.Second)); !ok {
		t.Fatal("a branch gone before two spans")
	}
	if _, ok := s.source("z9hG4bK-low", t0.Add(3*time.Minute)); ok || s.len() != 0 {
		t.Fatalf("a branch kept past two spans (%d entries)", s.len())
	}
}
