package proxy

import (
	"net"
	"net/netip"

	"github.com/authproxy/authproxy/proxy/hep"
	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// tapStream is the TCP and TLS listeners' tap (tcpguard.Config.Tap): each
// message a connection reads or writes, to the capture. It is set only
// when capture is on.
func (p *Proxy) tapStream(msg []byte, sent bool, local, remote netip.AddrPort) {
	if sent {
		p.capture.Load().tap(msg, hep.ProtoTCP, local, remote)
		return
	}
	p.capture.Load().tap(msg, hep.ProtoTCP, remote, local)
}

// capturedConn shows the messages of a connection authproxy made itself
// (a TLS connection to an upstream, tlsconn.go) to the capture: each
// write (sipgo writes one message per call) and each message read, framed
// as tcpguard frames a stream (RFC 3261 §18.3). Read is called from one
// goroutine, sipgo's reader of the connection.
type capturedConn struct {
	net.Conn
	c             *capturer
	local, remote netip.AddrPort
	fr            tcpguard.Framer
	msg           []byte // the message being read
	lost          bool   // the framing broke: nothing more is captured
}

// captureConn wraps conn for c; conn itself when capture is off.
func captureConn(conn net.Conn, c *capturer) net.Conn {
	if c == nil {
		return conn
	}
	cc := &capturedConn{Conn: conn, c: c, local: addrPortOf(conn.LocalAddr()), remote: addrPortOf(conn.RemoteAddr())}
	cc.fr.MaxSize = MaxMessageSize
	return cc
}

// Read reads from the connection and captures each message completed.
func (cc *capturedConn) Read(b []byte) (int, error) {
	n, err := cc.Conn.Read(b)
	for data := b[:n]; len(data) > 0 && !cc.lost; {
		k, msg, ev := cc.fr.Next(data)
		if msg {
			cc.msg = append(cc.msg, data[:k]...)
		}
		data = data[k:]
		switch ev {
		case tcpguard.End:
			cc.c.tap(cc.msg, hep.ProtoTCP, cc.remote, cc.local)
			cc.msg = cc.msg[:0]
		case tcpguard.TooLarge, tcpguard.Malformed:
			// sipgo's parser fails the connection too; stop following it.
			cc.lost, cc.msg = true, nil
		}
	}
	return n, err
}

// Write writes b and captures it.
func (cc *capturedConn) Write(b []byte) (int, error) {
	n, err := cc.Conn.Write(b)
	if n > 0 {
		cc.c.tap(b[:n], hep.ProtoTCP, cc.local, cc.remote)
	}
	return n, err
}
