package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// cancelWatch tells an INVITE's forwarding that the client cancelled it
// (RFC 3261 §9.2). sipgo answers the CANCEL (200) and the INVITE (487) to
// the client itself and calls the hook under its transaction lock, before
// it writes the 487; the hook only signals.
type cancelWatch struct {
	signal chan struct{} // receives one value when the CANCEL arrives
	fired  atomic.Bool   // set before signal is sent; read from sipgo's hooks too
}

// watchCancel starts watching f.tx for the client's CANCEL. It must run
// before anything goes upstream: sipgo keeps no record of a CANCEL that
// arrived before a hook was registered, other than the transaction's
// error, so a CANCEL received while the request was being checked and
// built is found here, and the INVITE is then not sent at all.
func (f *forwarding) watchCancel() *cancelWatch {
	w := &cancelWatch{signal: make(chan struct{}, 1)}
	hook := func(*sip.Request) {
		w.fired.Store(true)
		select {
		case w.signal <- struct{}{}:
		default:
		}
	}
	if !f.tx.OnCancel(hook) {
		// sipgo takes no hook once the transaction is cancelled (its 487
		// sent) or has ended (the client is gone): either way the INVITE is
		// not to be sent any more.
		hook(nil)
	}
	return w
}

// inviteLoop relays the responses to an INVITE until the client has its
// final response, answering challenges, honouring CANCEL and Timer C, and
// recording the dialogs that 2xx responses establish.
func (f *forwarding) inviteLoop(clTx sip.ClientTransaction, cw *cancelWatch) {
	defer f.rememberNon2xxFinal()
	cancelled, isCancelled := cw.signal, &cw.fired
	answered := &answeredDialogs{}
	f.watch2xxRetransmissions(clTx, isCancelled, answered)

	timer := time.NewTimer(f.attemptTimeout())
	defer timer.Stop()
	provisional := false // the current upstream INVITE had a provisional response
	cancelSent := false
	cancelling := false
	clientDone := f.tx.Done()

	cancelUpstream := func() {
		if cancelSent || !provisional {
			return // §9.1: a CANCEL waits for a provisional response
		}
		cancelSent = true
		f.sendCancel(f.fwd)
	}
	// next moves the INVITE to the next target or upstream after the
	// current attempt failed (failover.go); sipgo has ACKed a non-2xx.
	next := func(why string, res *sip.Response) bool {
		clTx.Terminate()
		tx, ok := f.failover(f.ctx, why, res)
		if ok {
			clTx, provisional = tx, false
			f.watch2xxRetransmissions(clTx, isCancelled, answered)
			resetTimer(timer, f.attemptTimeout())
		}
		return ok
	}
	// startCancelling takes the client's CANCEL (§16.10): the client has
	// its 487, the upstream INVITE is cancelled once it may be.
	startCancelling := func() {
		cancelling = true
		clientDone = nil // the server transaction now ends on its own
		f.outcome = "cancelled"
		f.status = sip.StatusRequestTerminated
		f.replied = true
		cancelUpstream()
		// Bound the wait for the upstream's final response.
		resetTimer(timer, f.p.cfg.UpstreamTimeout)
	}
	for {
		select {
		case <-cancelled:
			if !cancelling {
				startCancelling()
			}

		case res := <-clTx.Responses():
			if f.p.misdirectedOnStream(res) {
				continue
			}
			f.att.answered = true
			if !cancelling && isCancelled.Load() {
				// The CANCEL came before this response, though select
				// picked the response first: a challenge must not be
				// answered, nor a 2xx relayed, for a cancelled INVITE.
				startCancelling()
			}
			if res.IsProvisional() {
				provisional = true
				if res.StatusCode != sip.StatusTrying {
					f.att.provisional = true // the callee may ring: no failover from here on
				}
				if cancelling {
					cancelUpstream()
					continue
				}
				if res.StatusCode != sip.StatusTrying {
					// §16.7 step 3: a 100 is not forwarded; sipgo sent ours.
					f.relay(res)
				}
				// §16.8 Timer C: a provisional response restarts it.
				resetTimer(timer, f.p.cfg.TimerC)
				continue
			}
			if cancelling {
				if res.IsSuccess() {
					// The 2xx crossed the CANCEL. The client already has
					// its 487, so no one else will end this call: ACK it and
					// hang up upstream (§16.10 leaves this to the UAC, which
					// sipgo has made impossible).
					f.outcome = "cancel-raced-2xx"
					f.hangUpUpstream(res)
				}
				// A 401/407 is not answered after a CANCEL (the INVITE
				// client transaction has ACKed it); a 487 is expected.
				return
			}
			if why, ok := f.failoverOn(res); ok && next(why, res) {
				continue
			}
			if isChallenge(res) && !f.toClient {
				tx, err := f.answer(res)
				if err != nil {
					f.log.Warn("upstream unreachable on retry", "error", err)
					if next("transport-error", nil) {
						continue
					}
					f.unreachable()
					return
				}
				if tx != nil {
					clTx = tx
					provisional = false
					f.watch2xxRetransmissions(clTx, isCancelled, answered)
					resetTimer(timer, f.p.cfg.UpstreamTimeout)
					continue
				}
			}
			if res.IsSuccess() {
				if f.relayFirst2xx(res, answered, f.fwd.CSeq().SeqNo, isCancelled.Load) {
					f.hangUpUpstream(res) // the client has a 487 instead, as above
				}
				// Keep the client transaction: sipgo hands 2xx
				// retransmissions and forked 2xx to the hook until Timer M.
				return
			}
			f.relay(res)
			if _, toTag := tags(f.req); toTag == "" {
				// No dialog came of this INVITE: forget its CSeq offset.
				f.p.cseq.remove(f.key)
			}
			clTx.Terminate()
			return

		case <-clTx.Done():
			if cancelling {
				return
			}
			why := transactionFailure(clTx)
			if (!f.att.answered || why == "transport-error") && next(why, nil) {
				continue
			}
			if why == "timeout" {
				f.ended(endTimeout)
				return
			}
			f.log.Warn("transaction failed", "error", clTx.Err())
			f.ended(endUnreachable)
			return

		case <-timer.C:
			if cancelling {
				f.log.Warn("no final response after CANCEL")
				clTx.Terminate()
				return
			}
			if provisional {
				// Timer C fired: the callee rang but never answered.
				f.outcome = "timer-c"
				cancelling = true
				cancelUpstream()
				f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timer-c")
				resetTimer(timer, f.p.cfg.UpstreamTimeout)
				continue
			}
			if !f.att.answered && next("timeout", nil) {
				continue
			}
			clTx.Terminate()
			f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
			return

		case <-clientDone:
			// The client side is gone without a CANCEL (transport error).
			clientDone = nil
			cancelling = true
			f.outcome = "client-gone"
			cancelUpstream()
			resetTimer(timer, f.p.cfg.UpstreamTimeout)
		}
	}
}

// rememberNon2xxFinal notes the client's INVITE when its final response
// was not a 2xx (relayed, 487 after its CANCEL, or authproxy's own 408 or
// 503) and it came over a reliable transport: there sipgo ends the server
// transaction when the handler returns, and the client's ACK for that
// final, which may come later, reaches handleAck, which must absorb it (the
// upstream leg was ACKed hop by hop by our client transaction, RFC 3261
// §17.1.1.3), not forward it as a stray ACK.
func (f *forwarding) rememberNon2xxFinal() {
	if f.status < 300 || f.req.Transport() == "UDP" {
		return
	}
	if v := f.req.Via(); v != nil {
		if b, ok := v.Params.Get("branch"); ok {
			f.p.finals.add(b, time.Now().Add(sip.Timer_M))
		}
	}
}

// forgetDialog undoes recordDialog for a 2xx the client never got (its
// CANCEL won), for an initial INVITE; a re-INVITE's dialog stays.
func (f *forwarding) forgetDialog(res *sip.Response) {
	if f.dlg != nil {
		return
	}
	fromTag, _ := tags(f.req)
	toTag := ""
	if to := res.To(); to != nil {
		toTag, _ = to.Params.Get("tag")
	}
	k := dialogKey{callID: f.key.callID, callerTag: fromTag, calleeTag: toTag}
	if f.toClient {
		k.callerTag, k.calleeTag = toTag, fromTag // as recordInboundDialog keys it
	}
	f.p.dialogs.remove(k)
}

// watch2xxRetransmissions relays the 2xx responses that sipgo does not put
// on Responses(): retransmissions of the 2xx and 2xx from other forks
// (other To tags), which establish dialogs of their own. The hook runs on
// sipgo's goroutine; it captures what it needs now.
func (f *forwarding) watch2xxRetransmissions(clTx sip.ClientTransaction, cancelled *atomic.Bool, answered *answeredDialogs) {
	auth := f.auth
	upCSeq := f.fwd.CSeq().SeqNo
	clTx.OnRetransmission(func(res *sip.Response) {
		if !res.IsSuccess() {
			return
		}
		if cancelled.Load() {
			f.hangUpUpstream(res)
			return
		}
		f.relay2xxAgain(res, answered, auth, upCSeq)
	})
}

// relayFirst2xx relays the first 2xx to the INVITE (upCSeq the CSeq
// number the upstream saw), its dialog recorded before it goes (so that
// the client's ACK finds the INVITE's CSeq and credentials), and the
// INVITE remembered for the client's retransmissions (Timer B, 64×T1,
// from its first send). It reports true when the client's CANCEL
// (cancelled) took the server transaction between the 2xx's arrival and
// its relay: the client has a 487, the dialog is forgotten again, and the
// caller hangs the call up upstream.
func (f *forwarding) relayFirst2xx(res *sip.Response, answered *answeredDialogs, upCSeq uint32, cancelled func() bool) (raced bool) {
	auth := f.auth
	answered.recordFirst(res, func() { f.recordDialog(res, auth, upCSeq) })
	if err := f.relay(res); err != nil && cancelled() {
		f.forgetDialog(res)
		f.outcome, f.status = "cancel-raced-2xx", sip.StatusRequestTerminated
		return true
	}
	if k, ok := acceptedKey(f.req); ok {
		f.p.accepted.add(k, time.Now().Add(64*sip.T1))
	}
	return false
}

// relay2xxAgain relays a 2xx after the first (a retransmission, or
// another fork's, whose dialog is recorded first: RFC 3261 §16.7 step 5
// forwards every 2xx), answered with auth at upCSeq.
func (f *forwarding) relay2xxAgain(res *sip.Response, answered *answeredDialogs, auth []authAnswer, upCSeq uint32) {
	answered.recordFirst(res, func() { f.recordDialog(res, auth, upCSeq) })
	f.prepareRelay(res)
	if err := f.tx.Respond(res); err != nil {
		f.log.Debug("cannot relay 2xx retransmission", "error", err)
	}
}

// answeredDialogs are the dialogs (To tags) an INVITE's 2xx responses
// established, each recorded in the dialog table at its first 2xx only: a
// retransmission of the 2xx that arrives after the dialog's BYE (the
// callee sent it just before the BYE reached it) is relayed, but must not
// bring the ended dialog back. A 2xx with a new To tag is another fork's
// dialog.
type answeredDialogs struct {
	mu   sync.Mutex
	tags map[string]bool
}

// recordFirst runs record if res is the first 2xx of its dialog, and
// notes it. The first 2xx and its retransmission may arrive together, one
// through Responses(), one through the retransmission hook: whichever
// loses waits here until the winner has recorded the dialog, so that
// neither relays a 2xx (and the client ACKs it) before the dialog holds
// the INVITE's CSeq and credentials for that ACK.
func (a *answeredDialogs) recordFirst(res *sip.Response, record func()) {
	tag := ""
	if to := res.To(); to != nil {
		tag, _ = to.Params.Get("tag")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tags[tag] {
		return
	}
	if a.tags == nil {
		a.tags = map[string]bool{}
	}
	a.tags[tag] = true
	record()
}

// recordDialog remembers the dialog a 2xx to an INVITE establishes (or
// refreshes it, for a re-INVITE): the credentials it was accepted with, for
// the ACK, and where the client is, for requests from the upstream.
func (f *forwarding) recordDialog(res *sip.Response, auth []authAnswer, upCSeq uint32) {
	if f.toClient {
		f.recordInboundDialog(res) // a call from the upstream to a registered client
		return
	}
	fromTag, _ := tags(f.req)
	toTag := ""
	if to := res.To(); to != nil {
		toTag, _ = to.Params.Get("tag")
	}
	d := &dialog{
		key:             dialogKey{callID: f.key.callID, callerTag: fromTag, calleeTag: toTag},
		up:              f.up,
		clientTransport: f.req.Transport(),
		clientAddr:      f.req.Source(),
		inviteAuth:      auth,
		inviteCSeq:      f.req.CSeq().SeqNo,
		inviteUpCSeq:    upCSeq,
		inviteBranch:    hashKey(topViaBranch(f.req)),
		lastUse:         time.Now(),
	}
	if t, ok := f.target(); ok {
		d.upstreamTarget, d.upstreamAddr = t, t.Addr.Addr().Unmap()
	}
	if f.dlg != nil {
		// A re-INVITE keeps the client's recorded address and the
		// upstream side of the dialog.
		d.clientTransport, d.clientAddr = f.dlg.clientTransport, f.dlg.clientAddr
		d.upstreamTarget, d.upstreamAddr = f.dlg.upstreamTarget, f.dlg.upstreamAddr
	}
	f.p.dialogs.put(d)
}

// hangUpUpstream ends a call the client can no longer see (its INVITE was
// cancelled): ACK the 2xx with the INVITE's credentials, then BYE, answering
// a challenge to the BYE like any other.
func (f *forwarding) hangUpUpstream(res *sip.Response) {
	inv := f.fwd
	mk := func(method sip.RequestMethod, seq uint32) *sip.Request {
		target := inv.Recipient
		if c := res.Contact(); c != nil {
			target = c.Address
		}
		r := sip.NewRequest(method, *target.Clone())
		// The UAC's route set is the 2xx's Record-Route in reverse order
		// (§12.1.2), minus our own entries.
		rr := res.GetHeaders("Record-Route")
		for i := len(rr) - 1; i >= 0; i-- {
			if h, ok := rr[i].(*sip.RecordRouteHeader); ok && !f.p.isOwnURI(h.Address) {
				r.AppendHeader(&sip.RouteHeader{Address: *h.Address.Clone()})
			}
		}
		mf := sip.MaxForwardsHeader(70)
		r.AppendHeader(&mf)
		r.AppendHeader(sip.HeaderClone(inv.From()))
		r.AppendHeader(sip.HeaderClone(res.To()))
		r.AppendHeader(sip.HeaderClone(inv.CallID()))
		r.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: method})
		r.SetBody(nil)
		r.SetTransport(inv.Transport())
		r.SetDestination(inv.Destination())
		r.Laddr = inv.Laddr
		return r
	}
	ack := mk(sip.ACK, inv.CSeq().SeqNo)
	appendAuth(ack, f.auth)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.tlsReady(ctx); err != nil {
		f.log.Warn("cannot ACK the 2xx that raced a CANCEL", "error", err)
	} else if err := f.p.client.WriteRequest(ack, f.p.addVia(f.hop.transport)); err != nil {
		f.log.Warn("cannot ACK the 2xx that raced a CANCEL", "error", err)
	}
	bye := mk(sip.BYE, inv.CSeq().SeqNo+1)
	g := &forwarding{
		p: f.p, rt: f.rt, log: f.log.With("hangup", true), ctx: context.Background(), own: true,
		origin:      origin{req: bye, tx: discardTx{}},
		destination: destination{hop: f.hop, up: f.up},
		answering:   answering{user: f.user, key: f.key, fwd: bye},
	}
	if t, ok := f.target(); ok {
		g.att.targets = []resolve.Target{t} // where the 2xx came from, and nowhere else
	}
	go g.hangUp()
}

// hangUp sends g.fwd (a BYE authproxy originates) and answers challenges to
// it, until a final response.
func (g *forwarding) hangUp() {
	tx, err := g.send(g.fwd)
	if err != nil {
		g.log.Warn("cannot send BYE upstream", "error", err)
		return
	}
	for {
		select {
		case res := <-tx.Responses():
			if res.IsProvisional() {
				continue
			}
			if res.StatusCode == sip.StatusUnauthorized || res.StatusCode == sip.StatusProxyAuthRequired {
				next, err := g.answer(res)
				if err == nil && next != nil {
					tx = next
					continue
				}
			}
			g.log.Info("hung up upstream after CANCEL race", logStatus, res.StatusCode)
			return
		case <-tx.Done():
			g.log.Warn("BYE upstream got no final response", "error", tx.Err())
			return
		}
	}
}
