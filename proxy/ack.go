package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// The ACK for a 2xx: a request of its own, forwarded end to end
// (RFC 3261 §13.2.2.4).

// handleAck is sipgo's handler of the ACKs the UDP listener's socket does
// not take (fastlane_ack.go) and of every ACK over TCP, TLS and WebSocket:
// forwardAck's.
func (p *Proxy) handleAck(req *sip.Request, _ sip.ServerTransaction) {
	p.sipgoAcks.Add(1)
	p.forwardAck(req, false)
}

// forwardAck forwards an ACK for a 2xx: end to end, a transaction of its
// own, shifted in CSeq like every request of the dialog and carrying the
// credentials its INVITE was accepted with (RFC 3261 §22.1: a server must
// accept them and must not challenge an ACK), with a branch derived from
// the client's (statelessBranch, §16.11). The ACK for a non-2xx is hop by
// hop (§17.1.1.3): on UDP sipgo absorbs it in the INVITE server
// transaction (the socket never takes it), on TCP it arrives here and is
// dropped, our client transaction having ACKed the upstream itself.
// onLane says it runs on a UDP listener's reading goroutine, which must
// not wait: a next hop over TCP or TLS is then written to from a goroutine
// (a connection may have to be dialled).
func (p *Proxy) forwardAck(req *sip.Request, onLane bool) {
	log := p.log.With(logMethod, "ACK", logCallID, callID(req))
	if code, _ := malformedRequest(req); code != 0 {
		from, _ := netip.ParseAddrPort(req.Source())
		p.discarded("malformed-ack", "malformed ACK dropped", from)
		return
	}
	if v := req.Via(); v != nil {
		if b, ok := v.Params.Get("branch"); ok && p.finals.has(b) {
			log.Debug("absorbing the ACK for a non-2xx final")
			return
		}
	}
	f := &forwarding{p: p, rt: p.rt.Load(), log: log, ctx: context.Background(), origin: origin{req: req, src: sourceAddr(req.Source())}}
	if !f.routeQuiet() {
		log.Debug("dropping ACK with no next hop")
		return
	}
	if f.mayRoute(false) != senderAllowed {
		f.ackRefused()
		return
	}
	if !f.ackFromDialogClient() {
		return
	}
	if !f.toClient && !f.pickCachedTarget() {
		log.Debug("dropping ACK: its upstream has no known target")
		return
	}
	fwd, err := f.buildForward()
	if err != nil {
		log.Debug("dropping malformed ACK", "error", err)
		return
	}
	if f.dlg != nil && !f.toClient {
		if cs := fwd.CSeq(); f.dlg.inviteUpCSeq != 0 && req.CSeq().SeqNo == f.dlg.inviteCSeq {
			cs.SeqNo = f.dlg.inviteUpCSeq
		}
		appendAuth(fwd, f.dlg.inviteAuth)
	}
	if onLane && f.hop.transport != "UDP" {
		go f.sendAck(fwd)
		return
	}
	f.sendAck(fwd)
}

// sendAck sends fwd, the ACK built by forwardAck, to f's next hop with our
// Via (addVia: statelessBranch). Over UDP it leaves from the listener's
// socket, which shows it to the HEP capture (laneSocket.WriteTo).
func (f *forwarding) sendAck(fwd *sip.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // bounds a TLS dial
	defer cancel()
	if err := f.tlsReady(ctx); err != nil {
		f.log.Warn("cannot forward ACK", "error", err)
		return
	}
	if err := f.p.client.WriteRequest(fwd, f.p.addVia(f.hop.transport)); err != nil {
		f.log.Warn("cannot forward ACK", "error", err)
	}
}

// routeQuiet is route for requests that get no response (ACK).
func (f *forwarding) routeQuiet() bool {
	f.tx = discardTx{}
	return f.route()
}

// discardTx stands in for a server transaction where none exists (ACK):
// responses to it go nowhere.
type discardTx struct{ sip.ServerTransaction }

func (discardTx) Respond(*sip.Response) error { return nil }

// ackFromDialogClient reports whether an ACK routed into a dialog toward
// the upstream comes from the dialog's client (its INVITE's source). An
// ACK from anyone else is dropped and counted: forwarded, it would carry
// the INVITE's credentials (§22.1) for whoever copied the dialog's
// identifiers.
func (f *forwarding) ackFromDialogClient() bool {
	if f.dlg == nil || f.toClient {
		return true
	}
	if f.req.Transport() == f.dlg.clientTransport && f.req.Source() == f.dlg.clientAddr {
		return true
	}
	f.ackRefused()
	return false
}

// ackRefused counts and logs (throttled) an ACK dropped for its source:
// one no client group admits (or, toward a client, no upstream), or not
// its dialog's client.
func (f *forwarding) ackRefused() {
	from, _ := netip.ParseAddrPort(f.req.Source())
	f.p.discarded("ack-source", "ACK dropped: not from a source that may send it", from)
}

// statelessBranch is the branch of our Via on a request forwarded without
// a transaction of ours (the ACK for a 2xx): derived from the branch and
// sent-by of the request's own top Via, so that every retransmission of it
// leaves with the same branch and the next hop sees a retransmission, not
// a new request (RFC 3261 §16.11). A strict UAS aborts a call on a second
// ACK it does not recognise as a copy of the first, and a callee
// retransmits its 2xx, so the caller ACKs again, whenever an ACK is late.
// A request without an RFC 3261 branch gets a random one.
func statelessBranch(r *sip.Request) string {
	v := r.Via()
	if v == nil {
		return sip.GenerateBranchN(16)
	}
	b, ok := v.Params.Get("branch")
	if !ok || len(b) == len(sip.RFC3261BranchMagicCookie) || !strings.HasPrefix(b, sip.RFC3261BranchMagicCookie) {
		return sip.GenerateBranchN(16)
	}
	h := sha256.New()
	h.Write([]byte(b))
	h.Write([]byte{0})
	h.Write([]byte(v.Host))
	h.Write([]byte{0})
	h.Write(strconv.AppendInt(nil, int64(v.Port), 10))
	var sum [sha256.Size]byte
	return sip.RFC3261BranchMagicCookie + "." + hex.EncodeToString(h.Sum(sum[:0])[:12])
}
