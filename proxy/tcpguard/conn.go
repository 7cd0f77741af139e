package tcpguard

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// writeTimeout bounds the writes the guard makes itself (a keep-alive
// pong, a 513): a client that does not read must not hold the reading
// goroutine.
const writeTimeout = 5 * time.Second

// conn is an accepted connection under the guard. Read is called from one
// goroutine (the SIP stack's reader); Write and Close from any.
type conn struct {
	net.Conn // the TCP connection, or the TLS server over it
	g        *Guard
	src      netip.Addr
	peer     Peer
	tls      *tls.Conn // nil for TCP
	lim      Limits

	fr         Framer
	since      time.Time // accepted, or handshaken (TLS)
	msgStart   time.Time // first byte of the message in progress
	lastActive time.Time // last message or keep-alive
	gotFirst   bool      // a complete message arrived
	handshook  bool
	pending    counter // a close decided while bytes were still handed on, or cNone

	// With Config.Inspect (insp) or Config.Tap: the bytes of the message in progress, held back
	// until it is complete, and those of the messages it let through, not
	// read yet (from outOff on).
	insp   func(msg []byte, transport string, from netip.AddrPort) (bool, []byte)
	hold   bool // Inspect or Tap is set: messages are held back until complete
	held   []byte
	out    []byte
	outOff int

	// With Config.Tap: the tap and the connection's addresses.
	tap           func(msg []byte, sent bool, local, remote netip.AddrPort)
	local, remote netip.AddrPort

	// With Config.Divert: shown each message Inspect let through.
	divert func(msg []byte, s Stream) bool

	wmu       sync.Mutex // held by the guard's writes under a deadline (writeWithin)
	closed    atomic.Bool
	closeOnce sync.Once
}

func newConn(g *Guard, raw net.Conn, src netip.Addr, peer Peer, tlsConf *tls.Config) *conn {
	c := &conn{Conn: raw, g: g, src: src, peer: peer, lim: g.cfg.Limits, since: time.Now(), insp: g.cfg.Inspect}
	c.fr.MaxSize = c.lim.MaxMessageSize
	c.divert = g.cfg.Divert
	c.hold = c.insp != nil || g.cfg.Tap != nil || c.divert != nil
	if g.cfg.Tap != nil {
		c.tap, c.local, c.remote = g.cfg.Tap, addrPort(raw.LocalAddr()), addrPort(raw.RemoteAddr())
	}
	if tlsConf != nil {
		c.tls = tls.Server(raw, tlsConf)
		c.Conn = c.tls
	}
	return c
}

// Close closes the connection and gives its place under the caps back.
func (c *conn) Close() error {
	c.closed.Store(true)
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.g.admission.Release(c.src, c.peer) })
	return err
}

// Read returns the bytes of SIP messages only (keep-alives answered and
// left out), under the deadline the connection's state calls for.
func (c *conn) Read(b []byte) (int, error) {
	if c.outOff < len(c.out) {
		return c.drain(b), nil
	}
	if c.pending != cNone {
		return 0, c.stop(c.pending, nil)
	}
	if c.tls != nil && !c.handshook {
		if err := c.handshake(); err != nil {
			return 0, err
		}
	}
	for {
		if err := c.Conn.SetReadDeadline(c.deadline()); err != nil {
			return 0, fmt.Errorf("set read deadline: %w", err)
		}
		n, err := c.Conn.Read(b)
		out, why := c.frame(b, n, time.Now())
		if c.hold {
			out = c.drain(b)
		}
		if why != cNone {
			if out > 0 {
				c.pending = why // hand the complete messages before it on first
				return out, nil
			}
			return 0, c.stop(why, nil)
		}
		if out > 0 {
			return out, nil
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			why := cIdle
			if !c.gotFirst || c.fr.InMessage() {
				why = cMessage
			}
			return 0, c.stop(why, nil)
		}
		if err != nil {
			return 0, err
		}
	}
}

// deadline is when the connection's current wait ends: the first message
// or the message in progress is due MessageTimeout after it began, the
// next one IdleTimeout after the last activity. Zero: no deadline.
func (c *conn) deadline() time.Time {
	if !c.gotFirst || c.fr.InMessage() {
		if c.lim.MessageTimeout <= 0 {
			return time.Time{}
		}
		start := c.since
		if c.gotFirst {
			start = c.msgStart
		}
		return start.Add(c.lim.MessageTimeout)
	}
	if c.lim.IdleTimeout <= 0 {
		return time.Time{}
	}
	return c.lastActive.Add(c.lim.IdleTimeout)
}

// frame runs the n bytes read into b through the framer, moves the
// message bytes among them to the front of b and returns how many there
// are, and why the connection must close (cNone: it need not).
func (c *conn) frame(b []byte, n int, now time.Time) (int, counter) {
	out := 0
	data := b[:n]
	for len(data) > 0 {
		was := c.fr.InMessage()
		k, msg, ev := c.fr.Next(data)
		if msg && c.hold {
			c.held = append(c.held, data[:k]...)
		} else if msg {
			out += copy(b[out:], data[:k])
		}
		data = data[k:]
		if !was && c.fr.InMessage() {
			c.msgStart = now
		}
		switch ev {
		case End:
			c.gotFirst, c.lastActive = true, now
			if c.hold {
				c.inspect()
			}
		case KeepAlive:
			c.lastActive = now
		case Ping:
			c.lastActive = now
			// A failed pong shows on the next read.
			_ = c.write([]byte("\r\n"))
		case TooLarge:
			return out, cTooLarge
		case Malformed:
			return out, cMalformed
		}
	}
	return out, cNone
}

// inspect shows the message held back, now complete, to Config.Tap and
// Config.Inspect: passed on (queued for Read), or dropped; its answer, if
// any, written.
func (c *conn) inspect() {
	if c.tap != nil {
		c.tap(c.held, false, c.local, c.remote)
	}
	pass := true
	if c.insp != nil {
		var answer []byte
		pass, answer = c.insp(c.held, c.Transport(), c.Remote())
		if answer != nil {
			// A failed write shows on the next read.
			_ = c.write(answer)
		}
	}
	if pass && c.divert != nil && c.divert(c.held, c) {
		pass = false
	}
	if pass {
		c.out = append(c.out, c.held...)
	}
	c.held = c.held[:0]
}

// drain moves the bytes of the messages Inspect let through into b and
// returns how many.
func (c *conn) drain(b []byte) int {
	n := copy(b, c.out[c.outOff:])
	c.outOff += n
	if c.outOff == len(c.out) {
		c.out, c.outOff = c.out[:0], 0
	}
	return n
}

// Write writes b and shows what was written to Config.Tap (net.Conn).
func (c *conn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if c.tap != nil && n > 0 {
		c.tap(b[:n], true, c.local, c.remote)
	}
	return n, err
}

// addrPort is a's address and port, IPv4-mapped addresses unmapped; zero
// for an address of no IP.
func addrPort(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// write sends b under writeTimeout. Writes of the SIP stack have no
// deadline, so the deadline is cleared again.
func (c *conn) write(b []byte) error {
	return c.writeWithin(b, writeTimeout)
}

// handshake runs the TLS handshake under HandshakeTimeout.
func (c *conn) handshake() error {
	c.handshook = true
	if c.lim.HandshakeTimeout > 0 {
		_ = c.tls.SetDeadline(time.Now().Add(c.lim.HandshakeTimeout))
	}
	err := c.tls.Handshake()
	_ = c.tls.SetDeadline(time.Time{})
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return c.stop(cHandshake, nil)
		}
		return c.stop(cTLSFailed, err)
	}
	c.since = time.Now() // the first message is due after the handshake
	return nil
}

// stop closes the connection for the reason why, answering 513 first when
// it is a message too large, and returns the error Read reports. It wraps
// net.ErrClosed: the connection was closed on purpose, which the SIP stack
// takes for a normal end.
func (c *conn) stop(why counter, cause error) error {
	c.g.counts[why].Add(1)
	if why == cTooLarge {
		if head, all := c.fr.Kept(); all {
			if res := TooLargeResponse(head, c.RemoteAddr().String()); res != nil {
				_ = c.write(res)
			}
		}
	}
	_ = c.Close()
	reason := counterReasons[why]
	c.g.log.Debug("tcp connection closed", "reason", reason, "source", c.src.String(), "error", cause)
	if cause != nil {
		return fmt.Errorf("%s: %v: %w", reason, cause, net.ErrClosed)
	}
	return fmt.Errorf("%s: %w", reason, net.ErrClosed)
}
