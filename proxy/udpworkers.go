package proxy

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Above udpHandOffAbove datagrams a second, measured per 100 ms, a UDP
// listener's read loop (laneSocket.ReadFrom) no longer handles the fast
// lane's datagrams itself: it copies each into a pooled buffer and hands
// it to one of 4×GOMAXPROCS workers chosen by source address (one peer's
// datagrams are handled in arrival order), and goes back to reading.
// Below the rate, waking a parked worker for every datagram costs more
// than it gains (scheduler time, and one worker stalled by the OS holds up
// what queues behind it); above it, one goroutine cannot keep up on a
// machine whose cores it shares with its peers: the OS gives one thread
// its share of a core, and the kernel's socket buffer overflows
// (docs/performance.md, "The UDP read loop").
//
// Only what the fast lane may take is handed off (a response whose branch
// it waits on, a request of a method it may take); whatever a worker finds
// is sipgo's after all (a request the upstream sends into a dialog, one
// in a dialog authproxy does not know) goes back to the read loop,
// which returns it to sipgo from its next ReadFrom, woken by a read
// deadline in the past if it waits on the socket.
var udpHandOffAbove = func() *atomic.Int64 { var v atomic.Int64; v.Store(10_000); return &v }()

// udpHandOffWindow is the window the rate is measured over.
const udpHandOffWindow = 100 * time.Millisecond

// udpWorkerQueue is each worker's queue; a full one makes the read loop
// wait (the socket's buffer absorbs the burst meanwhile).
const udpWorkerQueue = 256

// handedDatagram is a datagram copied out of the read buffer.
type handedDatagram struct {
	buf  *[]byte
	addr net.Addr
}

// udpWorkers are a laneSocket's workers and the datagrams they hand back.
type udpWorkers struct {
	once   sync.Once
	queues []chan handedDatagram
	back   chan handedDatagram // for sipgo, to be returned by ReadFrom
	quit   chan struct{}
	stop   sync.Once

	// The read loop's rate meter (read loop only).
	windowStart time.Time
	inWindow    int
	busy        bool // the last full window was above udpHandOffAbove
}

// handOffBufs are the copies of datagrams handed to workers.
var handOffBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// above counts a datagram read at now and reports whether the read loop
// hands off at the current rate; always when udpHandOffAbove is negative.
func (w *udpWorkers) above(now time.Time) bool {
	if udpHandOffAbove.Load() < 0 {
		return true // every datagram (tests)
	}
	if d := now.Sub(w.windowStart); d >= udpHandOffWindow {
		w.busy = d < 2*udpHandOffWindow && int64(w.inWindow) > udpHandOffAbove.Load()*int64(udpHandOffWindow)/int64(time.Second)
		w.windowStart, w.inWindow = now, 0
	}
	w.inWindow++
	return w.busy
}

// handOff hands the datagram data from addr to a worker when the rate is
// above udpHandOffAbove and the fast lane may take it, and reports whether
// it did.
func (s *laneSocket) handOff(data []byte, addr net.Addr) bool {
	if !s.workers.above(time.Now()) || s.p.lane == nil || !s.laneMayTake(data) {
		return false
	}
	s.workers.once.Do(s.startWorkers)
	buf := handOffBufs.Get().(*[]byte)
	*buf = append((*buf)[:0], data...)
	q := s.workers.queues[sourceHash(addr)%uint64(len(s.workers.queues))]
	select {
	case q <- handedDatagram{buf: buf, addr: addr}:
	case <-s.workers.quit:
		handOffBufs.Put(buf)
	}
	return true
}

// laneMayTake reports, from its bytes, whether the fast lane may take
// data: a response whose branch it waits on, or a request of a method it
// may take. Only the read loop's cost depends on it; the worker decides.
func (s *laneSocket) laneMayTake(data []byte) bool {
	if isResponseStart(data) {
		return s.p.lane.waitsOnBranchIn(data)
	}
	switch m := sip.RequestMethod(startMethod(data)); m {
	case "", sip.INVITE, sip.ACK, sip.CANCEL, sip.REGISTER:
		return false
	default:
		return !createsDialog(m)
	}
}

// sourceHash is FNV-1a over addr's IP and port.
func sourceHash(addr net.Addr) uint64 {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return hashKey(addr.String())
	}
	h := hashKey([]byte(ua.IP))
	return (h ^ uint64(ua.Port)) * 1099511628211
}

func (s *laneSocket) startWorkers() {
	n := 4 * runtime.GOMAXPROCS(0)
	s.workers.queues = make([]chan handedDatagram, n)
	for i := range s.workers.queues {
		q := make(chan handedDatagram, udpWorkerQueue)
		s.workers.queues[i] = q
		go s.work(q)
	}
}

// work handles the datagrams of one queue until the socket closes.
func (s *laneSocket) work(q <-chan handedDatagram) {
	for {
		select {
		case d := <-q:
			if s.take(*d.buf, d.addr) {
				handOffBufs.Put(d.buf)
				continue
			}
			s.giveBack(d)
		case <-s.workers.quit:
			return
		}
	}
}

// giveBack queues d for sipgo and wakes the read loop.
func (s *laneSocket) giveBack(d handedDatagram) {
	select {
	case s.workers.back <- d:
	default:
		handOffBufs.Put(d.buf) // the read loop is far behind: dropped, as the kernel would
		return
	}
	_ = s.PacketConn.SetReadDeadline(time.Now())
}

// handedBack returns a datagram a worker gave back for sipgo, if any,
// copied into b.
func (s *laneSocket) handedBack(b []byte) (int, net.Addr, bool) {
	select {
	case d := <-s.workers.back:
		n := copy(b, *d.buf)
		handOffBufs.Put(d.buf)
		return n, d.addr, true
	default:
		return 0, nil, false
	}
}

// woken reports whether err is the read deadline giveBack set, and clears
// it.
func (s *laneSocket) woken(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	_ = s.PacketConn.SetReadDeadline(time.Time{})
	return true
}

// stopWorkers ends the workers once the socket is closed.
func (s *laneSocket) stopWorkers() {
	s.workers.stop.Do(func() { close(s.workers.quit) })
}
