package proxy

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/emiago/sipgo/siptest"

	"github.com/authproxy/authproxy/internal/testutil"
)

// TestByeFinalEndsDialog: a BYE's 2xx ends the dialog, and so do a 408,
// a 481 and no answer at all (authproxy's own 408), after which the UAC
// must consider the dialog terminated (RFC 3261 §15.1.1); a lost BYE
// under load must not leave the dialog in the table until the idle bound.
// Any other failure leaves it: the UAC may send the BYE again.
func TestByeFinalEndsDialog(t *testing.T) {
	for _, tc := range []struct {
		upstream int // status the upstream answers; 0: no answer
		dialogs  int
	}{
		{200, 0},
		{408, 0},
		{481, 0},
		{0, 0},
		{500, 1},
		{503, 1},
	} {
		t.Run(fmt.Sprint(tc.upstream), func(t *testing.T) {
			sp := newSocketlessProxy(t, nil)
			sp.p.client.TxRequester = &siptest.ClientTxRequesterResponder{OnRequest: func(req *sip.Request, w *siptest.ClientTxResponder) {
				if tc.upstream != 0 {
					w.Receive(sip.NewResponseFromRequest(req, tc.upstream, "", nil))
				}
			}}
			rt := sp.p.rt.Load()
			sp.p.dialogs.put(&dialog{
				key: dialogKey{callID: "bye-test", callerTag: "caller", calleeTag: "callee"},
				up:  rt.upstreams[0], clientTransport: "UDP", clientAddr: "127.0.0.1:5999", lastUse: time.Now(),
			})
			m, err := sip.ParseMessage([]byte("BYE sip:1002@127.0.0.2:5060 SIP/2.0\r\n" +
				"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-bye-test\r\n" +
				"From: <sip:1001@pbx-a.example.com>;tag=caller\r\n" +
				"To: <sip:1002@pbx-a.example.com>;tag=callee\r\n" +
				"Call-ID: bye-test\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			bye := m.(*sip.Request)
			bye.SetTransport("UDP")
			bye.SetSource("127.0.0.1:5999")
			tx := siptest.NewServerTxRecorder(bye)
			defer tx.Terminate()
			sp.p.handle(bye, tx)
			final := finalTo(tx)
			if final == nil {
				t.Fatal("no final response to the BYE")
			}
			if got := sp.p.DialogCount(); got != tc.dialogs {
				t.Errorf("BYE answered %d: %d dialogs left, want %d", final.StatusCode, got, tc.dialogs)
			}
		})
	}
}

// TestLate2xxRetransmissionAfterBye: a retransmission of the INVITE's 2xx
// that arrives after the BYE ended the dialog (the callee sent it just
// before the BYE reached it, and the path delayed it) is relayed, but
// does not bring the ended dialog back into the table, where it would stay
// until the idle bound.
func TestLate2xxRetransmissionAfterBye(t *testing.T) {
	sp := newSocketlessProxy(t, nil)
	sp.p.cfg.UpstreamTimeout = 10 * time.Second
	var mu sync.Mutex
	var invite *siptest.ClientTxResponder
	var ok *sip.Response
	sp.p.client.TxRequester = &siptest.ClientTxRequesterResponder{OnRequest: func(req *sip.Request, w *siptest.ClientTxResponder) {
		switch {
		case req.IsInvite() && req.GetHeader("Proxy-Authorization") == nil:
			res := sip.NewResponseFromRequest(req, 407, "Proxy Authentication Required", nil)
			res.AppendHeader(sip.NewHeader("Proxy-Authenticate", `Digest realm="asterisk", nonce="n1", qop="auth", algorithm=MD5`))
			w.Receive(res)
		case req.IsInvite():
			res := sip.NewResponseFromRequest(req, 200, "OK", nil)
			res.To().Params.Add("tag", "callee")
			res.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "1002", Host: "127.0.0.2", Port: 5060}})
			mu.Lock()
			invite, ok = w, res
			mu.Unlock()
			w.Receive(res)
		default:
			w.Receive(sip.NewResponseFromRequest(req, 200, "OK", nil))
		}
	}}
	inv, _ := clientInvite(t, "UDP")
	tx := siptest.NewServerTxRecorder(inv)
	defer tx.Terminate()
	<-handleInBackground(t, sp, inv, tx)
	if n := sp.p.DialogCount(); n != 1 {
		t.Fatalf("%d dialogs after the 2xx, want 1", n)
	}

	m, err := sip.ParseMessage([]byte("BYE sip:1002@127.0.0.2:5060 SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-late-2xx-bye\r\n" +
		"From: <sip:1001@pbx-a.example.com>;tag=caller\r\n" +
		"To: <sip:1002@pbx-a.example.com>;tag=callee\r\n" +
		"Call-ID: cancel-test\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	bye := m.(*sip.Request)
	bye.SetTransport("UDP")
	bye.SetSource("127.0.0.1:5999")
	byeTx := siptest.NewServerTxRecorder(bye)
	defer byeTx.Terminate()
	sp.p.handle(bye, byeTx)
	if n := sp.p.DialogCount(); n != 0 {
		t.Fatalf("%d dialogs after the BYE's 200, want 0", n)
	}

	mu.Lock()
	invite.Receive(ok.Clone())
	mu.Unlock()
	// The relay of the retransmission to the client comes after the
	// dialog table was (or was not) written: wait for it.
	testutil.Eventually(t, "the 2xx retransmission relayed to the client", func() bool {
		n := 0
		for _, r := range tx.Result() {
			if r.StatusCode == 200 {
				n++
			}
		}
		return n == 2
	})
	if n := sp.p.DialogCount(); n != 0 {
		t.Errorf("%d dialogs after a late 2xx retransmission, want 0: the ended dialog came back", n)
	}
}
