package proxy

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
