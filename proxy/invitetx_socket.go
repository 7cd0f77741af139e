package proxy

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A UDP client's initial INVITE, and what its server transaction matches
// (the INVITE's retransmissions, the ACK for a non-2xx final response, the
// CANCEL), are taken from sipgo by the listener's socket: the transaction
// is an inviteTx (invitetx.go), and the INVITE is forwarded by the fast
// lane (fastlane_invite.go): on the lane toward a UDP target, else with
// sipgo's client transactions in a goroutine of its own, as on sipgo's
// path. A re-INVITE (a To tag),
// an INVITE whose top Via branch lacks RFC 3261's magic cookie (RFC 2543
// matching, §17.2.3), and one the parser refuses keep sipgo's
// transactions, as do INVITEs over TCP, TLS and WebSocket.

// takeInvite handles an INVITE datagram the way takeRequest says: a new
// initial INVITE gets an inviteTx and is forwarded, a retransmission of
// one is answered by its transaction. It reports false, handing data to
// sipgo, for anything else.
func (s *laneSocket) takeInvite(data []byte, addr net.Addr, from netip.AddrPort) bool {
	p := s.p
	if p.lane == nil || !from.IsValid() {
		return false
	}
	req := s.parseRequest(data, addr)
	if req == nil || req.Method != sip.INVITE {
		return false
	}
	if _, toTag := tags(req); toTag != "" || !hasRFC3261Branch(req) {
		return false
	}
	key, ok := serverTxKey(req)
	if !ok {
		return false
	}
	t := p.lane.invites
	tx := newInviteTx(t, key, req, s, from, time.Now())
	if old := t.claim(tx); old != nil {
		old.retransmitted()
		return true
	}
	tx.raw = data
	p.lane.HandleInvite(req, tx) // fastlane_invite.go
	tx.raw = nil                 // the read buffer is sipgo's again
	return true
}

// hasRFC3261Branch reports whether req's top Via has a branch with RFC
// 3261's magic cookie (and something after it).
func hasRFC3261Branch(req *sip.Request) bool {
	b := topViaBranch(req)
	return len(b) > len(sip.RFC3261BranchMagicCookie) && strings.HasPrefix(b, sip.RFC3261BranchMagicCookie)
}

// absorbInviteAck takes the ACK req when it matches a lane INVITE's
// transaction (serverTxKey keys ACK as INVITE): the ACK for its non-2xx
// final response (RFC 3261 §17.2.1), which stops Timer G and goes no
// further, the hop-by-hop ACK of our client transaction having answered
// the upstream's. It reports whether it took it.
func (l *fastLane) absorbInviteAck(req *sip.Request) bool {
	key, ok := serverTxKey(req)
	if !ok {
		return false
	}
	tx := l.invites.get(key)
	if tx == nil {
		return false
	}
	tx.acked(time.Now())
	return true
}

// takeCancel handles a CANCEL datagram: refused when it comes from
// elsewhere than its INVITE (cancelRefused), taken by the lane when it
// matches a lane INVITE's transaction (cancelInvite); false hands it to
// sipgo, which matches it to an INVITE of its own or answers it 481
// (handleCancel).
func (s *laneSocket) takeCancel(data []byte, addr net.Addr, from netip.AddrPort) bool {
	req := s.parseRequest(data, addr)
	if req == nil || req.Method != sip.CANCEL {
		return false
	}
	if s.refuseCancel(req, addr, from) {
		return true
	}
	return s.p.lane != nil && from.IsValid() && s.cancelInvite(req, from)
}

// cancelInvite answers a CANCEL matching a lane INVITE's transaction (RFC
// 3261 §9.2: same branch and sent-by, as INVITE) with 200, kept in the
// answered store under the CANCEL's own key for its retransmissions, and
// cancels the INVITE (inviteTx.cancel: 487 unless it has its final
// response). It reports false when the CANCEL matches none.
func (s *laneSocket) cancelInvite(req *sip.Request, from netip.AddrPort) bool {
	own, ok := serverTxKey(req)
	if !ok {
		return false
	}
	now := time.Now()
	if res, to, ok := s.answered.get(own, now); ok {
		if _, err := s.WriteTo(res, net.UDPAddrFromAddrPort(to)); err != nil {
			s.p.log.Debug("cannot answer CANCEL", "error", err)
		}
		return true
	}
	key, ok := serverTxKeyAs(req, sip.INVITE)
	if !ok {
		return false
	}
	tx := s.p.lane.invites.get(key)
	if tx == nil {
		return false
	}
	buf := msgBufs.Get().(*bytes.Buffer)
	defer msgBufs.Put(buf)
	buf.Reset()
	sip.NewResponseFromRequest(req, sip.StatusOK, "OK", nil).StringWrite(buf)
	if _, err := s.WriteTo(buf.Bytes(), net.UDPAddrFromAddrPort(from)); err != nil {
		s.p.log.Debug("cannot answer CANCEL", "error", err)
	}
	s.answered.put(own, buf.Bytes(), from, now)
	tx.cancel(req)
	return true
}
