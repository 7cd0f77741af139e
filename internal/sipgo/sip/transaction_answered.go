package sip

import (
	"net/netip"
	"sync"
	"time"
)

// answeredStore (authproxy patch) remembers, for Timer J, the final response
// of each non-INVITE server transaction over a UDP listener as the bytes
// sent, so that the transaction itself can end the moment it answered.
// RFC 3261 §17.2.2 keeps the transaction in Completed for Timer J only to
// answer retransmissions of its request with the same response; that needs
// the bytes, the address and the socket, not the transaction (its messages,
// channels, timers and context). A busy proxy completes thousands of
// transactions a second: kept whole for Timer J they were most of its live
// heap, and every GC cycle had to mark them, which is what stretched the
// cycles into tens of milliseconds of halved capacity.
//
// Entries are not timed one by one: each shard keeps answeredGens
// generations of answeredSpan each and drops the oldest generation whole
// when the newest is full, so an answer is kept at least Timer J and less
// than Timer J plus one span, with no timer and no per-entry bookkeeping.
// The shards rotate when used; an idle shard keeps its last answers (at
// most Timer J of traffic) until its next use.
type answeredStore struct {
	span   time.Duration
	shards [txStoreShards]answeredShard
}

// answeredGens is the number of generations per shard: Timer J is split
// into answeredGens-1 spans.
const answeredGens = 5

type answeredShard struct {
	mu      sync.Mutex
	gens    [answeredGens]map[string]answeredTx
	cur     int       // gens[cur] takes new answers
	started time.Time // when gens[cur] started taking them
	_       [40]byte  // keeps neighbouring shards' locks off one cache line
}

// answeredTx is what answering a retransmission takes; the address is a
// value, not a *net.UDPAddr, to keep each answer to one heap object.
type answeredTx struct {
	raw  []byte
	addr netip.AddrPort
	conn *UDPConnection
}

// newAnsweredStore returns a store keeping answers for at least keep.
func newAnsweredStore(keep time.Duration) *answeredStore {
	span := keep / (answeredGens - 1)
	if span <= 0 {
		span = time.Millisecond
	}
	return &answeredStore{span: span}
}

func (s *answeredStore) shard(key string) *answeredShard {
	h := uint32(2166136261) // FNV-1a, as transactionStore
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return &s.shards[h%txStoreShards]
}

// put remembers a for the transaction key.
func (s *answeredStore) put(key string, a answeredTx, now time.Time) {
	sh := s.shard(key)
	sh.mu.Lock()
	sh.rotate(now, s.span)
	m := sh.gens[sh.cur]
	if m == nil {
		m = make(map[string]answeredTx)
		sh.gens[sh.cur] = m
	}
	m[key] = a
	sh.mu.Unlock()
}

// get returns the answer remembered for the transaction key, if any.
func (s *answeredStore) get(key string, now time.Time) (answeredTx, bool) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.rotate(now, s.span)
	for i := range answeredGens {
		if a, ok := sh.gens[(sh.cur-i+answeredGens)%answeredGens][key]; ok {
			return a, true
		}
	}
	return answeredTx{}, false
}

// len counts the answers held (tests).
func (s *answeredStore) len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, m := range sh.gens {
			n += len(m)
		}
		sh.mu.Unlock()
	}
	return n
}

// rotate advances the shard to now: one generation per whole span passed,
// each advance dropping the generation it reuses.
func (sh *answeredShard) rotate(now time.Time, span time.Duration) {
	if sh.started.IsZero() {
		sh.started = now
		return
	}
	n := int(now.Sub(sh.started) / span)
	if n <= 0 {
		return
	}
	if n >= answeredGens {
		// Everything held is older than Timer J.
		clear(sh.gens[:])
		sh.started = now
		return
	}
	for range n {
		sh.cur = (sh.cur + 1) % answeredGens
		sh.gens[sh.cur] = nil
	}
	sh.started = sh.started.Add(time.Duration(n) * span)
}
