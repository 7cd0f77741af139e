package sip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

var (
	UDPMTUSize = 1500

	ErrUDPMTUCongestion = errors.New("size of packet larger than MTU")
)

// UDP transport implementation
type TransportUDP struct {
	// listener *net.UDPConn
	parser          *Parser
	pool            *ConnectionPool
	log             *slog.Logger
	connectionReuse bool
	readFilter      TransportReadFilter
	// rawResponse (authproxy patch 13) is offered each response datagram
	// before it is parsed (RawResponseLane).
	rawResponse func(data []byte) bool
}

func (t *TransportUDP) init(par *Parser) {
	t.parser = par
	t.pool = newConnectionPool()
	if t.log == nil {
		t.log = DefaultLogger()
	}
}

func (t *TransportUDP) String() string {
	return "transport<UDP>"
}

func (t *TransportUDP) Network() string {
	return "UDP"
}

func (t *TransportUDP) Close() error {
	return t.pool.Clear()
	// Closing listeners is caller thing.
}

// ServeConn is direct way to provide conn on which this worker will listen
func (t *TransportUDP) Serve(conn net.PacketConn, handler MessageHandler) error {
	t.log.Debug("begin listening", "network", t.Network(), "addr", conn.LocalAddr().String())
	/*
		Multiple readers makes problem, which can delay writing response
	*/
	c := &UDPConnection{
		PacketConn: conn,
		PacketAddr: conn.LocalAddr().String(),
		Listener:   true,
	}

	t.pool.Add(c.PacketAddr, c)
	t.readListenerConnection(c, c.PacketAddr, handler)
	return nil
}

func (t *TransportUDP) ResolveAddr(addr string) (net.Addr, error) {
	return net.ResolveUDPAddr("udp", addr)
}

// GetConnection will return same listener connection
func (t *TransportUDP) GetConnection(addr string) Connection {
	// Single udp connection as listener can only be used as long IP of a packet in same network
	// In case this is not the case we should return error?
	// https://dadrian.io/blog/posts/udp-in-go/
	// Pool consists either of every new packet From addr or client created connection
	return t.pool.Get(addr)
}

// CreateConnection will create new connection
func (t *TransportUDP) CreateConnection(ctx context.Context, laddr Addr, raddr Addr, handler MessageHandler) (Connection, error) {
	return t.createConnection(ctx, laddr, raddr, handler)
}

func (t *TransportUDP) createConnection(ctx context.Context, laddr Addr, raddr Addr, handler MessageHandler) (Connection, error) {
	laddrStr := laddr.String()
	lc := &net.ListenConfig{}

	protocol := "udp"
	if laddr.IP == nil && raddr.IP.To4() != nil {
		// Use IPV4 if remote is same
		protocol = "udp4"
	}
	addr := raddr.String()

	conn, err := t.pool.addSingleflight(raddr, laddr, t.connectionReuse, func() (Connection, error) {
		udpconn, err := lc.ListenPacket(ctx, protocol, laddrStr)
		if err != nil {
			return nil, err
		}

		c := &UDPConnection{
			PacketConn: udpconn,
			PacketAddr: udpconn.LocalAddr().String(),
			// 1 ref for current return , 2 ref for reader
			refcount: 2 + TransportIdleConnection,
		}
		t.log.Debug("New connection", "raddr", addr)
		go t.readUDPConnection(c, addr, c.PacketAddr, handler)
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	c := conn.(*UDPConnection)
	return c, nil
}

func (t *TransportUDP) readUDPConnection(conn *UDPConnection, raddr string, laddr string, handler MessageHandler) {
	defer t.pool.deleteExact(raddr, conn) // should be closed in previous defer
	t.readListenerConnection(conn, laddr, handler)
}

func (t *TransportUDP) readListenerConnection(conn *UDPConnection, laddr string, handler MessageHandler) {
	buf := make([]byte, TransportBufferReadSize)
	defer func() {
		if err := t.pool.CloseAndDelete(conn, laddr); err != nil {
			t.log.Warn("connection pool not clean cleanup", "error", err)
		}
	}()
	defer t.log.Debug("Read listener connection stopped", "laddr", laddr)

	var lastRaddr string
	// NOTE: consider to refactor, but for cleanup
	// We are reusing UDP listener as dial connection
	acceptedAddr := make(map[string]struct{})
	defer func() {
		addrs := make([]string, 0, len(acceptedAddr))
		for addr := range acceptedAddr {
			addrs = append(addrs, addr)
		}
		t.pool.deleteExactN(addrs, conn)
	}()

	// authproxy patch: parsing happens here or, when busy, in workers
	// (patch 12); they are stopped (queues drained) before the deferred
	// cleanup above runs.
	workers := newUDPParseWorkers(t, handler)
	defer workers.stop()

	for {
		num, raddr, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				t.log.Debug("Read connection closed", "laddr", laddr, "error", err)
				return
			}
			// Windows reports an error when a datagram exceeds the read buffer.
			if isRecvMsgSizeErr(err) {
				continue
			}
			t.log.Error("Read connection error", "laddr", laddr, "error", err)
			return
		}

		data := buf[:num]
		if len(bytes.Trim(data, "\x00")) == 0 {
			continue
		}
		rastr := raddr.String()
		if t.readFilter != nil {
			filtered, err := t.readFilter(TransportReadProps{
				Transport:  t.Network(),
				LocalAddr:  conn.LocalAddr(),
				RemoteAddr: raddr,
			}, data)
			if err != nil {
				t.log.Error("Read filter error", "laddr", laddr, "raddr", rastr, "error", err)
				return
			}
			if len(filtered) == 0 {
				continue
			}
			data = filtered
		}

		if lastRaddr != rastr && t.pool.Get(rastr) != conn {
			// In most cases we are in single connection mode so no need to keep adding in pool
			// In case of server and multiple UDP listeners, this makes sure right one is used
			// (authproxy patch: only when the pool does not hold this
			// connection already; a proxy alternates between its clients
			// and its upstream on every datagram, and each Add took the
			// pool's write lock.)
			t.pool.Add(rastr, conn)
			acceptedAddr[rastr] = struct{}{}
		}
		workers.handle(rastr, data)
		lastRaddr = rastr
	}
}

// udpParseWorkers parse and hand on the datagrams one UDP socket reads
// (authproxy patch). The read loop used to parse each datagram itself, so
// one goroutine read, parsed and dispatched everything a busy proxy
// receives (its clients' requests and its upstreams' responses) and capped
// the process at about one core while the socket buffer overflowed. Each
// source address is served by one worker, so the datagrams of one peer are
// still parsed and handed on in the order they arrived. Since patch 12
// the workers take over only at a high datagram rate (handle).
type udpParseWorkers struct {
	t         *TransportUDP
	handler   MessageHandler
	queues    []chan udpDatagram
	wg        sync.WaitGroup
	handOffAt int64 // UDPHandOffAbove when the read loop started

	// The read loop's datagram rate (busy), read and written by it alone.
	count       int
	windowStart time.Time
	fast        bool
}

type udpDatagram struct {
	src  string
	data []byte
	buf  *[]byte // data's pooled buffer, or nil
}

// datagramPool holds the buffers datagrams wait in between the read loop
// and their worker (authproxy patch): a copy is needed since the loop
// reuses its read buffer, but the parser copies everything it keeps
// (proxy/sipgo_patch_test.go checks), so the buffer is free again once the
// datagram is parsed. Two copies a request were a sixth of the bytes a
// proxied request allocated.
var datagramPool = sync.Pool{New: func() any {
	b := make([]byte, 0, datagramPoolSize)
	return &b
}}

// datagramPoolSize is the size of pooled buffers; larger datagrams (rare:
// SIP over UDP stays under the path MTU) get a buffer of their own.
const datagramPoolSize = 2048

func newUDPParseWorkers(t *TransportUDP, handler MessageHandler) *udpParseWorkers {
	// More workers than CPUs, so that two busy peers rarely share one.
	n := max(4, 4*runtime.GOMAXPROCS(0))
	w := &udpParseWorkers{t: t, handler: handler, queues: make([]chan udpDatagram, n), handOffAt: UDPHandOffAbove.Load()}
	for i := range w.queues {
		q := make(chan udpDatagram, 256)
		w.queues[i] = q
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for d := range q {
				w.t.parseAndHandle(d.data, d.src, w.handler)
				if d.buf != nil {
					datagramPool.Put(d.buf)
				}
			}
		}()
	}
	return w
}

// UDPHandOffAbove is the datagram rate per socket, in datagrams a second
// measured over 100 ms, from which a UDP listener's read loop hands
// datagrams to its workers instead of parsing and handling them itself
// (authproxy patch 12). Read when a listener starts; 0 hands every
// datagram to a worker (authproxy's tests run both ways). Atomic only so
// that tests may change it while other listeners run.
//
// Below it, on the read loop: on a machine a proxy shares with its PBX,
// waking a parked worker for every datagram (and the scheduler's search
// for work after each) added to the tail, and one stalled worker held up
// whatever queued behind it. At 4,000 requests/s
// through authproxy (8,000 datagrams/s) p99 added fell from 2.5 to 1.7 ms
// (medians of six runs alternating with workers picked by Call-ID, in one
// half hour; single runs on that shared machine range 1–8 ms).
// Above it one goroutine no longer keeps up with the socket on this
// 2-core machine (authproxy spends about 45 µs of CPU per datagram, half
// of it in the kernel), and the workers spread the parsing and forwarding
// over the CPUs.
var UDPHandOffAbove atomic.Int64

func init() { UDPHandOffAbove.Store(10000) }

// handle parses and hands on a datagram the read loop has just read into
// its buffer: on the read loop itself, or through its source's worker
// when the socket is busy (UDPHandOffAbove). When the rate falls back, a
// datagram handled here may overtake one of the same peer still queued
// for a worker, as datagrams may be reordered on the way; SIP over UDP
// copes with that.
func (w *udpParseWorkers) handle(src string, data []byte) {
	if w.busy(time.Now()) {
		w.dispatch(src, data)
		return
	}
	// The parser copies what it keeps (proxy/sipgo_patch_test.go
	// checks): the read buffer is free again once this returns.
	w.t.parseAndHandle(data, src, w.handler)
}

// busy reports whether the socket reads handOffAt datagrams a second or
// more, measured over windows of 100 ms (only the read loop calls it).
func (w *udpParseWorkers) busy(now time.Time) bool {
	w.count++
	if d := now.Sub(w.windowStart); d >= 100*time.Millisecond {
		w.fast = float64(w.count)/d.Seconds() >= float64(w.handOffAt)
		w.count, w.windowStart = 0, now
	}
	return w.fast || w.handOffAt <= 0
}

// dispatch queues a copy of a datagram to its source's worker, waiting
// when that worker is behind (the socket buffer then holds what follows).
func (w *udpParseWorkers) dispatch(src string, data []byte) {
	d := udpDatagram{src: src}
	if len(data) <= datagramPoolSize {
		d.buf = datagramPool.Get().(*[]byte)
		*d.buf = append((*d.buf)[:0], data...)
		d.data = *d.buf
	} else {
		d.data = bytes.Clone(data)
	}
	w.queues[hashKey(src)%uint64(len(w.queues))] <- d
}

// stop lets the workers finish what is queued and waits for them.
func (w *udpParseWorkers) stop() {
	for _, q := range w.queues {
		close(q)
	}
	w.wg.Wait()
}

// This should performe better to avoid any interface allocation
// For now no usage, but leaving here
/* func (t *transportUDP) readUDPConn(conn *net.UDPConn, handler MessageHandler) {
	buf := make([]byte, transportBufferSize)
	defer conn.Close()

	for {
		//ReadFromUDP should make one less allocation
		num, raddr, err := conn.ReadFromUDP(buf)

		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				t.log.Debug().Err(err).Msg("Read connection closed")
				return
			}
			t.log.Error().Err(err).Msg("Read UDP connection error")
			return
		}

		data := buf[:num]
		if len(bytes.Trim(data, "\x00")) == 0 {
			continue
		}

		t.parseAndHandle(data, raddr.String(), handler)
	}
} */

func (t *TransportUDP) parseAndHandle(data []byte, src string, handler MessageHandler) {
	// Check is keep alive
	if len(data) <= 4 {
		//One or 2 CRLF
		if len(bytes.Trim(data, "\r\n")) == 0 {
			t.log.Debug("Keep alive CRLF received")
			return
		}
	}

	if t.rawResponse != nil && bytes.HasPrefix(data, []byte("SIP/2.0 ")) && t.rawResponse(data) { // authproxy patch 13
		return
	}

	msg, err := t.parser.ParseSIP(data) //Very expensive operation
	if err != nil {
		t.log.Error("failed to parse", "data", string(data), "error", err)
		return
	}

	msg.SetTransport(t.Network())
	// Current transaction are taking connection but for UDP they can forward on different src address
	msg.SetSource(src) // By default we expect our source is behind NAT. https://datatracker.ietf.org/doc/html/rfc3581#section-6
	// authproxy patch 14: the datagram, for the FastLane alone.
	if req, ok := msg.(*Request); ok && t.rawResponse != nil {
		req.raw = data
	}
	handler(msg)
}

type UDPConnection struct {
	PacketConn net.PacketConn
	PacketAddr string // For faster matching
	Listener   bool

	mu       sync.RWMutex
	refcount int
}

func (c *UDPConnection) close() error {
	c.mu.Lock()
	c.refcount = 0
	c.mu.Unlock()

	if c.Listener {
		// In case this UDP created as listener from Serve. Avoid double closing.
		// Closing is done by read connection and it will return already error
		return nil
	}
	DefaultLogger().Debug("UDP reference doing hard close", "ip", c.LocalAddr().String(), "ref", 0)
	return c.PacketConn.Close()
}

func (c *UDPConnection) LocalAddr() net.Addr {
	return c.PacketConn.LocalAddr()
}

func (c *UDPConnection) Ref(i int) int {
	c.mu.Lock()
	c.refcount += i
	ref := c.refcount
	c.mu.Unlock()
	return ref
}

func (c *UDPConnection) Close() error {
	return c.close()
}

func (c *UDPConnection) TryClose() (int, error) {
	c.mu.Lock()
	c.refcount--
	ref := c.refcount
	c.mu.Unlock()

	if c.Listener {
		// Listeners must be closed manually or by forcing error
		return ref, nil
	}

	DefaultLogger().Debug("UDP reference decrement", "src", c.LocalAddr().String(), "ref", ref)
	if ref > 0 {
		return ref, nil
	}

	if ref < 0 {
		DefaultLogger().Warn("UDP ref went negative on try close", "src", c.LocalAddr().String(), "ref", ref)
		return 0, nil
	}

	return ref, c.close()
}

func (c *UDPConnection) ReadFrom(b []byte) (n int, addr net.Addr, err error) {
	// Some debug hook. TODO move to proper way
	n, addr, err = c.PacketConn.ReadFrom(b)
	if SIPDebug && err == nil {
		logSIPRead("UDP", c.PacketConn.LocalAddr().String(), addr.String(), b[:n])
	}
	return n, addr, err
}

func (c *UDPConnection) WriteTo(b []byte, addr net.Addr) (n int, err error) {
	// Some debug hook. TODO move to proper way
	n, err = c.PacketConn.WriteTo(b, addr)
	if SIPDebug && err == nil {
		logSIPWrite("UDP", c.PacketConn.LocalAddr().String(), addr.String(), b[:n])
	}
	return n, err
}

// udpDestination is where WriteMsg sends msg (authproxy patch: out of
// WriteMsg, for writeMsgBuf's caller to keep).
func udpDestination(msg Message) (*net.UDPAddr, error) {
	a := msg.remoteAddress() // Destination should be already resolved by transport layer
	if a.IP == nil {
		host, port, err := ParseAddr(msg.Destination())
		if err != nil {
			return nil, err
		}
		a.IP = net.ParseIP(host)
		a.Port = port
	}
	raddr := &net.UDPAddr{IP: a.IP, Port: a.Port, Zone: a.Zone}
	if raddr.Port == 0 {
		raddr.Port = DefaultUdpPort
	}
	return raddr, nil
}

func (c *UDPConnection) WriteMsg(msg Message) error {
	buf := bufPool.Get().(*bytes.Buffer)
	defer bufPool.Put(buf)
	buf.Reset()
	_, err := c.writeMsgBuf(msg, buf)
	return err
}

// writeMsgBuf is WriteMsg writing msg into buf (authproxy patch: handOver
// keeps the bytes sent instead of writing the response out a second time)
// and returning where it sent them.
func (c *UDPConnection) writeMsgBuf(msg Message, buf *bytes.Buffer) (*net.UDPAddr, error) {
	msg.StringWrite(buf)
	data := buf.Bytes()

	if len(data) > UDPMTUSize-200 {
		return nil, ErrUDPMTUCongestion
	}

	raddr, err := udpDestination(msg)
	if err != nil {
		return nil, err
	}
	n, err := c.WriteTo(data, raddr)
	if err != nil {
		return nil, fmt.Errorf("udp conn %s err. %w", c.PacketConn.LocalAddr().String(), err)
	}

	if n == 0 {
		return nil, fmt.Errorf("wrote 0 bytes")
	}

	if n != len(data) {
		return nil, fmt.Errorf("fail to write full message")
	}
	return raddr, nil
}
