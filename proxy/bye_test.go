package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/emiago/sipgo/siptest"
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
