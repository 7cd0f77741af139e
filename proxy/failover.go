package proxy

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// Failover (RFC 3263 §4.3). A request tries its upstream's targets in the
// order targets.go gives (SRV priority and weight, targets marked down
// last), and, for an upstream group (groups.go), the group's upstreams in
// order. An attempt that gets no response at all (within FailoverTimeout
// while another target or upstream remains; the last keeps Timer B/F),
// fails with a transport error, or gets a 503, moves the request to the
// next target as a NEW client transaction (new Via branch); the client
// sees one transaction. A provisional response other than 100 (which is
// hop by hop and only says the target is alive) ends failover for an
// INVITE: the callee may have rung. When the last target of an upstream
// failed, or its answer is in the group's failover list, the request moves
// to the group's next upstream with THAT upstream's credentials: the
// answers computed for the previous one are dropped first (credentials
// never cross upstreams), and a client group must allow an upstream for it
// to be tried. After an INVITE was sent, its CANCEL and the ACK of a
// non-2xx go where it went (sendCancel copies its destination; sipgo ACKs
// on the transaction's connection).

// attempts is where one request may go and where it is: the group's
// upstreams still to try and the current upstream's targets in this
// request's order.
type attempts struct {
	group       *upstreamGroup   // the group the request was routed to; nil for one upstream
	rest        []*upstream      // the group's upstreams still to try, in order, each allowed for the client
	targets     []resolve.Target // the current upstream's targets, in order
	ti          int              // the target the request is at
	answered    bool             // the current attempt had a response (any, 100 included)
	provisional bool             // an INVITE had a provisional response other than 100: no more failover
	tried       int              // attempts sent, for the log
}

// pickTarget chooses where a request toward an upstream goes first: its
// dialog's target when it has one, else the first usable target of its
// upstream, waiting for a first resolution at most the DNS timeout (the
// fast lane calls pickCachedTarget, which never waits); for a group, the
// first upstream that has one. It answers 503 itself and returns false
// when none has any.
func (f *forwarding) pickTarget(ctx context.Context) bool {
	if err := f.firstTarget(ctx); err != nil {
		f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "no-target")
		return false
	}
	return true
}

// firstTarget is pickTarget without the answer: it returns why no upstream
// had a target.
func (f *forwarding) firstTarget(ctx context.Context) error {
	if f.toClient || f.att.targets != nil {
		return nil
	}
	for {
		ts, err := f.p.targets.lookup(ctx, f.up)
		if err == nil {
			if ts = f.p.usableTargets(f.up, ts); len(ts) == 0 {
				err = ErrNoTarget
			}
		}
		if err == nil {
			f.setTargets(ts)
			return nil
		}
		f.log.Warn("upstream has no target to send to", "address", f.up.displayAddress(), "error", err)
		if !f.nextUpstream("no-target") {
			return err
		}
	}
}

// pickCachedTarget is pickTarget for the fast lane: it never waits, and
// reports false when the upstream has no known usable target, so that the
// request continues off the lane.
func (f *forwarding) pickCachedTarget() bool {
	if f.toClient || f.att.targets != nil {
		return true
	}
	ts, ok := f.p.targets.cached(f.up)
	if !ok {
		return false
	}
	if ts = f.p.usableTargets(f.up, ts); len(ts) == 0 {
		return false
	}
	f.setTargets(ts)
	return true
}

// setTargets makes ts the current upstream's targets and the first one the
// next hop.
func (f *forwarding) setTargets(ts []resolve.Target) {
	f.att.targets, f.att.ti = ts, 0
	f.hop = f.up.hopFor(ts[0])
}

// hopFor is the hop of target t of u; an IP literal's is computed once.
func (u *upstream) hopFor(t resolve.Target) hop {
	if u.literal != nil && t == u.literal[0] {
		return u.literalHop
	}
	return hopOf(t)
}

// target is the target the request is at.
func (f *forwarding) target() (resolve.Target, bool) {
	if f.att.ti < len(f.att.targets) {
		return f.att.targets[f.att.ti], true
	}
	return resolve.Target{}, false
}

// canFailover reports whether a failed attempt could move the request on:
// another target of its upstream, or another upstream of its group.
func (f *forwarding) canFailover() bool {
	if f.toClient || f.att.provisional || f.dlg != nil {
		return false
	}
	return f.att.ti+1 < len(f.att.targets) || len(f.att.rest) > 0
}

// attemptTimeout is how long the current attempt waits for a first
// response: FailoverTimeout when it could fail over, else Timer B/F.
func (f *forwarding) attemptTimeout() time.Duration {
	if f.canFailover() {
		return min(f.p.cfg.FailoverTimeout, f.p.cfg.UpstreamTimeout)
	}
	return f.p.cfg.UpstreamTimeout
}

// failoverOn reports whether the final response res ends the attempt and
// moves the request on, and why: a 503 from a target (RFC 3263 §4.3) when
// its upstream has another, or a status of the group's failover list when
// the group has another upstream.
func (f *forwarding) failoverOn(res *sip.Response) (string, bool) {
	return f.failoverOnStatus(res.StatusCode)
}

func (f *forwarding) failoverOnStatus(code int) (string, bool) {
	if f.toClient || f.att.provisional || f.dlg != nil || code < 300 {
		return "", false
	}
	if code == sip.StatusServiceUnavailable && f.att.ti+1 < len(f.att.targets) {
		return "503", true
	}
	if f.att.group != nil && len(f.att.rest) > 0 && f.att.group.failsOverOn(code) {
		return strconv.Itoa(code), true
	}
	return "", false
}

// failover moves the request on after its current attempt failed (why:
// "timeout", "transport-error", or a status; res the response, if any)
// and sends it there as a new client transaction, which it returns. It
// returns false, having sent nothing, when nothing is left to try; the
// caller then answers the client as without failover.
func (f *forwarding) failover(ctx context.Context, why string, res *sip.Response) (sip.ClientTransaction, bool) {
	for {
		if !f.advance(ctx, why, res) {
			return nil, false
		}
		if !f.rebuild() {
			return nil, false
		}
		f.att.answered = false
		f.att.tried++
		tx, err := f.send(f.fwd)
		if err == nil {
			return tx, true
		}
		f.log.Warn("next hop unreachable", "target", f.hop.addr, "error", err)
		why, res = "transport-error", nil
	}
}

// advance moves f to the next target, or the group's next upstream, after
// the current target failed (why, res as for failover); it reports false
// when there is none. A target that failed on its own (no response, a
// transport error, a 503) is avoided for a while by later requests.
func (f *forwarding) advance(ctx context.Context, why string, res *sip.Response) bool {
	if !f.canFailover() {
		return false
	}
	from := f.hop.addr
	targetFailure := why == "timeout" || why == "transport-error" || why == "503"
	if t, ok := f.target(); ok && targetFailure {
		f.p.health.failed(f.up, t, why, retryAfter(res))
	}
	if targetFailure && f.att.ti+1 < len(f.att.targets) {
		f.att.ti++
		f.hop = f.up.hopFor(f.att.targets[f.att.ti])
		// The new target never saw our answers, and a nonce is its
		// server's (RFC 7616 §3.3): the answers computed for the previous
		// target are dropped rather than sent where they would count as a
		// failed authentication; the new target's cached challenges (if
		// any) answer preemptively, and a challenge from it is answered
		// afresh, not taken for rejected credentials.
		f.auth, f.tries, f.pre = nil, nil, preemptState{}
		f.log.Info("failing over to the next target", "reason", why, "from", from, "to", f.hop.addr)
		f.p.cfg.Observer.Failover(f.up.Name, why)
		return true
	}
	// Every target of the upstream failed: it is unreachable, which moves
	// the request to the group's next upstream; a status (503 from its
	// last target included) does so when it is in the group's list.
	if code, err := strconv.Atoi(why); err == nil && !f.att.group.failsOverOn(code) {
		return false
	}
	prev := f.up.Name
	for f.nextUpstream(why) {
		ts, err := f.p.targets.lookup(ctx, f.up)
		if err == nil {
			if ts = f.p.usableTargets(f.up, ts); len(ts) == 0 {
				err = ErrNoTarget
			}
		}
		if err != nil {
			f.log.Warn("upstream of the group has no target", "address", f.up.displayAddress(), "error", err)
			continue
		}
		f.setTargets(ts)
		f.log.Info("failing over to the next upstream of the group", "reason", why, "from_upstream", prev, "to", f.hop.addr)
		f.p.cfg.Observer.Failover(prev, why)
		return true
	}
	return false
}

// nextUpstream makes the group's next upstream the request's, dropping
// everything computed for the previous one: its answers (credentials never
// cross upstreams: the new upstream's challenges are answered with
// credentials looked up for its own server identity), the realms tried and
// the preemptive state. It reports false when the group has none left.
func (f *forwarding) nextUpstream(why string) bool {
	if len(f.att.rest) == 0 {
		return false
	}
	f.up, f.att.rest = f.att.rest[0], f.att.rest[1:]
	f.auth, f.tries, f.pre = nil, nil, preemptState{}
	f.att.targets, f.att.ti = nil, 0
	f.log = f.log.With("failover_upstream", f.up.Name)
	return true
}

// rebuild makes f.fwd the request for the current hop: a client's request
// is built again from what the client sent (our Via, Record-Route and
// Path for the new hop's listener), with the answers kept for the same
// upstream (none after a move to another upstream, then its preemptive
// ones); authproxy's own requests (trunk registrations, hang-ups) are
// re-sent as they were, with a new Via.
func (f *forwarding) rebuild() bool {
	if f.own {
		next := f.fwd.Clone()
		removeFirst(next, "Via")
		if f.auth == nil {
			removeAll(next, "Authorization")
			removeAll(next, "Proxy-Authorization")
		}
		f.p.setHop(next, f.hop)
		f.fwd = next
		return true
	}
	if err := f.buildWithAnswers(); err != nil {
		f.log.Warn("cannot build forwarded request", "error", err)
		return false
	}
	return true
}

// setHop addresses r to h: destination, transport, and the listening
// socket it leaves from.
func (p *Proxy) setHop(r *sip.Request, h hop) {
	r.SetDestination(h.addr)
	r.SetTransport(h.transport)
	r.Laddr = sip.Addr{}
	if h.transport == "UDP" {
		if l := p.listenerFor("UDP", hopAddr(h.addr)); l != nil && !l.ip.IsUnspecified() {
			// Send from the listening socket: the peer then sees the address
			// it can reach us on.
			r.Laddr = sip.Addr{IP: l.ip, Port: l.port}
		}
	}
}

// transactionFailure is how a client transaction that ended without a
// final response failed: "timeout" (Timer B/F) or "transport-error".
func transactionFailure(tx sip.ClientTransaction) string {
	if errors.Is(tx.Err(), sip.ErrTransactionTimeout) {
		return "timeout"
	}
	return "transport-error"
}

// retryAfter is the delay a 503's Retry-After asks for (RFC 3261 §20.33:
// seconds, maybe followed by a comment), 0 when it gives none.
func retryAfter(res *sip.Response) time.Duration {
	if res == nil || res.StatusCode != sip.StatusServiceUnavailable {
		return 0
	}
	h := res.GetHeader("Retry-After")
	if h == nil {
		return 0
	}
	v := strings.TrimSpace(h.Value())
	if i := strings.IndexAny(v, " (;"); i >= 0 {
		v = v[:i]
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 || n > int(maxAvoidFor/time.Second) {
		if err == nil && n > 0 {
			return maxAvoidFor
		}
		return 0
	}
	return time.Duration(n) * time.Second
}
