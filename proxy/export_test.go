package proxy

import "time"

// UDPHandOffAbove is the rate above which a UDP listener's read loop hands
// the fast lane's datagrams to workers (udpworkers.go), for tests that run
// both ways.
var UDPHandOffAbove = udpHandOffAbove

// LaneState returns the Via branches the fast lane of p waits on for a
// response and how many requests it holds, for tests that tell what the
// lane forwards from what it hands to sipgo's transactions.
func LaneState(p *Proxy) (branches []string, requests int) {
	l := p.lane
	l.mu.Lock()
	defer l.mu.Unlock()
	for b := range l.byBranch {
		branches = append(branches, b)
	}
	return branches, len(l.byKey)
}

// SipgoAcks returns how many ACKs sipgo's handler got on p: those the UDP
// listeners' sockets did not forward themselves.
func SipgoAcks(p *Proxy) int64 { return p.sipgoAcks.Load() }

// LaneInvites returns how many INVITE server transactions the fast lane
// of p holds (invitetx.go).
func LaneInvites(p *Proxy) int { return p.lane.invites.len() }

// SweepLaneInvites runs the timers of p's lane INVITE transactions as
// the sweeper would at now, for tests that skip ahead of them.
func SweepLaneInvites(p *Proxy, now time.Time) { p.lane.invites.sweep(now, nil) }
