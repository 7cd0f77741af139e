package wsgate

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// conn is an upgraded connection as sipgo's WS transport sees it.
//
// sipgo runs its own upgrade on every connection it accepts: Read first
// returns a synthetic upgrade request and Write drops its 101 answer.
// Then Read returns each complete message of the client as one masked
// text frame (zero mask: the payload is plain), and Write sends sipgo's
// frames whole, one at a time with the frames the connection writes itself
// (Pong, Ping, Close).
type conn struct {
	l      *Listener
	raw    net.Conn // TCP or TLS
	br     *bufio.Reader
	remote netip.AddrPort
	peer   tcpguard.Peer
	user   string

	replay   []byte        // rest of the synthetic upgrade request
	answer   []byte        // sipgo's 101 so far
	ready    chan struct{} // closed once sipgo's 101 has been dropped
	upgraded bool          // Write: sipgo's upgrade is over

	pending []byte // Read: the frame for sipgo being read
	msg     []byte // the fragmented message being joined
	inMsg   bool
	out     []byte // Write: sipgo's frame so far (header and payload come in separate writes)

	wmu       sync.Mutex // one frame at a time on raw
	last      atomic.Int64
	closed    chan struct{}
	closeOnce sync.Once
	closeWhy  atomic.Value // string: reason the gate closed it
}

func newConn(l *Listener, raw net.Conn, br *bufio.Reader, remote netip.AddrPort, peer tcpguard.Peer, user string) *conn {
	key := make([]byte, 16)
	binary.BigEndian.PutUint64(key, uint64(time.Now().UnixNano()))
	c := &conn{l: l, raw: raw, br: br, remote: remote, peer: peer, user: user,
		ready: make(chan struct{}), closed: make(chan struct{})}
	c.replay = []byte("GET / HTTP/1.1\r\nHost: authproxy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key) + "\r\n\r\n")
	c.last.Store(time.Now().UnixNano())
	return c
}

// start runs the pinger once sipgo owns the connection.
func (c *conn) start() {
	if c.l.g.cfg.Limits.PingInterval > 0 {
		go c.pinger(c.l.g.cfg.Limits.PingInterval)
	}
}

// pinger sends a Ping whenever the client was quiet for every, until the
// connection closes.
func (c *conn) pinger(every time.Duration) {
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case now := <-t.C:
			if now.Sub(time.Unix(0, c.last.Load())) >= every {
				if err := c.writeFrame(ws.OpPing, nil); err != nil {
					_ = c.Close()
					return
				}
			}
		}
	}
}

func (c *conn) Read(b []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(b, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	select {
	case <-c.ready:
	case <-c.closed:
		return 0, net.ErrClosed
	}
	for len(c.pending) == 0 {
		msg, err := c.nextMessage()
		if err != nil {
			return 0, err
		}
		if msg != nil {
			c.pending = sipgoFrame(msg)
		}
	}
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// sipgoFrame is msg as the single masked text frame sipgo's server-side
// reader accepts.
func sipgoFrame(msg []byte) []byte {
	var buf bytes.Buffer
	_ = ws.WriteHeader(&buf, ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Length: int64(len(msg))})
	buf.Write(msg)
	return buf.Bytes()
}

// errClosedByGate ends sipgo's read loop without an error line of its own:
// the gate logged why.
var errClosedByGate = io.EOF

// nextMessage reads frames until a message is complete and returns it; nil
// without error when the frame was a control frame or the message was
// dropped by Inspect.
func (c *conn) nextMessage() ([]byte, error) {
	lim := c.l.g.cfg.Limits
	if lim.IdleTimeout > 0 {
		_ = c.raw.SetReadDeadline(time.Unix(0, c.last.Load()).Add(lim.IdleTimeout))
	}
	hdr, err := ws.ReadHeader(c.br)
	if err != nil {
		return nil, c.readFailed(err)
	}
	c.last.Store(time.Now().UnixNano())
	if rf := protocolFault(hdr, c.inMsg); rf != "" {
		return nil, c.closeWith(ws.StatusProtocolError, rf, ReasonProtocol)
	}
	if hdr.OpCode.IsControl() {
		return nil, c.control(hdr)
	}
	if int64(len(c.msg))+hdr.Length > int64(lim.MaxMessageSize) {
		// RFC 6455 §7.4.1 1009: refused before a byte of it is buffered.
		return nil, c.closeWith(ws.StatusMessageTooBig, "message too big", ReasonTooLarge)
	}
	start := len(c.msg)
	c.msg = append(c.msg, make([]byte, hdr.Length)...)
	if _, err := io.ReadFull(c.br, c.msg[start:]); err != nil {
		return nil, c.readFailed(err)
	}
	ws.Cipher(c.msg[start:], hdr.Mask, 0)
	if !hdr.Fin {
		c.inMsg = true
		return nil, nil
	}
	msg := c.msg
	c.msg, c.inMsg = nil, false
	keepAlive := len(bytes.Trim(msg, "\r\n")) == 0
	if tap := c.l.g.cfg.Tap; tap != nil && !keepAlive {
		tap(msg, false, addrPort(c.raw.LocalAddr()), c.remote)
	}
	if in := c.l.g.cfg.Inspect; in != nil && !keepAlive {
		pass, answer := in(msg, c.l.cfg.Transport, c.remote)
		if answer != nil {
			if err := c.writeFrame(ws.OpText, answer); err != nil {
				return nil, err
			}
			c.tapSent(answer)
		}
		if !pass {
			return nil, nil
		}
	}
	return msg, nil
}

// protocolFault names what makes hdr break RFC 6455 §5, or "".
func protocolFault(hdr ws.Header, inMsg bool) string {
	switch {
	case hdr.Rsv != 0:
		return "reserved bits set (no extension negotiated)"
	case !hdr.Masked:
		return "client frame not masked (RFC 6455 section 5.1)"
	case hdr.OpCode.IsReserved():
		return "reserved opcode"
	case hdr.OpCode.IsControl() && (hdr.Length > ws.MaxControlFramePayloadSize || !hdr.Fin):
		return "control frame fragmented or too long"
	case hdr.OpCode == ws.OpContinuation && !inMsg:
		return "continuation without a message"
	case (hdr.OpCode == ws.OpText || hdr.OpCode == ws.OpBinary) && inMsg:
		return "new message inside a fragmented one"
	}
	return ""
}

// control handles a Ping, Pong or Close frame (RFC 6455 §5.5).
func (c *conn) control(hdr ws.Header) error {
	payload := make([]byte, hdr.Length)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return c.readFailed(err)
	}
	ws.Cipher(payload, hdr.Mask, 0)
	switch hdr.OpCode {
	case ws.OpPing:
		return c.writeFrame(ws.OpPong, payload)
	case ws.OpClose:
		// Echo the status code (§5.5.1) and close.
		code := ws.StatusNormalClosure
		if len(payload) >= 2 {
			code = ws.StatusCode(binary.BigEndian.Uint16(payload))
		}
		_ = c.writeFrame(ws.OpClose, ws.NewCloseFrameBody(code, ""))
		return errClosedByGate
	}
	return nil // a Pong: activity, noted
}

// readFailed maps a read error to what sipgo's read loop gets: an idle
// timeout is counted and closes quietly.
func (c *conn) readFailed(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		select {
		case <-c.closed:
		default:
			c.closeWhy.Store(ReasonIdle)
			c.l.g.closedFor(ReasonIdle)
			c.l.g.log.Debug("websocket closed", "reason", ReasonIdle, "source", c.remote.String())
		}
		return errClosedByGate
	}
	return err
}

// closeWith sends a Close frame with code and returns the error that ends
// sipgo's read loop (which then closes the connection).
func (c *conn) closeWith(code ws.StatusCode, text, reason string) error {
	c.closeWhy.Store(reason)
	c.l.g.closedFor(reason)
	c.l.g.log.Debug("websocket closed", "reason", reason, "detail", text, "source", c.remote.String())
	_ = c.writeFrame(ws.OpClose, ws.NewCloseFrameBody(code, text))
	return errClosedByGate
}

// writeFrame sends one frame of the connection's own.
func (c *conn) writeFrame(op ws.OpCode, payload []byte) error {
	var buf bytes.Buffer
	if err := ws.WriteFrame(&buf, ws.NewFrame(op, true, payload)); err != nil {
		return err
	}
	return c.writeRaw(buf.Bytes())
}

func (c *conn) writeRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.raw.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := c.raw.Write(b)
	return err
}

// Write takes what sipgo writes: its 101 answer (dropped), then frames,
// each sent once whole.
func (c *conn) Write(b []byte) (int, error) {
	if !c.upgraded {
		c.answer = append(c.answer, b...)
		if bytes.Contains(c.answer, []byte("\r\n\r\n")) {
			c.upgraded, c.answer = true, nil
			close(c.ready)
		}
		return len(b), nil
	}
	c.out = append(c.out, b...)
	for len(c.out) > 0 {
		hdr, err := ws.ReadHeader(bytes.NewReader(c.out))
		if err != nil {
			return len(b), nil // header incomplete
		}
		head := ws.HeaderSize(hdr)
		size := head + int(hdr.Length)
		if len(c.out) < size {
			return len(b), nil // payload to come
		}
		if err := c.writeRaw(c.out[:size]); err != nil {
			c.out = nil
			return 0, err
		}
		if hdr.OpCode == ws.OpText || hdr.OpCode == ws.OpBinary {
			c.tapSent(c.out[head:size]) // sipgo's frames are unmasked
		}
		c.out = c.out[size:]
	}
	c.out = nil
	return len(b), nil
}

// tapSent shows a SIP message written on the connection to Config.Tap.
func (c *conn) tapSent(msg []byte) {
	if tap := c.l.g.cfg.Tap; tap != nil && len(bytes.Trim(msg, "\r\n")) > 0 {
		tap(msg, true, addrPort(c.raw.LocalAddr()), c.remote)
	}
}

// addrPort is a's address and port, IPv4-mapped addresses unmapped.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// Close closes the connection once, releases its place in the caps and
// tells OnClose.
func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closed)
		// The connection's place and bindings go before the peer sees it
		// closed: whoever reconnects finds them free.
		g := c.l.g
		g.admission.Release(c.remote.Addr(), c.peer)
		if c.user != "" {
			g.mu.Lock()
			delete(g.users, c.remote)
			g.mu.Unlock()
		}
		if g.cfg.OnClose != nil {
			g.cfg.OnClose(c.l.cfg.Transport, c.remote)
		}
		err = c.raw.Close()
	})
	return err
}

func (c *conn) LocalAddr() net.Addr  { return c.raw.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }

// SetDeadline and its kin are no-ops: the connection keeps its own
// deadlines (idle, write), whatever sipgo asks for.
func (c *conn) SetDeadline(time.Time) error      { return nil }
func (c *conn) SetReadDeadline(time.Time) error  { return nil }
func (c *conn) SetWriteDeadline(time.Time) error { return nil }
