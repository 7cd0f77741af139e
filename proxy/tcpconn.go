package proxy

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// With HEP capture on, authproxy makes its TCP connections to upstream
// targets itself, as it makes TLS ones (tlsconn.go): sipgo offers no hook
// on the connections it dials, so those would not be captured. Each is
// wrapped for the capture (captureConn) and handed to sipgo's TCP
// transport, which serves it as an accepted one (Server.ServeTCP on
// tcpConnector, a net.Listener) and keys it by the target's address, where
// requests to that target find it. Without capture sipgo dials as usual.

// tcpConnector dials TCP connections to upstream targets and hands them
// over to sipgo; it is the net.Listener sipgo's TCP transport serves them
// from.
type tcpConnector struct {
	handover
	pool    func(addr string) bool // whether sipgo holds a connection to addr
	capture *capturer

	mu      sync.Mutex
	pending map[string]*tlsDial // dials in progress, by target address
}

// newTCPConnector returns a connector whose Addr is addr (the first TCP
// listener's, so that sipgo's note of its TCP listening port stays that
// listener's whichever it serves first).
func newTCPConnector(capture *capturer, addr net.Addr, pool func(string) bool) *tcpConnector {
	if addr == nil {
		addr = &net.TCPAddr{IP: net.IPv4zero}
	}
	return &tcpConnector{
		handover: newHandover(addr), pool: pool, capture: capture,
		pending: map[string]*tlsDial{},
	}
}

// ensure makes sure sipgo holds a TCP connection to addr ("ip:port"): one
// already there, or a new one authproxy dials.
func (c *tcpConnector) ensure(ctx context.Context, addr string) error {
	for {
		c.mu.Lock()
		if c.pool(addr) {
			c.mu.Unlock()
			return nil
		}
		if d := c.pending[addr]; d != nil {
			c.mu.Unlock()
			select {
			case <-d.done:
				continue // the dial ended: look again
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		d := &tlsDial{done: make(chan struct{})}
		c.pending[addr] = d
		c.mu.Unlock()
		d.err = c.dial(ctx, addr)
		c.mu.Lock()
		delete(c.pending, addr)
		c.mu.Unlock()
		close(d.done)
		return d.err
	}
}

// dial connects to addr and hands the connection to sipgo; it returns
// once sipgo reads it.
func (c *tcpConnector) dial(ctx context.Context, addr string) error {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial tcp %s: %w", addr, err)
	}
	h := &handedConn{Conn: captureConn(raw, c.capture), read: make(chan struct{}), closed: func() {}}
	if err := c.give(ctx, h); err != nil {
		return fmt.Errorf("tcp: %w", err)
	}
	// sipgo starts reading a connection once it is in its pool.
	select {
	case <-h.read:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
