package wsgate

import (
	"bufio"
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// sinkConn is a net.Conn that takes every write (the connection's Pongs
// and Close frames) and has nothing to read.
type sinkConn struct{ net.Conn }

func (sinkConn) Write(b []byte) (int, error)      { return len(b), nil }
func (sinkConn) SetReadDeadline(time.Time) error  { return nil }
func (sinkConn) SetWriteDeadline(time.Time) error { return nil }
func (sinkConn) Close() error                     { return nil }
func (sinkConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5000} }
func (sinkConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080} }
func (sinkConn) SetDeadline(time.Time) error      { return nil }
func (sinkConn) Read(b []byte) (int, error)       { return 0, net.ErrClosed }

// FuzzFrames feeds arbitrary bytes to a connection's frame reader as a
// client's stream: it must never panic, never return a message over the
// maximum, and never buffer more than the maximum for a message in
// progress, whatever lengths the frame headers announce.
func FuzzFrames(f *testing.F) {
	frame := func(fr ws.Frame) []byte {
		var b bytes.Buffer
		_ = ws.WriteFrame(&b, fr)
		return b.Bytes()
	}
	msg := []byte("OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n")
	f.Add(frame(ws.MaskFrame(ws.NewTextFrame(msg))))
	f.Add(frame(ws.MaskFrame(ws.NewBinaryFrame(msg))))
	f.Add(append(frame(ws.MaskFrame(ws.NewFrame(ws.OpText, false, msg[:10]))),
		append(frame(ws.MaskFrame(ws.NewPingFrame([]byte("p")))), frame(ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, msg[10:])))...)...))
	f.Add(frame(ws.NewTextFrame(msg)))
	var huge bytes.Buffer
	_ = ws.WriteHeader(&huge, ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Length: 1 << 40})
	f.Add(huge.Bytes())
	const max = 4096
	f.Fuzz(func(t *testing.T, data []byte) {
		g := New(Config{Limits: Limits{MaxMessageSize: max}})
		l := &Listener{g: g, cfg: ListenerConfig{Transport: "WS"}}
		c := newConn(l, sinkConn{}, bufio.NewReader(bytes.NewReader(data)), netip.MustParseAddrPort("192.0.2.1:5000"), tcpguard.Client, "")
		for range 64 {
			m, err := c.nextMessage()
			if len(m) > max || len(c.msg) > max {
				t.Fatalf("message of %d bytes, %d buffered: over the maximum %d", len(m), len(c.msg), max)
			}
			if err != nil {
				return
			}
		}
	})
}
