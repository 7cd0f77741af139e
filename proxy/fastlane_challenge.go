package proxy

import (
	"fmt"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Answering a 401/407 on the fast lane (RFC 3261 §22.2, §22.3). The
// authenticated re-send is a new transaction to the same UDP target: it
// leaves from the lane's socket with a new Via branch, and the request
// keeps waiting on the lane under that branch, its entry and key kept. The
// client's retransmissions are sent on as the re-send (its credentials and
// CSeq, its branch), the final response is relayed as bytes, a further
// challenge is answered the same way, and Timer F is the sweeper's. The
// decisions and the bookkeeping (which challenges are answered, when the
// credentials were rejected, the challenge budget, nonce counts, the
// preemptive cache, metrics) are prepareAnswer's, shared with the usual
// path.

// challenged handles a 401/407 to e's request waiting on the lane (e.mu
// held, the response's attempt answered): it sends the authenticated
// re-send on the lane, or relays the challenge as the final response when
// it is not to be answered (no usable challenge, credentials rejected,
// budget spent), or answers 503 when the re-send cannot be sent.
func (l *fastLane) challenged(e *laneEntry, res *sip.Response) {
	f := e.f
	var sent *sip.Request // nil: f.fwd, the parsed copy sent
	if f.fwd == nil {
		// Sent as the client's bytes edited: the re-send is made from
		// the parsed form of what the upstream received.
		var err error
		if sent, err = l.buildSent(e); err != nil {
			f.log.Warn("cannot build forwarded request", "error", err)
			l.deliver(e, res.StatusCode, func() { f.relay(res) })
			return
		}
	}
	next, err := f.prepareAnswer(res, sent)
	if err == nil && next != nil {
		err = l.resend(e, next)
	}
	if err != nil {
		l.finish(e)
		f.log.Warn("upstream unreachable on retry", "error", err)
		f.unreachable()
		e.end()
		return
	}
	if next == nil {
		l.deliver(e, res.StatusCode, func() { f.relay(res) })
	}
}

// resend sends next, the authenticated re-send of e's request (e.mu
// held), on the lane: our Via on top with a new branch, pinned to the
// target, serialised into e.raw for the client's retransmissions to go on
// as, and waited on under that branch instead of the challenged one. The
// wait is Timer F from now: the target has answered. On an error the
// entry still waits under one of its branches; the caller finishes it.
func (l *fastLane) resend(e *laneEntry, next *sip.Request) error {
	f := e.f
	branch := sip.GenerateBranchN(16)
	next.PrependHeader(l.p.newVia(f.hop.transport, hopAddr(f.hop.addr), branch))
	if err := l.p.pinRequest(branch, f.req.Method, f.hop.transport, f.hop.addr); err != nil {
		return fmt.Errorf("answer challenge: %w", err)
	}
	e.raw = []byte(next.String())
	e.deadline.Store(time.Now().Add(l.p.cfg.UpstreamTimeout).UnixNano())
	// Findable under the new branch before the re-send leaves: its
	// response may be read by another worker before WriteTo returns (and
	// waits for e.mu).
	l.swapBranch(e, branch)
	e.newAttempt()
	if err := e.send(); err != nil {
		return fmt.Errorf("answer challenge: %w", err)
	}
	return nil
}

// swapBranch makes branch the one e waits under (e.mu held): the
// challenged attempt's branch forgotten and its pin released, as
// stopWaiting does, the new one registered.
func (l *fastLane) swapBranch(e *laneEntry, branch string) {
	old := e.branch
	l.mu.Lock()
	delete(l.byBranch, old)
	l.byBranch[branch] = e
	e.branch = branch
	l.mu.Unlock()
	l.p.pins.release(old, e.inv != nil, time.Now())
}

// buildSent is the parsed form of a request the lane sent as bytes,
// without our Via, for prepareAnswer to make the re-send from: built as
// buildForward builds it, with the CSeq number that was sent. The answers
// sent with it, if any, are in f.auth, which prepareAnswer reads.
func (l *fastLane) buildSent(e *laneEntry) (*sip.Request, error) {
	fwd, err := e.f.buildForward()
	if err != nil {
		return nil, fmt.Errorf("build sent request: %w", err)
	}
	fwd.CSeq().SeqNo = e.seq
	return fwd, nil
}
