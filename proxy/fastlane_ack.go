package proxy

import (
	"net"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// The ACK for a 2xx on the fast lane. Every call's caller sends one
// (RFC 3261 §13.2.2.4), a request of its own that no transaction answers,
// forwarded end to end (ack.go): handed to sipgo it would cost a parse
// more, a goroutine and a server transaction lookup (and creation) for
// nothing. A UDP listener's socket forwards it on the goroutine that read
// it with the same code sipgo's handler runs (forwardAck), when it is
// surely the ACK for the 2xx authproxy last relayed in a dialog it holds,
// sent by the dialog's client toward its upstream (takesAck). The ACK for
// a non-2xx final is another matter: it belongs to the INVITE's server
// transaction (§17.1.1.3, §17.2.1: it stops the final response's
// retransmissions), so it must reach sipgo. What tells them apart:
//
//   - the ACK for a non-2xx carries its INVITE's top Via branch, the ACK
//     for a 2xx a new one (§13.2.2.4, §17.1.1.3): the dialog keeps a hash
//     of the branch of the INVITE whose 2xx it last relayed, and an ACK
//     with that branch is not taken (a re-INVITE answered 2xx that the
//     client's CANCEL turned into a 487 leaves such a dialog);
//   - the ACK for a rejected re-INVITE (a 488 in the dialog) carries the
//     re-INVITE's CSeq number, higher than the dialog's inviteCSeq, the
//     number of the INVITE whose 2xx was last relayed: only an ACK with
//     that number is taken;
//   - an initial INVITE's non-2xx establishes no dialog: its ACK's tags
//     name none.
//
// A branch without RFC 3261's magic cookie (RFC 2543 matching, §17.2.3)
// keeps sipgo's way, as does an ACK the upstream sends toward a client
// (a call to a registered client): rare, and route's business. Whatever
// is not taken is handled by sipgo's handler exactly as before, so a
// wrong "no" costs time, never correctness.

// takeAck forwards the ACK datagram data from addr when the lane takes it
// (takesAck) and reports whether it did; false hands it to sipgo.
func (s *laneSocket) takeAck(data []byte, addr net.Addr) bool {
	p := s.p
	if p.lane == nil {
		return false
	}
	req := s.parseRequest(data, addr)
	if req == nil || req.Method != sip.ACK {
		return false
	}
	if p.lane.absorbInviteAck(req) { // invitetx_socket.go
		return true
	}
	if !p.lane.takesAck(req) {
		return false
	}
	p.forwardAck(req, true)
	return true
}

// takesAck reports whether req, an ACK read from a UDP listener, is a
// dialog's client's ACK for the 2xx authproxy last relayed in the dialog
// (dialogTable.acksLast2xx; a dialog its BYE ended takes it for
// endedAckWindow), with an RFC 3261 branch. It marks nothing used:
// forwardAck's route does that.
func (l *fastLane) takesAck(req *sip.Request) bool {
	v, cs := req.Via(), req.CSeq()
	if v == nil || cs == nil || cs.MethodName != sip.ACK {
		return false // sipgo answers or drops it, handleAck counts it
	}
	b, ok := v.Params.Get("branch")
	if !ok || len(b) <= len(sip.RFC3261BranchMagicCookie) || !strings.HasPrefix(b, sip.RFC3261BranchMagicCookie) {
		return false
	}
	fromTag, toTag := tags(req)
	if toTag == "" {
		return false
	}
	return l.p.dialogs.acksLast2xx(callID(req), fromTag, toTag, cs.SeqNo, hashKey(b), time.Now())
}
