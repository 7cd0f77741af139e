package scenarios

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/siptest"
)

// sendRawFrom sends one request as a UDP datagram from a fresh socket on
// host (a loopback address) to the proxy and returns the status code of
// the first final response it gets back (0 when none arrives within 5s).
func sendRawFrom(t *testing.T, host, proxyAddr string, build func(local string) string) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst, err := net.ResolveUDPAddr("udp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.WriteTo([]byte(build(pc.LocalAddr().String())), dst); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	for {
		_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return 0
		}
		line, _, _ := bytes.Cut(buf[:n], []byte("\r\n"))
		f := strings.Fields(string(line))
		if len(f) < 2 || f[0] != "SIP/2.0" {
			continue
		}
		code, _ := strconv.Atoi(f[1])
		if code >= 200 {
			return code
		}
	}
}

// forgedBye is a BYE into c's dialog as its callee would send it (From =
// the callee's tag, To = the caller's), with CSeq seq, sent from local.
func forgedBye(c *siptest.Call, seq int) func(local string) string {
	return func(local string) string {
		return fmt.Sprintf("BYE sip:%s@%s SIP/2.0\r\n"+
			"Via: SIP/2.0/UDP %s;branch=z9hG4bK-forged%d;rport\r\n"+
			"Max-Forwards: 70\r\n"+
			"From: <sip:1002@pbx-a.example.com>;tag=%s\r\n"+
			"To: <sip:1001@pbx-a.example.com>;tag=%s\r\n"+
			"Call-ID: %s\r\n"+
			"CSeq: %d BYE\r\n"+
			"Content-Length: 0\r\n\r\n",
			c.Phone.User, c.Phone.Addr, local, seq, c.ToTag, c.FromTag, c.CallID, seq)
	}
}

// TestDialogRequestOnlyFromItsUpstream: a request into a dialog from the
// upstream side is accepted only from the address the dialog's INVITE
// went to. A BYE forged from another configured upstream's address (pbx-b
// on 127.0.0.3) into a call through pbx-a is refused with 403 and never
// reaches the client; the callee's own BYE afterwards does.
func TestDialogRequestOnlyFromItsUpstream(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	c := answeredCall(t, h, "udp")
	waitAck(t, h.A, c.CallID)
	if code := sendRawFrom(t, "127.0.0.3", h.Addr["udp"], forgedBye(c, 9999)); code != 403 {
		t.Fatalf("forged BYE from another upstream's address: %d, want 403", code)
	}
	// Barrier: the callee's real BYE follows the same path.
	if code := h.A.HangUp(t, c.CallID); code != 200 {
		t.Fatalf("callee BYE: %d", code)
	}
	c.Phone.WaitReceived(sip.BYE, 5*time.Second)
	c.Phone.Mu.Lock()
	defer c.Phone.Mu.Unlock()
	for _, r := range c.Phone.Received {
		if r.Method == sip.BYE && r.CSeq().SeqNo == 9999 {
			t.Fatal("the forged BYE reached the client")
		}
	}
}
