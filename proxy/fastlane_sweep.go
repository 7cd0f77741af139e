package proxy

import (
	"context"
	"time"

	"github.com/emiago/sipgo/sip"
)

// The lane's sweeper: one goroutine running every timer of the requests
// the lane holds.

// laneSweep is how often the sweeper looks for requests whose upstream
// has not answered within UpstreamTimeout.
const laneSweep = 100 * time.Millisecond

// run answers 408 for the requests whose upstream did not answer in
// UpstreamTimeout (Timer F), ends those whose stream client went away,
// retransmits those of stream clients (Timer E), and runs the timers of
// the UDP clients' INVITE server transactions (inviteTable.sweep), until
// ctx ends.
func (l *fastLane) run(ctx context.Context) {
	t := time.NewTicker(laneSweep)
	defer t.Stop()
	var b sweepBufs
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			l.sweep(now, &b)
		}
	}
}

// sweepBufs are the sweeper's lists, kept from one sweep to the next.
type sweepBufs struct {
	expired, resend []*laneEntry
	invites         []*inviteTx
}

// sweep runs the timers due at now (run's tick).
func (l *fastLane) sweep(now time.Time, b *sweepBufs) {
	b.expired, b.resend = b.expired[:0], b.resend[:0]
	l.mu.Lock()
	for _, e := range l.byBranch {
		if now.UnixNano() > e.deadline.Load() || e.abandons() {
			b.expired = append(b.expired, e)
		} else if at := e.resendAt.Load(); at != 0 && now.UnixNano() >= at {
			b.resend = append(b.resend, e)
		}
	}
	l.mu.Unlock()
	for _, e := range b.expired {
		l.timeout(e, now)
	}
	for _, e := range b.resend {
		e.timerE()
	}
	clear(b.expired)
	clear(b.resend)
	b.invites = l.invites.sweep(now, b.invites)
	l.acks.sweep(now)
}

// timeout ends e's attempt without a response in time: it fails over off
// the lane when it can, else answers 408.
func (l *fastLane) timeout(e *laneEntry, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inv != nil {
		l.inviteTimeout(e, now) // fastlane_invite.go
		return
	}
	if e.waiting && e.abandons() {
		l.abandon(e) // fastlane_stream.go
		return
	}
	if !e.waiting || now.UnixNano() <= e.deadline.Load() {
		return // answered, or sent again after a challenge, meanwhile
	}
	if !e.f.att.answered && e.f.canFailover() {
		l.stopWaiting(e)
		go l.offLane(e, nil, true)
		return
	}
	l.finish(e)
	e.f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
	e.end()
}
