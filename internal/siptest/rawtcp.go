package siptest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/testutil"
)

// RawTCP is a SIP client on one TCP connection from a source address of
// the test's choosing, writing requests as text.
type RawTCP struct {
	Conn net.Conn
	par  *sip.ParserStream
	buf  []byte
}

// DialRaw connects to addr over TCP from the local address from; the
// connection closes when the test ends.
func DialRaw(t *testing.T, addr, from string) *RawTCP {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &RawTCP{Conn: c, par: sip.NewParser().NewSIPStream(), buf: make([]byte, 64<<10)}
}

// Message is a MESSAGE to pbx-a with a body of size bytes, sent from r's
// address.
func (r *RawTCP) Message(callID string, size int) string {
	return fmt.Sprintf("MESSAGE sip:1001@pbx-a.example.com SIP/2.0\r\n"+
		"Via: SIP/2.0/TCP %s;branch=z9hG4bK-%s;rport\r\nMax-Forwards: 70\r\n"+
		"From: <sip:1001@pbx-a.example.com>;tag=%s\r\nTo: <sip:1001@pbx-a.example.com>\r\n"+
		"Call-ID: %s\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
		r.Conn.LocalAddr(), callID, callID, callID, size, strings.Repeat("m", size))
}

// Write sends s as it is.
func (r *RawTCP) Write(t *testing.T, s string) {
	t.Helper()
	if _, err := r.Conn.Write([]byte(s)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// Final reads until a final response arrives and returns it.
func (r *RawTCP) Final(t *testing.T) *sip.Response {
	t.Helper()
	_ = r.Conn.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	for {
		n, err := r.Conn.Read(r.buf)
		if err != nil {
			t.Fatalf("no final response: %v", err)
		}
		var final *sip.Response
		perr := r.par.ParseSIPStream(r.buf[:n], func(m sip.Message) {
			if res, ok := m.(*sip.Response); ok && !res.IsProvisional() && final == nil {
				final = res
			}
		})
		if perr != nil && !errors.Is(perr, sip.ErrParseSipPartial) {
			t.Fatalf("parse response: %v", perr)
		}
		if final != nil {
			return final
		}
	}
}

// Works sends a MESSAGE over r and checks it gets the 200 pbx-a answers
// once authproxy answered its challenge.
func (r *RawTCP) Works(t *testing.T, callID string) {
	t.Helper()
	r.Write(t, r.Message(callID, 5))
	if res := r.Final(t); res.StatusCode != 200 || res.CallID().Value() != callID {
		t.Fatalf("%s: %d %s, want 200", callID, res.StatusCode, res.Reason)
	}
}

// ClosedByPeer reads until authproxy closes the connection and returns
// what it read on the way.
func (r *RawTCP) ClosedByPeer(t *testing.T) string {
	t.Helper()
	_ = r.Conn.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	b, err := io.ReadAll(r.Conn)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection not closed by authproxy: %v (read %q)", err, b)
	}
	return string(b)
}
