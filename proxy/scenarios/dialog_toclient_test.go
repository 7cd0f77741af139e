package scenarios

import (
	"fmt"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestInDialogToClientOnlyFromUpstream: requests into a dialog toward the
// client are taken only from a configured upstream. A BYE forged as the
// callee's (its tags and Call-ID, addressed to the caller's Contact) from
// client-side addresses, the caller's own host among them, is refused
// with 403 and never reaches the caller; the call goes on, and the
// callee's own BYE afterwards is the first the caller gets.
func TestInDialogToClientOnlyFromUpstream(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	c := answeredCall(t, h, "udp")
	waitAck(t, h.A, c.CallID)
	for i, host := range []string{"127.0.0.1", "127.0.0.7"} {
		rc := newRawClient(t, host, h.Addr["udp"])
		seq := 9000 + i
		rc.sendRaw(fmt.Sprintf("BYE sip:%s@%s SIP/2.0\r\n"+
			"Via: SIP/2.0/UDP %%[1]s;branch=z9hG4bK-forged-%d;rport\r\n"+
			"Max-Forwards: 70\r\n"+
			"From: <sip:1002@pbx-a.example.com>;tag=%s\r\n"+
			"To: <sip:1001@pbx-a.example.com>;tag=%s\r\n"+
			"Call-ID: %s\r\n"+
			"CSeq: %d BYE\r\n"+
			"Content-Length: 0\r\n\r\n",
			c.Phone.User, c.Phone.Addr, seq, c.ToTag, c.FromTag, c.CallID, seq))
		res, _ := rc.readUntilFinal(c.CallID)
		if res.StatusCode != 403 {
			t.Fatalf("BYE into the dialog from %s: %d %s, want 403", host, res.StatusCode, res.Reason)
		}
	}
	if n := h.Proxy.DialogCount(); n != 1 {
		t.Fatalf("dialogs after the forged BYEs: %d, want the call's", n)
	}
	// Barrier: the callee's BYE takes the same way; a forged one let
	// through would have reached the caller before the 403 was sent.
	if code := h.A.HangUp(t, c.CallID); code != 200 {
		t.Fatalf("callee BYE: %d", code)
	}
	bye := c.Phone.WaitReceived(sip.BYE, 10*time.Second)
	if seq := bye.CSeq().SeqNo; seq >= 9000 {
		t.Fatalf("the caller's first BYE is a forged one (CSeq %d)", seq)
	}
	c.Phone.Mu.Lock()
	defer c.Phone.Mu.Unlock()
	for _, r := range c.Phone.Received {
		if r.Method == sip.BYE && r.CSeq().SeqNo >= 9000 {
			t.Errorf("a forged BYE reached the caller (CSeq %d)", r.CSeq().SeqNo)
		}
	}
}
