// Package lossyrelay is a UDP relay for fault tests: a network path that
// loses and delays datagrams, in user space (the test machines have no
// netem). It listens on a loopback address and forwards every datagram it
// receives to one fixed peer, and the peer's answers back to the client
// they answer. Each datagram, either way, is dropped with probability
// Loss, or else delayed by a uniform random time in [0, Jitter), so that
// datagrams may overtake each other as on a jittery path. Decisions come
// from a seeded generator.
//
// Each client (source address) gets a socket of its own toward the peer,
// so the peer sees one address per client and its answers on that socket
// go back to that client. SIP over it needs no rewriting: with rport
// (RFC 3581) the peer answers the address the request came from, which is
// the relay.
package lossyrelay

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures Start.
type Config struct {
	// Listen is the "host:port" to receive clients' datagrams on, on
	// loopback; port 0 picks a free one (see Relay.Addr).
	Listen string
	// Peer is the "host:port" every client datagram is forwarded to.
	Peer string
	// Loss is the probability, in [0, 1], that a datagram is dropped.
	Loss float64
	// Jitter bounds the delay of each datagram, drawn uniformly from
	// [0, Jitter). Zero forwards at once, in order.
	Jitter time.Duration
	// Seed seeds the generator of drops and delays.
	Seed uint64
}

// Direction counts the datagrams of one direction.
type Direction struct {
	Received uint64 // read from the sender
	Dropped  uint64 // lost on purpose
	Sent     uint64 // written to the receiver
}

// Stats are a relay's counters.
type Stats struct {
	ToPeer   Direction // clients → peer
	FromPeer Direction // peer → clients
}

// maxDatagram is the largest UDP payload.
const maxDatagram = 65535

// socketBuffer is the receive buffer asked for on every socket (the
// kernel caps it at net.core.rmem_max): a burst of SIP traffic must not
// overflow it, which would add losses the test did not ask for.
const socketBuffer = 4 << 20

// Relay is a running relay. Stop it with Close (or by cancelling the
// context given to Start); Close waits for all its goroutines.
type Relay struct {
	cfg    Config
	peer   netip.AddrPort
	conn   *net.UDPConn // clients' side
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	rng     *rand.Rand
	clients map[netip.AddrPort]*net.UDPConn // client → its socket toward the peer

	sched *scheduler

	toPeer, fromPeer counters
}

// counters is a Direction updated concurrently.
type counters struct{ received, dropped, sent atomic.Uint64 }

func (c *counters) snapshot() Direction {
	return Direction{Received: c.received.Load(), Dropped: c.dropped.Load(), Sent: c.sent.Load()}
}

// Start binds cfg.Listen and starts relaying until ctx ends or Close is
// called.
func Start(ctx context.Context, cfg Config) (*Relay, error) {
	if cfg.Loss < 0 || cfg.Loss > 1 {
		return nil, fmt.Errorf("lossyrelay: loss %v: want a probability in [0, 1]", cfg.Loss)
	}
	if cfg.Jitter < 0 {
		return nil, fmt.Errorf("lossyrelay: jitter %v: want >= 0", cfg.Jitter)
	}
	peer, err := netip.ParseAddrPort(cfg.Peer)
	if err != nil {
		return nil, fmt.Errorf("lossyrelay: peer %q: %w", cfg.Peer, err)
	}
	listen, err := netip.ParseAddrPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("lossyrelay: listen %q: %w", cfg.Listen, err)
	}
	if !listen.Addr().IsLoopback() {
		return nil, fmt.Errorf("lossyrelay: listen %q: want a loopback address", cfg.Listen)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(listen))
	if err != nil {
		return nil, fmt.Errorf("lossyrelay: listen: %w", err)
	}
	_ = conn.SetReadBuffer(socketBuffer)
	ctx, cancel := context.WithCancel(ctx)
	r := &Relay{
		cfg: cfg, peer: peer, conn: conn, ctx: ctx, cancel: cancel,
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		clients: map[netip.AddrPort]*net.UDPConn{},
		sched:   newScheduler(),
	}
	r.wg.Add(3)
	go func() { defer r.wg.Done(); r.readClients() }()
	go func() { defer r.wg.Done(); r.sched.run(ctx) }()
	go func() {
		defer r.wg.Done()
		<-ctx.Done()
		r.closeSockets() // unblocks every read
	}()
	return r, nil
}

// Addr returns the "host:port" clients send to.
func (r *Relay) Addr() string { return r.conn.LocalAddr().String() }

// Stats returns the counters so far.
func (r *Relay) Stats() Stats {
	return Stats{ToPeer: r.toPeer.snapshot(), FromPeer: r.fromPeer.snapshot()}
}

// Close stops the relay, drops the datagrams it still holds and returns
// once every goroutine it started has returned.
func (r *Relay) Close() error {
	r.cancel()
	r.wg.Wait()
	return nil
}

func (r *Relay) closeSockets() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.conn.Close()
	for _, c := range r.clients {
		c.Close()
	}
}

// readClients forwards what clients send to the peer, each through the
// client's own socket.
func (r *Relay) readClients() {
	buf := make([]byte, maxDatagram)
	for {
		n, src, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if r.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ECONNREFUSED reported for an earlier send
		}
		r.toPeer.received.Add(1)
		out, err := r.clientConn(src)
		if err != nil {
			continue // stopping
		}
		r.pass(&r.toPeer, buf[:n], out, r.peer)
	}
}

// clientConn returns the socket toward the peer for client src, opening
// it (and its reader) on first use.
func (r *Relay) clientConn(src netip.AddrPort) (*net.UDPConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.clients[src]; ok {
		return c, nil
	}
	if r.ctx.Err() != nil {
		return nil, r.ctx.Err()
	}
	local := netip.AddrPortFrom(netip.MustParseAddrPort(r.Addr()).Addr(), 0)
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, err
	}
	_ = c.SetReadBuffer(socketBuffer)
	r.clients[src] = c
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.readPeer(c, src) }()
	return c, nil
}

// readPeer forwards what arrives on client's socket toward the peer back
// to that client.
func (r *Relay) readPeer(c *net.UDPConn, client netip.AddrPort) {
	buf := make([]byte, maxDatagram)
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if r.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED: the peer was not listening
		}
		r.fromPeer.received.Add(1)
		r.pass(&r.fromPeer, buf[:n], r.conn, client)
	}
}

// pass drops data or schedules it to be written from conn to dst.
func (r *Relay) pass(cnt *counters, data []byte, conn *net.UDPConn, dst netip.AddrPort) {
	drop, delay := r.decide()
	if drop {
		cnt.dropped.Add(1)
		return
	}
	r.sched.add(time.Now().Add(delay), delivery{data: append([]byte(nil), data...), conn: conn, dst: dst, sent: &cnt.sent})
}

// decide draws the fate of one datagram.
func (r *Relay) decide() (drop bool, delay time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	drop = r.rng.Float64() < r.cfg.Loss
	if r.cfg.Jitter > 0 {
		delay = time.Duration(r.rng.Int64N(int64(r.cfg.Jitter)))
	}
	return drop, delay
}

// delivery is one datagram waiting for its time.
type delivery struct {
	at   time.Time
	seq  uint64 // ties keep arrival order
	data []byte
	conn *net.UDPConn
	dst  netip.AddrPort
	sent *atomic.Uint64
}

// scheduler writes deliveries when they are due, from one goroutine.
type scheduler struct {
	mu    sync.Mutex
	queue deliveryHeap
	seq   uint64
	wake  chan struct{} // a new delivery may be due earlier
}

func newScheduler() *scheduler { return &scheduler{wake: make(chan struct{}, 1)} }

func (s *scheduler) add(at time.Time, d delivery) {
	s.mu.Lock()
	d.at, d.seq = at, s.seq
	s.seq++
	heap.Push(&s.queue, d)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run writes due deliveries until ctx ends; what is left is dropped.
func (s *scheduler) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next, ok := s.writeDue(time.Now())
		wait := time.Hour
		if ok {
			wait = time.Until(next)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// writeDue writes every delivery due at now and returns when the next one
// is due, if any.
func (s *scheduler) writeDue(now time.Time) (time.Time, bool) {
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.mu.Unlock()
			return time.Time{}, false
		}
		d := s.queue[0]
		if d.at.After(now) {
			s.mu.Unlock()
			return d.at, true
		}
		heap.Pop(&s.queue)
		s.mu.Unlock()
		if _, err := d.conn.WriteToUDPAddrPort(d.data, d.dst); err == nil {
			d.sent.Add(1)
		}
	}
}

// deliveryHeap orders deliveries by due time, then arrival.
type deliveryHeap []delivery

func (h deliveryHeap) Len() int { return len(h) }
func (h deliveryHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h deliveryHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *deliveryHeap) Push(x any)   { *h = append(*h, x.(delivery)) }
func (h *deliveryHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	*h = old[:len(old)-1]
	return d
}
