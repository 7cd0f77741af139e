package tcpguard

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// Refusal is why Admission refused a connection (NotRefused: admitted).
type Refusal uint8

// The refusals.
const (
	NotRefused Refusal = iota
	// SourceDenied: no client group admits the source.
	SourceDenied
	// TotalLimit: MaxConns client connections are open.
	TotalLimit
	// PerSourceLimit: MaxConnsPerSource are open from the source.
	PerSourceLimit
)

// Admission counts the connections open and admits a new one against the
// caps on client connections, in total and per source address; upstreams
// are exempt (a flood of clients must not lock out the PBX). A Guard and
// the WebSocket gate each hold one for all their listeners.
type Admission struct {
	classify                    func(netip.Addr) Peer
	maxConns, maxConnsPerSource int // 0: no cap

	open atomic.Int64 // every connection open

	mu       sync.Mutex
	clients  int                // client connections open
	bySource map[netip.Addr]int // client connections open per source
}

// NewAdmission returns an Admission that tells peers apart with classify
// (nil: every source is a client) and caps client connections at
// maxConns in total and maxConnsPerSource per address (0: no cap).
func NewAdmission(classify func(netip.Addr) Peer, maxConns, maxConnsPerSource int) *Admission {
	return &Admission{classify: classify, maxConns: maxConns, maxConnsPerSource: maxConnsPerSource, bySource: map[netip.Addr]int{}}
}

// Admit decides whether a connection from src is served: the peer kind,
// or Refused and why. An admitted connection is counted until Release.
func (a *Admission) Admit(src netip.Addr) (Peer, Refusal) {
	peer := Client
	if a.classify != nil {
		peer = a.classify(src)
	}
	switch peer {
	case Refused:
		return peer, SourceDenied
	case Upstream:
		a.open.Add(1)
		return peer, NotRefused
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.maxConns > 0 && a.clients >= a.maxConns {
		return Refused, TotalLimit
	}
	if a.maxConnsPerSource > 0 && a.bySource[src] >= a.maxConnsPerSource {
		return Refused, PerSourceLimit
	}
	a.clients++
	a.bySource[src]++
	a.open.Add(1)
	return peer, NotRefused
}

// Release undoes an Admit once the connection is closed.
func (a *Admission) Release(src netip.Addr, peer Peer) {
	a.open.Add(-1)
	if peer != Client {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.clients--
	if n := a.bySource[src] - 1; n > 0 {
		a.bySource[src] = n
	} else {
		delete(a.bySource, src)
	}
}

// Open is the number of connections open now, clients and upstreams.
func (a *Admission) Open() int { return int(a.open.Load()) }
