package proxy

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/emiago/sipgo/siptest"

	"github.com/authproxy/authproxy/internal/testutil"
)

// TestUpstream100NotRelayed: on the transaction path the upstream's 100
// Trying stops at authproxy (RFC 3261 §16.7 step 5: a proxy does not
// forward 100); its other provisional and final responses reach the
// client, for the challenged INVITE and the authenticated one. The
// received INVITE itself is never changed: what goes upstream is a copy.
func TestUpstream100NotRelayed(t *testing.T) {
	sp, _ := cancelTestProxy(t, true)
	sp.p.client.TxRequester = &siptest.ClientTxRequesterResponder{OnRequest: func(req *sip.Request, w *siptest.ClientTxResponder) {
		w.Receive(sip.NewResponseFromRequest(req, 100, "Trying", nil))
		if req.GetHeader("Proxy-Authorization") == nil {
			res := sip.NewResponseFromRequest(req, 407, "Proxy Authentication Required", nil)
			res.AppendHeader(sip.NewHeader("Proxy-Authenticate", `Digest realm="asterisk", nonce="n1", qop="auth", algorithm=MD5`))
			w.Receive(res)
			return
		}
		for _, code := range []int{180, 200} {
			res := sip.NewResponseFromRequest(req, code, "", nil)
			res.To().Params.Add("tag", "callee")
			if code == 200 {
				res.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "1002", Host: "127.0.0.2", Port: 5060}})
			}
			w.Receive(res)
		}
	}}
	inv, _ := clientInvite(t, "TCP")
	received := inv.String()
	tx := siptest.NewServerTxRecorder(inv)
	defer tx.Terminate()
	select {
	case <-handleInBackground(t, sp, inv, tx):
	case <-time.After(testutil.EventuallyLimit):
		t.Fatal("the handler did not return")
	}
	var codes []int
	for _, r := range tx.Result() {
		codes = append(codes, r.StatusCode)
	}
	if len(codes) != 2 || codes[0] != 180 || codes[1] != 200 {
		t.Fatalf("client got %v, want 180, 200 (no 100 from the upstream)", codes)
	}
	// What went upstream (Via, credentials, CSeq + 1) was a copy: the
	// received request is as it arrived.
	if got := inv.String(); got != received {
		t.Errorf("the received INVITE was changed:\n%s\nwas:\n%s", got, received)
	}
}
