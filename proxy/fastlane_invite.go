package proxy

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A UDP client's initial INVITE on the fast lane: its server transaction
// is an inviteTx (invitetx.go), and when its next hop is a UDP target a
// listener's socket reaches (what fastLane.forward checks) the INVITE is
// forwarded as the lane forwards a non-INVITE request, on the goroutine
// that read it, with no client transaction: the lane keeps it waiting
// under our Via branch and does what RFC 3261 §17.1.1 and §16 ask of the
// INVITE's client side.
//
//   - Timer A: the INVITE is retransmitted by the sweeper (the client
//     stops retransmitting at our first provisional response), T1
//     doubling, until any response; Timer B is the attempt's timeout
//     (failover, or UpstreamTimeout).
//   - A 100 stops there (§16.7 step 3) but lets a CANCEL go (§9.1); other
//     provisional responses are relayed; each restarts Timer C (§16.8),
//     whose expiry cancels the INVITE upstream and answers 408.
//   - Every non-2xx final response is ACKed by the lane from the same
//     socket (§17.1.1.3, fastlane_invite_ack.go), again for each of its
//     retransmissions while Timer D runs; a 401/407 is then answered as
//     for a non-INVITE request (fastlane_challenge.go).
//   - A 2xx records its dialog before it is relayed, and the INVITE keeps
//     waiting under its branch for Timer M: the 2xx's retransmissions and
//     other forks' 2xx are relayed (each new dialog recorded) as
//     watch2xxRetransmissions does on sipgo's path. The client's ACK for
//     it is end to end (fastlane_ack.go).
//   - The client's CANCEL (inviteTx answers it 200 and the INVITE 487)
//     cancels the INVITE upstream once a provisional response came; a 2xx
//     crossing it is ACKed and hung up (hangUpUpstream), a challenge after
//     it is not answered.
//
// Anything else goes off the lane to sipgo's client transactions, in a
// goroutine running inviteLoop with the same inviteTx: the first send to
// a next hop the lane cannot reach, and a failover (after the lane ACKed
// the response that triggered it).

// laneInvite is what the lane keeps about an INVITE on it, beyond what a
// laneEntry keeps for any request (e.mu held for all but cancelled).
type laneInvite struct {
	tx          *inviteTx
	provisional bool // the current attempt had a provisional response: a CANCEL may go (§9.1)
	cancelling  bool // the client cancelled, or Timer C fired: no relaying, the INVITE cancelled upstream
	cancelSent  bool
	dialogs     answeredDialogs
	// accepted is set at the first 2xx: the INVITE then waits for Timer
	// M only (atomic: LaneState reads it holding only the lane's lock).
	accepted atomic.Bool
	// cancelled is set by the CANCEL hook, which runs under the server
	// transaction's lock and may not wait for e.mu.
	cancelled atomic.Bool
}

// HandleInvite forwards a UDP client's initial INVITE, whose server
// transaction tx the socket has registered: checked, routed and admitted
// as on sipgo's path, then forwarded on the lane or off it (forward).
func (l *fastLane) HandleInvite(req *sip.Request, tx *inviteTx) {
	e := &laneEntry{key: tx.key, inv: &laneInvite{tx: tx}}
	f := l.p.newForwarding(req, tx)
	e.f, e.tx = f, tx
	begun, forwarded := false, false
	defer func() {
		if r := recover(); r != nil {
			forwarded = false
			f.panicked(r)
		}
		switch {
		case forwarded:
		case begun:
			e.end()
		default:
			tx.handled() // refused by begin: no end to run
		}
	}()
	if !f.begin() {
		return
	}
	begun = true
	tx.OnCancel(func(*sip.Request) {
		e.inv.cancelled.Store(true)
		go l.clientCancelled(e)
	})
	if !f.check() {
		return
	}
	forwarded = l.forward(e, tx.Raw())
}

// end ends e's forwarding: its log line and what begin took; for an
// INVITE, as Proxy.handle does when its handler returns, its source
// forgotten (a CANCEL cancels nothing from then on) and its server
// transaction told.
func (e *laneEntry) end() {
	if e.ended.Swap(true) {
		return // an INVITE's forwarding ends at its first 2xx, its entry later
	}
	e.f.end()
	if e.inv != nil {
		e.f.p.invites.forget(topViaBranch(e.f.req))
		e.inv.tx.handled()
	}
}

// clientCancelled takes the client's CANCEL of e's INVITE (the hook's
// goroutine): the INVITE is cancelled upstream once it may be.
func (l *fastLane) clientCancelled(e *laneEntry) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.waiting && !e.inv.cancelling && !e.inv.accepted.Load() {
		l.startCancelling(e)
	}
}

// startCancelling takes the client's CANCEL (§16.10, e.mu held): the
// client has its 487, the upstream INVITE is cancelled once it may be, and
// its final response awaited for UpstreamTimeout at most.
func (l *fastLane) startCancelling(e *laneEntry) {
	f := e.f
	e.inv.cancelling = true
	f.outcome, f.status, f.replied = "cancelled", sip.StatusRequestTerminated, true
	l.cancelUpstream(e)
	e.deadline.Store(time.Now().Add(l.p.cfg.UpstreamTimeout).UnixNano())
}

// cancelUpstream sends the CANCEL for the INVITE as last sent (f.fwd, our
// Via on top), once, when a provisional response allows it (§9.1; e.mu
// held).
func (l *fastLane) cancelUpstream(e *laneEntry) {
	if e.inv.cancelSent || !e.inv.provisional {
		return
	}
	e.inv.cancelSent = true
	if l.sentInvite(e) {
		e.f.sendCancel(e.f.fwd)
	}
}

// stopTimerA stops the INVITE's retransmissions (e.mu held): a response
// came (§17.1.1.2).
func (e *laneEntry) stopTimerA() {
	e.gap = 0
	e.resendAt.Store(0)
}

// inviteRaw handles a response to e's INVITE read as bytes (e.mu held,
// r scanned from data) and reports whether it did; false leaves it to the
// parser and inviteResponse: a 2xx, a response that fails over, one whose
// To cannot be read for the ACK.
func (l *fastLane) inviteRaw(e *laneEntry, data []byte, r *scannedResponse) bool {
	f := e.f
	switch {
	case e.inv.cancelled.Load() && !e.inv.cancelling, r.status >= 200 && r.status < 300:
		return false
	case e.inv.accepted.Load():
		return true // another fork's failure after a 2xx: nothing to relay
	case r.status < 200:
		if l.inviteProvisional(e, r.status) {
			f.relayRaw(e.tx, data, r)
		}
		return true
	}
	if _, failover := f.failoverOnStatus(r.status); failover && !e.inv.cancelling {
		return false
	}
	to, ok := responseTo(data)
	if !ok || !l.ackFinal(e, to) {
		return false
	}
	l.inviteFinal(e, r.status, func() { f.relayRaw(e.tx, data, r) })
	return true
}

// inviteResponse handles a parsed response to e's INVITE (e.mu held).
func (l *fastLane) inviteResponse(e *laneEntry, res *sip.Response) {
	f := e.f
	if e.inv.cancelled.Load() && !e.inv.cancelling && !e.inv.accepted.Load() {
		// The CANCEL came before this response, its hook's goroutine not
		// yet run: a challenge must not be answered, nor a 2xx relayed.
		l.startCancelling(e)
	}
	switch {
	case res.StatusCode >= 200 && res.StatusCode < 300:
		l.invite2xx(e, res)
		return
	case e.inv.accepted.Load():
		return // a provisional response or another fork's failure after a 2xx
	case res.StatusCode < 200:
		if l.inviteProvisional(e, res.StatusCode) {
			f.relay(res)
		}
		return
	}
	to := ""
	if h := res.To(); h != nil {
		to = h.Value()
	}
	if !l.ackFinal(e, []byte(to)) {
		f.log.Warn("cannot ACK the INVITE's final response", logStatus, res.StatusCode)
	}
	if _, failover := f.failoverOnStatus(res.StatusCode); failover && !e.inv.cancelling {
		l.answered(e)
		l.stopWaiting(e)
		go l.offLane(e, res, false)
		return
	}
	if isChallenge(res) && !f.toClient && !e.inv.cancelling {
		l.answered(e)
		e.inv.provisional = false // the re-send is a new transaction
		l.challenged(e, res)      // fastlane_challenge.go
		return
	}
	l.inviteFinal(e, res.StatusCode, func() { f.relay(res) })
}

// inviteProvisional notes a provisional response to e's INVITE (e.mu
// held) and reports whether to relay it: not a 100 (§16.7 step 3), nor
// anything once cancelling (a provisional response then lets the CANCEL
// go). Timer A stops, Timer C restarts (§16.8).
func (l *fastLane) inviteProvisional(e *laneEntry, status int) bool {
	f := e.f
	e.stopTimerA()
	l.answered(e)
	e.inv.provisional = true
	if status != sip.StatusTrying {
		f.att.provisional = true // the callee may ring: no failover from here on
	}
	if e.inv.cancelling {
		l.cancelUpstream(e)
		return false
	}
	e.deadline.Store(time.Now().Add(l.p.cfg.TimerC).UnixNano())
	return status != sip.StatusTrying
}

// inviteFinal ends e's INVITE with a non-2xx final response, ACKed
// already (e.mu held): relayed (deliver) unless the client has its 487
// (or Timer C's 408).
func (l *fastLane) inviteFinal(e *laneEntry, status int, relay func()) {
	e.stopTimerA()
	l.answered(e)
	if e.inv.cancelling {
		l.finish(e)
		e.end()
		return
	}
	l.deliver(e, status, relay)
}

// invite2xx handles a 2xx to e's INVITE (e.mu held): the first of each
// dialog recorded, then relayed; a 2xx crossing the client's CANCEL
// ACKed and hung up upstream instead. The first enters Accepted: e keeps
// waiting under its branch for Timer M (RFC 6026 §8.4), its forwarding
// ended.
func (l *fastLane) invite2xx(e *laneEntry, res *sip.Response) {
	f, inv := e.f, e.inv
	e.stopTimerA()
	l.answered(e)
	first := !inv.accepted.Load()
	if first {
		inv.accepted.Store(true)
		e.deadline.Store(time.Now().Add(min(sip.Timer_M, sip.T4)).UnixNano())
	}
	if inv.cancelling {
		f.outcome = "cancel-raced-2xx"
		if l.sentInvite(e) {
			f.hangUpUpstream(res)
		}
		if first {
			e.end()
		}
		return
	}
	upCSeq := e.seq
	if f.fwd != nil {
		upCSeq = f.fwd.CSeq().SeqNo
	}
	if !first {
		f.relay2xxAgain(res, &inv.dialogs, f.auth, upCSeq)
		return
	}
	if f.relayFirst2xx(res, &inv.dialogs, upCSeq, inv.cancelled.Load) {
		inv.cancelling = true
		if l.sentInvite(e) {
			f.hangUpUpstream(res)
		}
	}
	e.end()
}

// inviteTimeout handles the expiry of e's deadline (e.mu held): Timer M
// after a 2xx, the wait for the final response after a CANCEL, Timer C
// after a provisional response, else Timer B (failover off the lane when
// the target never answered, else 408).
func (l *fastLane) inviteTimeout(e *laneEntry, now time.Time) {
	if !e.waiting || now.UnixNano() <= e.deadline.Load() {
		return
	}
	f, inv := e.f, e.inv
	switch {
	case inv.accepted.Load():
		l.finish(e)
	case inv.cancelling:
		f.log.Warn("no final response after CANCEL")
		l.finish(e)
		e.end()
	case inv.provisional:
		// Timer C fired: the callee rang but never answered.
		f.outcome = "timer-c"
		inv.cancelling = true
		l.cancelUpstream(e)
		f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timer-c")
		e.deadline.Store(now.Add(l.p.cfg.UpstreamTimeout).UnixNano())
	case !f.att.answered && f.canFailover():
		l.stopWaiting(e)
		go l.offLane(e, nil, true)
	default:
		l.finish(e)
		f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
		e.end()
	}
}

// offLaneInvite forwards e's INVITE with sipgo's client transactions
// (inviteLoop), in the goroutine offLane runs it in: first (res nil, not
// timedOut) or failing over after the lane's attempt failed (res a
// response the lane ACKed, or timedOut).
func (l *fastLane) offLaneInvite(e *laneEntry, res *sip.Response, timedOut bool) {
	f := e.f
	defer e.end()
	defer f.recoverPanic()
	if res == nil && !timedOut {
		if f.pickTarget(f.ctx) && (f.fwd != nil || f.build()) {
			f.sendAndRelay()
		}
		return
	}
	cw := f.watchCancel()
	if cw.fired.Load() {
		f.notSent() // the client has its 487
		return
	}
	why := "timeout"
	if res != nil {
		why, _ = f.failoverOn(res)
	}
	if tx, ok := f.failover(f.ctx, why, res); ok {
		f.inviteLoop(tx, cw)
		return
	}
	if res == nil {
		f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
		return
	}
	f.relay(res)
	f.p.cseq.remove(f.key)
}

// sentInvite makes f.fwd the INVITE as last sent, our Via on top, when it
// went as the client's bytes edited (f.fwd nil): parsed from those bytes,
// addressed to the hop, for the CANCEL (§9.1) and the hang-up of a 2xx
// crossing it (e.mu held). It reports false, logged, when they do not
// parse.
func (l *fastLane) sentInvite(e *laneEntry) bool {
	f := e.f
	if f.fwd != nil {
		return true
	}
	msg, err := l.p.parser.ParseSIP(e.raw)
	inv, ok := msg.(*sip.Request)
	if err != nil || !ok {
		f.log.Warn("cannot parse the INVITE as sent", "error", err)
		return false
	}
	l.p.setHop(inv, f.hop)
	f.fwd = inv
	return true
}

// recordRoute returns our Record-Route header lines for an INVITE sent
// as the client's bytes edited (forwardBytes; §16.6 step 4: the parsed
// copy gets them from buildForward), none for any other request. It
// reports false when the INVITE has Record-Route entries already: ours
// must come first, which appending lines cannot do; the parsed copy
// then goes. The lines are made once per pair of listeners and shared:
// never to be modified (their capacity is their length, so that an
// append copies).
func (l *fastLane) recordRoute(f *forwarding) ([]authAnswer, bool) {
	if f.req.Method != sip.INVITE {
		return nil, true
	}
	if f.req.GetHeader("Record-Route") != nil {
		return nil, false
	}
	top, second := l.p.recordRouteListeners(f.req.Transport(), f.src, f.hop)
	if top == nil {
		return nil, true
	}
	k := [2]*boundListener{top, second}
	l.rrMu.RLock()
	lines, ok := l.rrLines[k]
	l.rrMu.RUnlock()
	if ok {
		return lines, true
	}
	for _, b := range k {
		if b != nil {
			lines = append(lines, authAnswer{header: "Record-Route", value: recordRouteHeader(b).Value()})
		}
	}
	lines = slices.Clip(lines)
	l.rrMu.Lock()
	if l.rrLines == nil {
		l.rrLines = map[[2]*boundListener][]authAnswer{}
	}
	l.rrLines[k] = lines
	l.rrMu.Unlock()
	return lines, true
}
