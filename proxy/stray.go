package proxy

import (
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// After an INVITE's transactions ended: the upstream's 2xx retransmissions
// relayed statelessly, and the client's INVITE retransmissions absorbed.

// strayResponseWriter sends a response statelessly; the proxy's transport
// layer, replaced in tests.
type strayResponseWriter func(*sip.Response) error

// handleStrayResponse is sipgo's handler for responses that match no
// client transaction. authproxy forwards one kind statelessly (RFC 3261
// §16.7, RFC 6026 §7.2): a retransmitted 2xx to an INVITE of a dialog it
// holds, whose INVITE transactions have ended (Timer L and M, which
// authproxy shortens to 5 s): the callee retransmits its 2xx until the ACK
// reaches it, and a caller whose ACK was lost must see the 2xx again to
// send another. It must come from where the INVITE went (pinning.go: an
// INVITE's pin outlives its transaction for that). Every other stray
// response is dropped; authproxy never relays a response for a dialog it
// does not know.
func (p *Proxy) handleStrayResponse(res *sip.Response) {
	if !p.relayStray2xx(res) {
		p.cfg.Observer.Discarded("stray-response")
	}
}

// relayStray2xx relays res if it is a 2xx retransmission of a dialog
// authproxy holds, from where its INVITE went, and reports whether it did.
func (p *Proxy) relayStray2xx(res *sip.Response) bool {
	if !res.IsSuccess() {
		return false
	}
	cs, v := res.CSeq(), res.Via()
	if cs == nil || cs.MethodName != sip.INVITE || v == nil || !p.isOwnVia(v) {
		return false
	}
	if p.responseVerdict(res) != pinMatch {
		return false // not from where the INVITE went (pinning.go)
	}
	fromTag, toTag := "", ""
	if f := res.From(); f != nil {
		fromTag, _ = f.Params.Get("tag")
	}
	if t := res.To(); t != nil {
		toTag, _ = t.Params.Get("tag")
	}
	now := time.Now()
	id := ""
	if c := res.CallID(); c != nil {
		id = c.Value()
	}
	// From tag = caller tag for a call from a client, callee tag for one
	// from the upstream.
	d := p.dialogs.fromClient(id, fromTag, toTag, now)
	if d == nil && p.dialogs.fromUpstream(id, fromTag, toTag, now) == nil {
		return false
	}
	out := res.Clone()
	removeFirst(out, "Via")
	next := out.Via()
	if next == nil {
		return false
	}
	if c := out.CSeq(); d != nil && d.inviteUpCSeq != 0 && c.SeqNo == d.inviteUpCSeq {
		c.SeqNo = d.inviteCSeq // back in the client's numbering
	}
	out.SetTransport(strings.ToUpper(next.Transport))
	out.SetDestination("") // from the Via now on top (received, rport)
	p.log.Debug("relaying a 2xx retransmission after its transaction ended", logCallID, id)
	write := p.strayWriter
	if write == nil {
		return false
	}
	if err := write(out); err != nil {
		p.log.Debug("cannot relay 2xx retransmission", logCallID, id, "error", err)
	}
	return true
}

// acceptedKey is how Proxy.accepted knows an initial INVITE over UDP:
// its top Via branch and Call-ID (RFC 3261 §17.2.3 matches a
// retransmission by branch). Other INVITEs have no key.
func acceptedKey(req *sip.Request) (string, bool) {
	if req.Method != sip.INVITE || req.Transport() != "UDP" {
		return "", false
	}
	if _, toTag := tags(req); toTag != "" {
		return "", false // a re-INVITE: the client answers its 2xx with an ACK in the dialog
	}
	v := req.Via()
	if v == nil {
		return "", false
	}
	b, ok := v.Params.Get("branch")
	if !ok || b == "" {
		return "", false
	}
	return b + " " + callID(req), true
}

// lateRetransmission reports whether req is an INVITE whose 2xx authproxy
// already relayed, arriving again after sipgo ended its server
// transaction: a client that saw neither our 100 nor the 2xx. The
// upstream's 2xx retransmissions (relayed as strays for the dialog) answer
// it; forwarding it would reach the upstream as a new INVITE with the
// dialog's Call-ID, tag and CSeq (a merged request, RFC 3261 §8.2.2.2).
func (p *Proxy) lateRetransmission(req *sip.Request) bool {
	k, ok := acceptedKey(req)
	return ok && p.accepted.has(k)
}
