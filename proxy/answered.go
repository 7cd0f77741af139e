package proxy

import (
	"bytes"
	"net/netip"
	"sync"
	"time"
)

// answeredStore remembers, for Timer J, the final response the fast lane
// sent to each request it took on one UDP socket, as the bytes sent, so
// that a retransmission of the request is answered with them again (RFC
// 3261 §17.2.2: a non-INVITE server transaction stays Completed for Timer
// J only for that). It needs the bytes and the address, not a
// transaction: kept whole for Timer J, thousands of transactions a second
// were most of a busy proxy's live heap, and every GC cycle had to mark
// them.
//
// Entries are not timed one by one: each shard keeps answeredGens
// generations of answeredSpan each and drops the oldest generation whole
// when the newest is full, so an answer is kept at least Timer J and less
// than Timer J plus one span, with no timer and no per-entry bookkeeping.
// The shards rotate when used; an idle shard keeps its last answers (at
// most Timer J of traffic) until its next use.
type answeredStore struct {
	span   time.Duration
	shards [answeredShards]answeredShard
}

// answeredShards spreads the store's lock: the socket's read loop puts
// and gets, and so do the goroutines answering off the lane.
const answeredShards = 16

// answeredGens is the number of generations per shard: Timer J is split
// into answeredGens-1 spans.
const answeredGens = 5

type answeredShard struct {
	mu      sync.Mutex
	gens    [answeredGens]answeredGen
	cur     int       // gens[cur] takes new answers
	started time.Time // when gens[cur] started taking them
	_       [40]byte  // keeps neighbouring shards' locks off one cache line
}

// answeredGen holds one span's answers with no pointer per answer: each
// key and response is appended to a slab (a few large byte slices) and the
// index maps a hash of the key to where they are. Neither the index's keys
// nor its values hold pointers, so the garbage collector neither scans it
// nor marks an object per answer: tens of thousands of answers cost a GC
// cycle about as much as a handful.
type answeredGen struct {
	index map[uint64]answerRef
	slabs [][]byte
}

type answerRef struct {
	slab, off      uint32
	keyLen, rawLen uint32
	addr           [16]byte // IPv4 in its first 4 bytes when is4
	port           uint16
	is4            bool
}

// answeredSlabMin and answeredSlabMax bound the size of a slab: a
// generation's first slab is small (an idle proxy's answers fit one), each
// next one twice the last.
const (
	answeredSlabMin = 4 << 10
	answeredSlabMax = 256 << 10
)

// newAnsweredStore returns a store keeping answers for at least keep.
func newAnsweredStore(keep time.Duration) *answeredStore {
	span := keep / (answeredGens - 1)
	if span <= 0 {
		span = time.Millisecond
	}
	return &answeredStore{span: span}
}

// hashKey is FNV-1a, 64 bits; shards are picked from its low bits.
func hashKey[T string | []byte](key T) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return h
}

// put remembers raw, sent to addr, for the transaction key. The bytes of
// raw are copied.
func (s *answeredStore) put(key string, raw []byte, addr netip.AddrPort, now time.Time) {
	ref := answerRef{keyLen: uint32(len(key)), rawLen: uint32(len(raw)), port: addr.Port()}
	ip := addr.Addr().Unmap()
	if ip.Is4() {
		ref.is4 = true
		v4 := ip.As4()
		copy(ref.addr[:], v4[:])
	} else {
		ref.addr = ip.As16()
	}
	h := hashKey(key)
	sh := &s.shards[h%answeredShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.rotate(now, s.span)
	g := &sh.gens[sh.cur]
	need := len(key) + len(raw)
	last := len(g.slabs) - 1
	if last < 0 || cap(g.slabs[last])-len(g.slabs[last]) < need {
		size := answeredSlabMin
		if last >= 0 {
			size = min(2*cap(g.slabs[last]), answeredSlabMax)
		}
		g.slabs = append(g.slabs, make([]byte, 0, max(size, need)))
		last++
	}
	ref.slab, ref.off = uint32(last), uint32(len(g.slabs[last]))
	g.slabs[last] = append(append(g.slabs[last], key...), raw...)
	if g.index == nil {
		g.index = make(map[uint64]answerRef)
	}
	g.index[h] = ref // a hash collision replaces the older answer
}

// get returns the answer remembered for the transaction key and where it
// went, if any. The bytes are a copy.
func (s *answeredStore) get(key string, now time.Time) ([]byte, netip.AddrPort, bool) {
	h := hashKey(key)
	sh := &s.shards[h%answeredShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.rotate(now, s.span)
	for i := range answeredGens {
		g := &sh.gens[(sh.cur-i+answeredGens)%answeredGens]
		ref, ok := g.index[h]
		if !ok {
			continue
		}
		b := g.slabs[ref.slab][ref.off : ref.off+ref.keyLen+ref.rawLen]
		if string(b[:ref.keyLen]) != key {
			break
		}
		var ip netip.Addr
		if ref.is4 {
			ip = netip.AddrFrom4([4]byte(ref.addr[:4]))
		} else {
			ip = netip.AddrFrom16(ref.addr)
		}
		return bytes.Clone(b[ref.keyLen:]), netip.AddrPortFrom(ip, ref.port), true
	}
	return nil, netip.AddrPort{}, false
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
		sh.gens[sh.cur] = answeredGen{}
	}
	sh.started = sh.started.Add(time.Duration(n) * span)
}
