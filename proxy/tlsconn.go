package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// TLS toward upstreams addressed by name (RFC 5922): the certificate must
// be valid for the upstream's configured name (ServerName, else the host
// of its address), never for the SRV target or the IP a request goes to.
// sipgo dials an IP destination without knowing that name (no SNI, no
// per-connection hook), so authproxy makes those connections itself: it
// dials the target, verifies the certificate for the upstream's name and
// hands the connection to sipgo's TLS transport, which serves it as an
// accepted one (Server.ServeTLS on tlsConnector, a net.Listener) and
// keys it by the target's address, where requests to that target find it.
// A TLS connection sipgo would dial on its own is refused (tls.go): every
// request to a TLS target is sent after tlsConnector.ensure.

// tlsConnector dials, verifies and hands over TLS connections to upstream
// targets; it is the net.Listener sipgo's TLS transport serves them from.
type tlsConnector struct {
	handover
	pool    func(addr string) bool // whether sipgo holds a connection to addr
	capture *capturer              // sees the connections' messages; nil: off

	mu       sync.Mutex
	pending  map[string]*tlsDial          // dials in progress, by target address
	verified map[string]*x509.Certificate // by target address: the leaf of the connection handed over
}

// tlsDial is one dial in progress; others wanting the same target wait
// for it.
type tlsDial struct {
	done chan struct{}
	err  error
}

func newTLSConnector(capture *capturer, pool func(string) bool) *tlsConnector {
	return &tlsConnector{
		handover: newHandover(&net.TCPAddr{IP: net.IPv4zero}), pool: pool, capture: capture,
		pending: map[string]*tlsDial{}, verified: map[string]*x509.Certificate{},
	}
}

// tlsName is the name u's certificate must carry.
func tlsName(u *upstream) string {
	if u.ServerName != "" {
		return u.ServerName
	}
	return u.host
}

// ensure makes sure sipgo holds a TLS connection to target t of u whose
// certificate authproxy verified for u's name: one already handed over
// (its certificate checked for u when another upstream's name made it), or
// a new one.
func (c *tlsConnector) ensure(ctx context.Context, u *upstream, t resolve.Target) error {
	addr := t.Addr.String()
	for {
		c.mu.Lock()
		if c.pool(addr) {
			leaf := c.verified[addr]
			c.mu.Unlock()
			if leaf == nil {
				return fmt.Errorf("tls %s: a connection authproxy did not verify is open to it", addr)
			}
			return verifyLeaf(leaf, u)
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
		d.err = c.dial(ctx, u, addr)
		c.mu.Lock()
		delete(c.pending, addr)
		c.mu.Unlock()
		close(d.done)
		return d.err
	}
}

// verifyLeaf checks a certificate already verified for another upstream
// against u's roots and name.
func verifyLeaf(leaf *x509.Certificate, u *upstream) error {
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: u.RootCAs, DNSName: tlsName(u)}); err != nil {
		return fmt.Errorf("tls: certificate not valid for upstream %s: %w", u.Name, err)
	}
	return nil
}

// dial connects to addr, verifies the certificate for u's name with u's
// roots, and hands the connection to sipgo; it returns once sipgo reads
// it.
func (c *tlsConnector) dial(ctx context.Context, u *upstream, addr string) error {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial tls %s: %w", addr, err)
	}
	tc := tls.Client(raw, &tls.Config{ServerName: tlsName(u), RootCAs: u.RootCAs, MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return fmt.Errorf("tls %s as %s: %w", addr, tlsName(u), err)
	}
	h := &handedConn{Conn: captureConn(tc, c.capture), tls: tc, read: make(chan struct{})}
	h.closed = func() { c.forget(addr, h) }
	c.mu.Lock()
	c.verified[addr] = tc.ConnectionState().PeerCertificates[0]
	c.mu.Unlock()
	if err := c.give(ctx, h); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	// sipgo starts reading a connection once it is in its pool.
	select {
	case <-h.read:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// forget drops what is known of the connection to addr once h, the
// connection handed over for it, is closed.
func (c *tlsConnector) forget(addr string, h *handedConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.leaf() == c.verified[addr] {
		delete(c.verified, addr)
	}
}

// handedConn is a connection handed to sipgo: it tells when sipgo first
// reads it and when it is closed.
type handedConn struct {
	net.Conn // tls, or tls as the capture sees it
	tls      *tls.Conn
	read     chan struct{}
	readOnce sync.Once
	closed   func()
	shutOnce sync.Once
}

func (h *handedConn) Read(b []byte) (int, error) {
	h.readOnce.Do(func() { close(h.read) })
	return h.Conn.Read(b)
}

func (h *handedConn) Close() error {
	h.shutOnce.Do(h.closed)
	return h.Conn.Close()
}

func (h *handedConn) leaf() *x509.Certificate {
	if h.tls != nil {
		if cs := h.tls.ConnectionState(); len(cs.PeerCertificates) > 0 {
			return cs.PeerCertificates[0]
		}
	}
	return nil
}
