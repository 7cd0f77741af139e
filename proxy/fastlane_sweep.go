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
	var expired, resend []*laneEntry
	var invites []*inviteTx
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			expired, resend = expired[:0], resend[:0]
			l.mu.Lock()
			for _, e := range l.byBranch {
				if now.UnixNano() > e.deadline.Load() || e.abandons() {
					expired = append(expired, e)
				} else if at := e.resendAt.Load(); at != 0 && now.UnixNano() >= at {
					resend = append(resend, e)
				}
			}
			l.mu.Unlock()
			for _, e := range expired {
				l.timeout(e)
			}
			for _, e := range resend {
				e.timerE()
			}
			invites = l.invites.sweep(now, invites)
		}
	}
}

// timeout ends e's attempt without a response in time: it fails over off
// the lane when it can, else answers 408.
func (l *fastLane) timeout(e *laneEntry) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.waiting && e.abandons() {
		l.abandon(e) // fastlane_stream.go
		return
	}
	if !e.waiting || time.Now().UnixNano() <= e.deadline.Load() {
		return // answered, or sent again after a challenge, meanwhile
	}
	if !e.f.att.answered && e.f.canFailover() {
		l.stopWaiting(e)
		go l.offLane(e, nil, true)
		return
	}
	l.finish(e)
	e.f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
	e.f.end()
}
