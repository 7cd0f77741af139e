package proxy

import "time"

// UDPHandOffAbove is the rate above which a UDP listener's read loop hands
// the fast lane's datagrams to workers (udpworkers.go), for tests that run
// both ways.
var UDPHandOffAbove = udpHandOffAbove

// LaneState returns the Via branches the fast lane of p waits on for a
// final response and how many requests it holds, for tests that tell what the
// lane forwards from what it hands to sipgo's transactions.
func LaneState(p *Proxy) (branches []string, requests int) {
	l := p.lane
	l.mu.Lock()
	defer l.mu.Unlock()
	for b, e := range l.byBranch {
		if e.inv != nil && e.inv.accepted.Load() {
			continue // answered: an INVITE waiting for Timer M only
		}
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

// HasDialog reports whether p holds the dialog a client's INVITE (Call-ID
// callID, From tag fromTag) established with the 2xx of To tag toTag.
func HasDialog(p *Proxy, callID, fromTag, toTag string) bool {
	return p.dialogs.peekFromClient(callID, fromTag, toTag, time.Now(), func(*dialog) bool { return true })
}

// LaneAcks returns how many ACKs for INVITEs' non-2xx final responses the
// fast lane of p keeps for Timer D.
func LaneAcks(p *Proxy) int { return p.lane.acks.len() }

// SweepLane runs the lane's timers as its sweeper would at now, for
// tests that skip ahead of them.
func SweepLane(p *Proxy, now time.Time) { p.lane.sweep(now, &sweepBufs{}) }
