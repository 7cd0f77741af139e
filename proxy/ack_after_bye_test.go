package proxy_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/internal/testutil"
)

// TestAckAfterByeKeepsInviteCSeqAndCredentials: the caller's ACK for the
// 2xx of a challenged INVITE reaches authproxy only after the BYE that
// followed it has ended the dialog (UDP may reorder them, and sipgo
// handles each request of a TCP connection on a goroutine of its own, so
// a BYE read after the ACK may be forwarded and answered first). The ACK
// must still reach the upstream as the ACK of the authenticated INVITE:
// its CSeq number as sent upstream and its credentials (RFC 3261 §22.1),
// not the caller's number without credentials.
func TestAckAfterByeKeepsInviteCSeqAndCredentials(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	client := newUDPPeer(t, "127.0.0.1")
	const callID = "ack-after-bye"
	client.send(t, e.udp, request("INVITE", "sip:1002@pbx-a.example.com", client.addr(), callID, 1))
	first := e.upA.next(t, "INVITE ")
	e.upA.send(t, first.src.String(), response(first.data, "407 Proxy Authentication Required",
		`Proxy-Authenticate: Digest realm="pbx-a", nonce="n-ack-after-bye", algorithm=MD5`))
	authed := e.upA.next(t, "INVITE ", "Proxy-Authorization:")
	if cs := header(authed.data, "CSeq"); cs != "2 INVITE" {
		t.Fatalf("authenticated INVITE CSeq %q, want 2 INVITE", cs)
	}
	e.upA.send(t, authed.src.String(), response(authed.data, "200 OK", "Contact: <sip:1002@"+e.upA.addr()+">"))
	client.next(t, "SIP/2.0 200 ", "CSeq: 1 INVITE")

	// The BYE first, answered; then the ACK sent before it.
	client.send(t, e.udp, inDialog(request("BYE", "sip:1002@"+e.upA.addr(), client.addr(), callID, 2)))
	bye := e.upA.next(t, "BYE ")
	e.upA.send(t, bye.src.String(), response(bye.data, "200 OK"))
	client.next(t, "SIP/2.0 200 ", "CSeq: 2 BYE")
	client.send(t, e.udp, ack(client.addr(), callID, e.upA.addr()))

	inviteBranch := viaBranch(first.data)
	var got []byte
	testutil.Eventually(t, "the caller's ACK forwarded upstream", func() bool {
		for _, d := range e.upA.received() {
			if bytes.HasPrefix(d, []byte("ACK ")) && viaBranch(d) != inviteBranch {
				got = d
				return true
			}
		}
		return false
	})
	if cs := header(got, "CSeq"); cs != "2 ACK" {
		t.Errorf("ACK CSeq %q upstream, want 2 ACK (the authenticated INVITE's):\n%s", cs, got)
	}
	if want := header(authed.data, "Proxy-Authorization"); header(got, "Proxy-Authorization") != want {
		t.Errorf("ACK credentials %q upstream, want the INVITE's %q", header(got, "Proxy-Authorization"), want)
	}
}

// inDialog puts the callee's tag (the one response gives) on msg's To.
func inDialog(msg []byte) []byte {
	return bytes.Replace(msg, []byte("To: <sip:1002@pbx-a.example.com>"), []byte("To: <sip:1002@pbx-a.example.com>;tag=up"), 1)
}

// viaBranch returns the branch parameter of msg's top Via.
func viaBranch(msg []byte) string {
	_, b, _ := strings.Cut(header(msg, "Via"), "branch=")
	b, _, _ = strings.Cut(b, ";")
	return b
}

// TestAckRetransmissionKeepsBranch: each copy of a caller's ACK for a 2xx
// (it ACKs every 2xx retransmission, RFC 3261 §13.2.2.4) leaves authproxy
// with the same Via branch, so that the callee sees a retransmission
// (§16.11): with a branch of its own per copy a strict UAS takes the
// second ACK for a new request and aborts the call.
func TestAckRetransmissionKeepsBranch(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	client := newUDPPeer(t, "127.0.0.1")
	const callID = "ack-retransmitted"
	client.send(t, e.udp, request("INVITE", "sip:1002@pbx-a.example.com", client.addr(), callID, 1))
	sent := e.upA.next(t, "INVITE ")
	e.upA.send(t, sent.src.String(), response(sent.data, "200 OK", "Contact: <sip:1002@"+e.upA.addr()+">"))
	client.next(t, "SIP/2.0 200 ")

	// sipgo absorbs a copy that arrives while the first one's handler
	// runs: send copies until two have been forwarded.
	ackMsg := ack(client.addr(), callID, e.upA.addr())
	testutil.Eventually(t, "two copies of the ACK forwarded upstream", func() bool {
		client.send(t, e.udp, ackMsg)
		return e.upA.count("ACK ") >= 2
	})
	var branches []string
	for _, d := range e.upA.received() {
		if bytes.HasPrefix(d, []byte("ACK ")) {
			branches = append(branches, viaBranch(d))
		}
	}
	if len(branches) < 2 || branches[0] != branches[1] {
		t.Fatalf("ACK copies left with branches %q, want one branch", branches)
	}
	if !strings.HasPrefix(branches[0], "z9hG4bK") {
		t.Errorf("ACK branch %q lacks RFC 3261's magic cookie", branches[0])
	}
}
