package tcpguard

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// Stream is an inbound connection as Config.Divert sees it: where it comes
// from, over what, and a way to write a message on it later, from any
// goroutine, after Divert returned. The SIP stack's own writes on the
// connection are whole messages in one Write each (sipgo's WriteMsg), and
// so are WriteMessage's: the kernel (TCP) and crypto/tls (TLS) write each
// call whole, so the messages never interleave (RFC 3261 §18.3 frames
// them by Content-Length).
type Stream interface {
	// Transport is "TCP" or "TLS".
	Transport() string
	// Remote is the client's address and port (unmapped); RemoteAddr its
	// net.Addr, as the SIP stack reports it as a request's source.
	Remote() netip.AddrPort
	RemoteAddr() net.Addr
	// WriteMessage writes one complete message, under StreamWriteTimeout;
	// a write that does not complete in time closes the connection (a
	// message cut short would break the framing of all that follow).
	WriteMessage(b []byte) error
	// Closed reports whether the connection was closed, by either side
	// (the SIP stack closes it once a read fails).
	Closed() bool
}

// StreamWriteTimeout bounds a write of WriteMessage. Over TCP it only
// runs out when the client has left the kernel's buffers full (it has not
// read megabytes of responses; writeNow): the writer, which may be the
// goroutine reading a UDP socket for every client, is not held longer,
// and the connection is closed.
const StreamWriteTimeout = 50 * time.Millisecond

var _ Stream = (*conn)(nil)

// Transport is "TCP" or "TLS" (Stream).
func (c *conn) Transport() string {
	if c.tls != nil {
		return "TLS"
	}
	return "TCP"
}

// Remote is the client's address and port (Stream).
func (c *conn) Remote() netip.AddrPort {
	if ap := addrPort(c.RemoteAddr()); ap.IsValid() {
		return ap
	}
	return netip.AddrPortFrom(c.src, 0)
}

// WriteMessage writes b, one complete message, under StreamWriteTimeout,
// and closes the connection when it fails (Stream). When one of the
// guard's own writes holds the connection (a keep-alive reply or an
// answer, under writeTimeout, blocked by a client that does not read), a
// copy of b is written by a goroutine of its own instead, so that the
// caller is never held up to writeTimeout; that goroutine ends with the
// guard's write, within writeTimeout.
func (c *conn) WriteMessage(b []byte) error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	if !c.wmu.TryLock() {
		msg := bytes.Clone(b)
		go func() {
			c.wmu.Lock()
			defer c.wmu.Unlock()
			_ = c.writeMessageLocked(msg)
		}()
		return nil
	}
	defer c.wmu.Unlock()
	return c.writeMessageLocked(b)
}

// writeMessageLocked is WriteMessage's write, wmu held: what the kernel
// takes at once (writeNow), then the rest under StreamWriteTimeout.
func (c *conn) writeMessageLocked(b []byte) error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	n := c.writeNow(b)
	if n == len(b) {
		return nil
	}
	if err := c.writeWithinLocked(b[n:], StreamWriteTimeout); err != nil {
		_ = c.Close()
		return fmt.Errorf("write message: %w", err)
	}
	return nil
}

// writeNow writes as much of b as a plain TCP connection's send buffer
// takes without waiting, and returns how much that was (0 over TLS, or
// for a connection of no socket). A write deadline is checked before the
// write is tried: on a busy machine the writer may be descheduled past a
// short one between setting it and writing, and a healthy client whose
// buffers have room would lose its connection. Written this way, only a
// client that has left the buffers full meets StreamWriteTimeout. No
// deadline is pending here (the guard sets them only with wmu held, as
// the caller holds it, and clears them after): RawConn.Write checks one
// too.
func (c *conn) writeNow(b []byte) int {
	sc, ok := c.Conn.(syscall.Conn)
	if c.tls != nil || !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, err := syscall.Write(int(fd), b[n:])
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil || m <= 0 {
				break
			}
			n += m
		}
		return true // never wait: the rest goes under the deadline
	})
	if c.tap != nil && n > 0 {
		c.tap(b[:n], true, c.local, c.remote)
	}
	return n
}

// Closed reports whether Close was called (Stream).
func (c *conn) Closed() bool { return c.closed.Load() }

// writeWithin writes b under a write deadline of d from now, then clears
// the deadline: the SIP stack's writes have none. The guard's deadline
// writes hold wmu, so that one's clearing does not lift another's
// deadline.
func (c *conn) writeWithin(b []byte, d time.Duration) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeWithinLocked(b, d)
}

// writeWithinLocked is writeWithin with wmu held.
func (c *conn) writeWithinLocked(b []byte, d time.Duration) error {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(d))
	_, err := c.Write(b)
	_ = c.Conn.SetWriteDeadline(time.Time{})
	return err
}
