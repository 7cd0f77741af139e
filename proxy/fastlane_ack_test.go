package proxy_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// The caller's ACK for a 2xx over UDP, in a dialog authproxy holds, is
// forwarded by the listener's socket without reaching sipgo (its handler
// never called), as handleAck would forward it: the CSeq of the INVITE as
// the upstream saw it and, for the initial INVITE, its credentials (RFC
// 3261 §22.1), with a branch derived from the caller's, the same for each
// copy (§16.11). So for the ACK of a re-INVITE's 2xx, and for the initial
// INVITE's ACK arriving after the BYE ended the dialog (§13.3.1.4's
// window). Both ways a UDP listener reads.
func TestFastLaneAckFor2xx(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, d *laneDialog) (ack []byte, cseq string, auth bool)
	}{
		{
			name: "initial invite",
			prepare: func(t *testing.T, d *laneDialog) ([]byte, string, bool) {
				return d.ack(1, "ack"), "2 ACK", true
			},
		},
		{
			name: "after bye",
			prepare: func(t *testing.T, d *laneDialog) ([]byte, string, bool) {
				d.client.send(t, d.addr, d.inDialogRequest("BYE", 2))
				bye := d.up.next(t, "BYE ")
				d.up.send(t, bye.src.String(), response(bye.data, "200 OK"))
				d.client.next(t, "SIP/2.0 200 ", "CSeq: 2 BYE")
				return d.ack(1, "ack"), "2 ACK", true
			},
		},
		{
			name: "re-invite",
			prepare: func(t *testing.T, d *laneDialog) ([]byte, string, bool) {
				d.client.send(t, d.addr, d.inDialogRequest("INVITE", 2))
				reinv := d.up.next(t, "INVITE ", "CSeq: 3 INVITE")
				d.up.send(t, reinv.src.String(), response(reinv.data, "200 OK", "Contact: <sip:1002@"+d.up.addr()+">"))
				d.client.next(t, "SIP/2.0 200 ", "CSeq: 2 INVITE")
				return d.ack(2, "ack"), "3 ACK", false
			},
		},
	} {
		eachHandOff(t, tc.name, func(t *testing.T, handOffAt int64) {
			d := startLaneDialog(t, fmt.Sprintf("lane-ack-%s-%d", strings.ReplaceAll(tc.name, " ", "-"), handOffAt), 0)
			msg, cseq, auth := tc.prepare(t, d)
			var branches []string
			for range 2 { // a copy, as the caller sends for each 2xx retransmission
				d.client.send(t, d.addr, msg)
				got := d.up.next(t, "ACK ")
				if cs := header(got.data, "CSeq"); cs != cseq {
					t.Errorf("ACK CSeq %q upstream, want %s:\n%s", cs, cseq, got.data)
				}
				want := ""
				if auth {
					want = header(d.authedInvite, "Proxy-Authorization")
				}
				if got := header(got.data, "Proxy-Authorization"); got != want {
					t.Errorf("ACK credentials %q upstream, want %q", got, want)
				}
				branches = append(branches, viaBranch(got.data))
			}
			if branches[0] != branches[1] || !strings.HasPrefix(branches[0], "z9hG4bK") || branches[0] == viaBranch(msg) {
				t.Errorf("ACK copies left with branches %q, want one RFC 3261 branch of authproxy's", branches)
			}
			if n := proxy.SipgoAcks(d.p); n != 0 {
				t.Errorf("sipgo's ACK handler ran %d times, want the socket to forward the ACK itself", n)
			}
		})
	}
}

// The ACK for a non-2xx final is hop by hop (RFC 3261 §17.1.1.3): it
// carries its INVITE's branch and belongs to sipgo's INVITE server
// transaction, which it stops retransmitting the final (§17.2.1). The
// socket must leave it to sipgo, for an initial INVITE rejected and for a
// re-INVITE rejected inside a dialog authproxy holds (same tags as the
// dialog's 2xx ACK, the re-INVITE's higher CSeq): neither is forwarded
// upstream (the upstream got its ACK from authproxy's client transaction),
// sipgo's handler never sees it (the transaction matched it), and the
// rejection stops being retransmitted. Another call rejected at the same
// time, never ACKed, is the clock: its rejection keeps coming.
func TestFastLaneAckForNon2xxAbsorbed(t *testing.T) {
	for _, tc := range []struct {
		name string
		// reject has an INVITE rejected and returns the caller's ACK for
		// the rejection and the prefix the rejection starts with.
		reject func(t *testing.T, d *laneDialog) (ack []byte, final string)
	}{
		{
			name: "initial invite",
			reject: func(t *testing.T, d *laneDialog) ([]byte, string) {
				return d.rejected(t, "lane-ack-486-call", 1, "486 Busy Here"), "SIP/2.0 486 "
			},
		},
		{
			name: "re-invite",
			reject: func(t *testing.T, d *laneDialog) ([]byte, string) {
				return d.rejected(t, d.callID, 2, "488 Not Acceptable Here"), "SIP/2.0 488 "
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startLaneDialog(t, "lane-ack-non2xx-"+strings.ReplaceAll(tc.name, " ", "-"), 0)
			clock := d.rejectedAgain(t, "lane-ack-clock", "480 Temporarily Unavailable")
			ack, final := tc.reject(t, d)
			// Its final retransmitted (sipgo's Timer G), then ACKed.
			testutil.Eventually(t, "the final retransmitted", func() bool { return d.client.count(final) >= 2 })
			d.client.send(t, d.addr, ack)
			before, clocked := d.client.count(final), d.client.count(clock)
			// Two more copies of the clock's final, rejected before this
			// one: Timer G, doubling, has fired at least once for the
			// ACKed final meanwhile, had it gone on.
			testutil.Eventually(t, "the clock's final retransmitted twice", func() bool { return d.client.count(clock) >= clocked+2 })
			if n := d.client.count(final); n > before {
				t.Errorf("%d copies of the ACKed final after the ACK, want none", n-before)
			}
			if n := proxy.SipgoAcks(d.p); n != 0 {
				t.Errorf("sipgo's ACK handler ran %d times, want the ACK absorbed by the server transaction", n)
			}
			invites := map[string]bool{}
			for _, m := range d.up.received() {
				if bytes.HasPrefix(m, []byte("INVITE ")) {
					invites[viaBranch(m)] = true
				}
			}
			for _, m := range d.up.received() {
				if bytes.HasPrefix(m, []byte("ACK ")) && !invites[viaBranch(m)] {
					t.Errorf("an ACK went upstream end to end:\n%s", m)
				}
			}
		})
	}
}

// ack is the caller's ACK in d's dialog for the 2xx to its INVITE of CSeq
// seq, with a branch of its own named after tag.
func (d *laneDialog) ack(seq int, tag string) []byte {
	msg := d.inDialogRequest("ACK", seq)
	return bytes.Replace(msg, fmt.Appendf(nil, "branch=z9hG4bK-%s-%d;", d.callID, seq), fmt.Appendf(nil, "branch=z9hG4bK-%s-%d-%s;", d.callID, seq, tag), 1)
}

// rejected has the caller send an INVITE of CSeq seq in call callID (d's
// own: a re-INVITE in its dialog, which the upstream sees with seq+1, the
// INVITE's challenge having shifted the dialog's CSeq) that the upstream
// rejects with status, and returns the caller's ACK for the rejection:
// the INVITE's branch and CSeq, the rejection's To tag (§17.1.1.3).
func (d *laneDialog) rejected(t *testing.T, callID string, seq int, status string) []byte {
	t.Helper()
	inv, ack, upSeq := request("INVITE", "sip:1002@pbx.example.com", d.client.addr(), callID, seq), request("ACK", "sip:1002@pbx.example.com", d.client.addr(), callID, seq), seq
	if callID == d.callID {
		inv, ack, upSeq = d.inDialogRequest("INVITE", seq), d.inDialogRequest("ACK", seq), seq+1
	}
	d.client.send(t, d.addr, inv)
	got := d.up.next(t, "INVITE ", "Call-ID: "+callID+"\r\n", fmt.Sprintf("CSeq: %d INVITE", upSeq))
	d.up.send(t, got.src.String(), response(got.data, status))
	d.client.next(t, "SIP/2.0 "+status[:3]+" ", "Call-ID: "+callID+"\r\n")
	if callID != d.callID {
		ack = inDialog(ack)
	}
	return ack
}

// rejectedAgain has the caller send an initial INVITE in call callID the
// upstream rejects with status, never ACKed, and returns the prefix its
// final starts with, to count sipgo's retransmissions of it.
func (d *laneDialog) rejectedAgain(t *testing.T, callID, status string) string {
	t.Helper()
	d.rejected(t, callID, 1, status)
	return "SIP/2.0 " + status[:3] + " "
}
