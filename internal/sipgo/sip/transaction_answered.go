package sip

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
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

	// conns are the sockets answers go out on (a proxy's few listeners),
	// referred to by index; copied on write, read without a lock.
	connsMu sync.Mutex
	conns   atomic.Pointer[[]*UDPConnection]
}

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
	conn           uint16 // index in answeredStore.conns
}

// answeredSlabMin and answeredSlabMax bound the size of a slab: a
// generation's first slab is small (an idle proxy's answers fit one), each
// next one twice the last.
const (
	answeredSlabMin = 4 << 10
	answeredSlabMax = 256 << 10
)

// answeredTx is what answering a retransmission takes.
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

// hashKey is FNV-1a, 64 bits: the one hash of the patched stores and the
// UDP parse workers (authproxy patch); shards are picked from its low bits.
func hashKey[T string | []byte](key T) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return h
}

func (s *answeredStore) connIndex(c *UDPConnection) (uint16, bool) {
	if conns := s.conns.Load(); conns != nil {
		for i, have := range *conns {
			if have == c {
				return uint16(i), true
			}
		}
	}
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	var conns []*UDPConnection
	if p := s.conns.Load(); p != nil {
		conns = *p
	}
	for i, have := range conns {
		if have == c {
			return uint16(i), true
		}
	}
	if len(conns) >= 1<<16 {
		return 0, false
	}
	next := append(conns[:len(conns):len(conns)], c)
	s.conns.Store(&next)
	return uint16(len(next) - 1), true
}

func (s *answeredStore) conn(i uint16) *UDPConnection { return (*s.conns.Load())[i] }

// put remembers a for the transaction key. The bytes of a.raw are copied.
func (s *answeredStore) put(key string, a answeredTx, now time.Time) {
	ci, ok := s.connIndex(a.conn)
	if !ok {
		return
	}
	ref := answerRef{keyLen: uint32(len(key)), rawLen: uint32(len(a.raw)), port: a.addr.Port(), conn: ci}
	ip := a.addr.Addr()
	if ip.Is4() {
		ref.is4 = true
		v4 := ip.As4()
		copy(ref.addr[:], v4[:])
	} else {
		ref.addr = ip.As16()
	}
	h := hashKey(key)
	sh := &s.shards[h%txStoreShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.rotate(now, s.span)
	g := &sh.gens[sh.cur]
	need := len(key) + len(a.raw)
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
	g.slabs[last] = append(append(g.slabs[last], key...), a.raw...)
	if g.index == nil {
		g.index = make(map[uint64]answerRef)
	}
	g.index[h] = ref // a hash collision replaces the older answer
}

// get returns the answer remembered for the transaction key, if any. Its
// raw bytes are a copy.
func (s *answeredStore) get(key string, now time.Time) (answeredTx, bool) {
	h := hashKey(key)
	sh := &s.shards[h%txStoreShards]
	sh.mu.Lock()
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
		raw := bytes.Clone(b[ref.keyLen:])
		sh.mu.Unlock()
		var ip netip.Addr
		if ref.is4 {
			ip = netip.AddrFrom4([4]byte(ref.addr[:4]))
		} else {
			ip = netip.AddrFrom16(ref.addr)
		}
		return answeredTx{raw: raw, addr: netip.AddrPortFrom(ip, ref.port), conn: s.conn(ref.conn)}, true
	}
	sh.mu.Unlock()
	return answeredTx{}, false
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

// sendAndKeep sends res, the final response of the non-INVITE request
// whose server transaction key is key, on the UDP listener conn, and keeps
// the bytes sent to answer the request's retransmissions (authproxy patch:
// ended server transactions, handOver, and LiteServerTx, patch 11).
func (s *answeredStore) sendAndKeep(key string, conn *UDPConnection, res *Response) error {
	buf := bufPool.Get().(*bytes.Buffer)
	defer bufPool.Put(buf)
	buf.Reset()
	addr, err := conn.writeMsgBuf(res, buf)
	if err != nil {
		return err
	}
	// net.IP keeps IPv4 in 16 bytes; put copies the bytes.
	ap := addr.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	s.put(key, answeredTx{raw: buf.Bytes(), addr: ap, conn: conn}, time.Now())
	return nil
}

// answerAgain answers a retransmitted request whose transaction ended with
// the final response kept for it, and reports whether one was kept (RFC
// 3261 §17.2.2; authproxy patch).
func (s *answeredStore) answerAgain(key string) (bool, error) {
	a, ok := s.get(key, time.Now())
	if !ok {
		return false, nil
	}
	if _, err := a.conn.WriteTo(a.raw, net.UDPAddrFromAddrPort(a.addr)); err != nil {
		return true, fmt.Errorf("resend final response: %w", err)
	}
	return true, nil
}
