package proxy

import (
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Admission: the request's §16.3 checks, its routing, and who may send it
// (client groups, per-client upstream scope, authproxy's own digest
// challenge; access.go holds the groups and local auth state).

// refuse answers a request that is not admitted, or drops it unanswered on
// UDP when Limits.Drop asks for that. It reports whether it answered.
func (f *forwarding) refuse(code int, reason, outcome string, hdrs ...sip.Header) bool {
	f.p.cfg.Observer.Refused(outcome)
	if f.p.limiter.drop() && f.req.Transport() == "UDP" {
		f.outcome = outcome
		return false
	}
	f.respondLocal(code, reason, outcome, hdrs...)
	return true
}

// refusalLog logs a refusal, at most once a second, so that a flood cannot
// turn into a log flood.
func (p *Proxy) refusalLog(log *slog.Logger, why string, src netip.Addr) {
	now := time.Now().UnixNano()
	last := p.lastRefusalLog.Load()
	if now-last < int64(time.Second) || !p.lastRefusalLog.CompareAndSwap(last, now) {
		return
	}
	log.Warn("request refused", "reason", why, "source", src.String())
}

// senderVerdict is mayRoute's answer: whether the source may send the
// request where route sent it, and if not, why.
type senderVerdict int

const (
	senderAllowed     senderVerdict = iota
	senderNotUpstream               // into a dialog toward its client, from another address than its upstream's
	senderNoGroup                   // toward an upstream, from a source no client group admits
	senderOutOfScope                // toward an upstream its client group may not use
)

// mayRoute decides who may send a request routed as f is: into a dialog
// toward its client only the dialog's own upstream address (routeInbound
// checked the source of a request to a registered client), toward an
// upstream only a source of a client group that may use that upstream.
// It sets f.group. With pick, a route to an upstream group is narrowed to
// the members the client group may use (an ACK goes where route sent it).
func (f *forwarding) mayRoute(pick bool) senderVerdict {
	if f.toClient {
		if f.dlg != nil && !f.dlg.fromItsUpstream(f.src) {
			return senderNotUpstream
		}
		return senderAllowed
	}
	g := f.rt.groupFor(f.src)
	if g == nil {
		return senderNoGroup
	}
	f.group = g
	if pick && f.att.group != nil {
		// A group: the upstreams this client may use, in order; none is
		// refused as a single upstream would be.
		members := f.p.chooseMembers(f.att.group, g)
		if len(members) > 0 {
			f.up, f.att.rest = members[0], members[1:]
			f.log = f.log.With(logUpstream, f.up.Name)
		}
	}
	if !g.allows(f.up.Name) {
		// Per-client scope: whatever Request-URI, Route or From the client
		// sends, it cannot make authproxy use another trunk's credentials.
		return senderOutOfScope
	}
	return senderAllowed
}

// admit applies access control to a routed request: mayRoute, and toward
// an upstream, when the client group has users, authproxy's own challenge.
// It answers the sender and returns false when the request is not
// admitted; no upstream traffic results.
func (f *forwarding) admit() bool {
	switch f.mayRoute(true) {
	case senderNotUpstream:
		f.p.refusalLog(f.log, "request into a dialog from another address than its upstream's", f.src)
		f.refuse(sip.StatusForbidden, "Forbidden", "source-denied")
		return false
	case senderNoGroup:
		f.p.refusalLog(f.log, "source not admitted", f.src)
		f.refuse(sip.StatusForbidden, "Forbidden", "source-denied")
		return false
	case senderOutOfScope:
		f.log.Warn("upstream not allowed for client group", "group", f.group.Name, "source", f.src.String())
		f.refuse(sip.StatusForbidden, "Forbidden", "scope-denied")
		return false
	}
	if f.toClient {
		return true
	}
	g := f.group
	if len(g.Users) == 0 || f.req.Method == sip.ACK || f.req.Method == sip.CANCEL {
		return true
	}
	if f.dlg != nil && f.dlg.clientAddr == f.req.Source() {
		// In a dialog its authenticated INVITE created, from the same
		// address: already admitted.
		return true
	}
	realm := g.Realm
	if realm == "" {
		realm = "authproxy"
	}
	now := time.Now()
	if user := answeringUser(f.req, realm); user != "" && f.p.limiter.userBlocked(f.src, user, now) {
		// Refused before its password is checked: a blocked user gets
		// no more guesses, and a phone retrying with a wrong password
		// stops counting against its source.
		f.p.refusalLog(f.log, "user blocked after failed authentications", f.src)
		f.refuse(sip.StatusForbidden, "Forbidden", "user-blocked")
		return false
	}
	verdict, user := f.p.local.verify(f.req, g, realm, f.src, now)
	switch verdict {
	case authOK:
		f.p.limiter.authSucceeded(f.src, user)
		f.log = f.log.With("client_user", user)
		return true
	case authBad:
		f.p.cfg.Observer.Refused("local-auth-failed")
		sourceBlocked, userBlocked := f.p.limiter.authFailed(f.src, user, now)
		if sourceBlocked {
			f.log.Warn("source blocked after failed authentications", "source", f.src.String(), "for", f.p.limiter.blockFor())
		}
		if userBlocked {
			f.log.Warn("user blocked from source after failed authentications", "source", f.src.String(), "client_user", user, "for", f.p.limiter.userBlockFor())
		}
		f.log.Info("local authentication failed", "source", f.src.String(), "client_user", user)
	}
	f.respondLocal(sip.StatusProxyAuthRequired, "Proxy Authentication Required", "local-challenge",
		sip.NewHeader("Proxy-Authenticate", f.p.local.challenge(realm, f.src, verdict == authStale, now)))
	return false
}

// check checks the request (§16.3), routes it and admits its sender. It
// answers the sender itself and returns false when the request goes no
// further.
func (f *forwarding) check() bool {
	p, req := f.p, f.req
	if code, reason := malformedRequest(req); code != 0 {
		f.refuseMalformed(code, reason)
		return false
	}
	if p.lateRetransmission(req) {
		// Nothing to answer (RFC 6026 §7.1 absorbs it in the Accepted
		// state that has just ended): logged as handled, not as a failure.
		f.outcome, f.replied = "retransmission-absorbed", true
		f.log.Debug("absorbing an INVITE retransmitted after its 2xx was relayed")
		return false
	}
	// RFC 3261 §16.3 step 3: Max-Forwards.
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		if req.Method == sip.OPTIONS && p.isOwnURI(req.Recipient) {
			f.respondLocal(sip.StatusOK, "OK", "local")
			return false
		}
		f.respondLocal(sip.StatusTooManyHops, "Too Many Hops", "max-forwards")
		return false
	}
	// §16.3 step 4: loop detection. authproxy only forwards to configured
	// upstreams and to clients in known dialogs, so a request carrying our
	// own sent-by came back to us.
	for _, h := range headersNamed(req, "Via") {
		if v, ok := h.(*sip.ViaHeader); ok && p.isOwnVia(v) {
			f.respondLocal(sip.StatusLoopDetected, "Loop Detected", "loop")
			return false
		}
	}
	// §16.3 step 5: we support no extension a proxy must understand.
	if pr := headersNamed(req, "Proxy-Require"); len(pr) > 0 {
		vals := make([]string, 0, len(pr))
		for _, h := range pr {
			vals = append(vals, h.Value())
		}
		f.respondLocal(sip.StatusBadExtension, "Bad Extension", "proxy-require",
			sip.NewHeader("Unsupported", strings.Join(vals, ", ")))
		return false
	}
	return f.route() && f.admit()
}
