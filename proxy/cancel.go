package proxy

import (
	"net/netip"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A CANCEL and an ACK end or confirm what another request started; they
// carry no credentials of their own and are never challenged (RFC 3261
// §22.1), so what admits them is where they come from. A CANCEL must come
// from where its INVITE came from (over the same transport, from the same
// address: the INVITE's sender is the only one who may cancel it), and an
// ACK for a 2xx from the client of its dialog. Otherwise anyone who saw, or
// guessed, an INVITE's Via, Call-ID, tags and CSeq could end an admitted
// client's call: sipgo matches a CANCEL to the INVITE's server transaction
// by those alone (§9.2) and answers it before any handler runs, hence
// sipgo patch 15 (WithTransactionLayerCancelFilter).

// cancelMatched is sipgo's CANCEL filter (patch 15): a CANCEL matching
// invite's pending server transaction cancels it only when it comes from
// the INVITE's source. Otherwise it is refused (403, or dropped with
// Limits.Drop over UDP), counted, and never reaches the upstream; the call
// goes on.
func (p *Proxy) cancelMatched(cancel, invite *sip.Request) bool {
	if sameSource(cancel, invite) {
		return true
	}
	p.cfg.Observer.Refused("cancel-source")
	if ok, suppressed := p.inputLog.allow("cancel-source", time.Now()); ok {
		p.log.Warn("request refused", logMethod, "CANCEL", "reason", "cancel-source",
			"source", cancel.Source(), "invite_source", invite.Source(), "suppressed", suppressed)
	}
	if p.limiter.drop() && cancel.Transport() == "UDP" {
		return false
	}
	p.respondStateless(cancel, sip.StatusForbidden, "Forbidden (not the INVITE's source)")
	return false
}

// sameSource reports whether a and b came over the same transport from
// the same address (over TCP and TLS: on the same connection).
func sameSource(a, b *sip.Request) bool {
	return a.Transport() == b.Transport() && a.Source() == b.Source()
}

// respondStateless answers req outside any transaction, to its source
// (over TCP or TLS, on its connection).
func (p *Proxy) respondStateless(req *sip.Request, code int, reason string) {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	res.SetDestination(req.Source())
	if p.srv == nil {
		return
	}
	if err := p.srv.WriteResponse(res); err != nil {
		p.log.Debug("cannot send response", logStatus, code, "error", err)
	}
}

// handleCancel answers a CANCEL that matched no pending INVITE (sipgo
// answers the ones that do, once cancelMatched let them): 481 (RFC 3261
// §9.2) to a source authproxy admits, and to any other what every request
// from it gets, 403 (or nothing, with Limits.Drop over UDP).
func (p *Proxy) handleCancel(req *sip.Request, tx sip.ServerTransaction) {
	src := sourceAddr(req.Source())
	code, reason := sip.StatusCallTransactionDoesNotExists, "Call/Transaction Does Not Exist"
	if rt := p.rt.Load(); rt.groupFor(src) == nil && rt.fromUpstream(src) == nil {
		p.cfg.Observer.Refused("source-denied")
		p.refusalLog(p.log.With(logMethod, "CANCEL"), "source not admitted", src)
		if p.limiter.drop() && req.Transport() == "UDP" {
			return
		}
		code, reason = sip.StatusForbidden, "Forbidden"
	}
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	if err := tx.Respond(res); err != nil {
		p.log.Debug("cannot answer CANCEL", "error", err)
	}
}

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
