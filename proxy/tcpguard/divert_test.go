package tcpguard

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/testutil"
)

// With Config.Divert, a message it takes never reaches the SIP stack, the
// others do, in order; the Stream it was given writes whole messages on
// the connection later, from another goroutine; it tells the transport
// and the client's address, and reports the connection closed once it is.
func TestConn_Divert(t *testing.T) {
	streams := make(chan Stream, 1)
	g := New(Config{
		Limits: Limits{IdleTimeout: time.Hour},
		Divert: func(msg []byte, s Stream) bool {
			if !strings.Contains(string(msg), "Call-ID: diverted") {
				return false
			}
			streams <- s
			return true
		},
	})
	s := serve(t, g, nil)
	c := dial(t, s.addr, "127.0.0.1")
	if _, err := c.Write([]byte(request("first") + request("diverted") + request("second"))); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the server reads the second message", func() bool { return s.received("Call-ID: second") })
	if got, want := s.read(0), request("first")+request("second"); got != want {
		t.Fatalf("the server read %q, want the messages not diverted %q", got, want)
	}
	st := <-streams
	if st.Transport() != "TCP" || st.Remote().String() != c.LocalAddr().String() || st.RemoteAddr().String() != c.LocalAddr().String() {
		t.Fatalf("stream %s from %s (%s), want TCP from %s", st.Transport(), st.Remote(), st.RemoteAddr(), c.LocalAddr())
	}
	answer := "SIP/2.0 200 OK\r\nCall-ID: diverted\r\nContent-Length: 0\r\n\r\n"
	done := make(chan error, 1)
	go func() { done <- st.WriteMessage([]byte(answer)) }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	got := make([]byte, len(answer))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != answer {
		t.Fatalf("client read %q, %v; want %q", got, err, answer)
	}
	if st.Closed() {
		t.Fatal("stream closed while the connection is open")
	}
	c.Close()
	testutil.Eventually(t, "the stream closed", st.Closed)
	if err := st.WriteMessage([]byte(answer)); err == nil {
		t.Fatal("a write on a closed stream succeeded")
	}
}

// TestConn_WriteMessageWhileGuardWrites checks that WriteMessage does not
// wait for one of the guard's own writes holding the connection (which a
// client that does not read can hold for writeTimeout): it returns at once
// and its message follows the guard's.
func TestConn_WriteMessageWhileGuardWrites(t *testing.T) {
	streams := make(chan Stream, 1)
	g := New(Config{
		Limits: Limits{IdleTimeout: time.Hour},
		Divert: func(msg []byte, s Stream) bool {
			streams <- s
			return true
		},
	})
	s := serve(t, g, nil)
	c := dial(t, s.addr, "127.0.0.1")
	if _, err := c.Write([]byte(request("diverted"))); err != nil {
		t.Fatal(err)
	}
	st := <-streams
	cn, ok := st.(*conn)
	if !ok {
		t.Fatalf("stream is a %T, want *conn", st)
	}
	answer := "SIP/2.0 200 OK\r\nCall-ID: diverted\r\nContent-Length: 0\r\n\r\n"
	cn.wmu.Lock() // a guard write in progress
	done := make(chan error, 1)
	go func() { done <- st.WriteMessage([]byte(answer)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testutil.EventuallyLimit):
		cn.wmu.Unlock()
		t.Fatal("WriteMessage waited for the guard's write")
	}
	cn.wmu.Unlock()
	_ = c.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	got := make([]byte, len(answer))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != answer {
		t.Fatalf("client read %q, %v; want %q", got, err, answer)
	}
}

// divertedStream serves a guard that diverts every message, sends one
// from a new client, and returns the client's connection and the guard's
// side of it.
func divertedStream(t *testing.T) (net.Conn, *conn) {
	t.Helper()
	streams := make(chan Stream, 1)
	g := New(Config{
		Limits: Limits{IdleTimeout: time.Hour},
		Divert: func(msg []byte, s Stream) bool {
			streams <- s
			return true
		},
	})
	s := serve(t, g, nil)
	c := dial(t, s.addr, "127.0.0.1")
	if _, err := c.Write([]byte(request("diverted"))); err != nil {
		t.Fatal(err)
	}
	cn, ok := (<-streams).(*conn)
	if !ok {
		t.Fatal("stream is no *conn")
	}
	return c, cn
}

// A message the send buffer takes goes out whole at once (writeNow),
// with no deadline set: a writer descheduled between setting a short
// deadline and writing would otherwise lose a client that reads.
func TestConn_WriteMessageAtOnce(t *testing.T) {
	c, cn := divertedStream(t)
	answer := "SIP/2.0 200 OK\r\nCall-ID: diverted\r\nContent-Length: 0\r\n\r\n"
	if n := cn.writeNow([]byte(answer)); n != len(answer) {
		t.Fatalf("wrote %d of %d bytes at once", n, len(answer))
	}
	_ = c.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	got := make([]byte, len(answer))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != answer {
		t.Fatalf("client read %q, %v; want %q", got, err, answer)
	}
	if cn.Closed() {
		t.Fatal("connection closed")
	}
}

// A client that never reads fills the kernel's buffers: WriteMessage
// then writes the rest under StreamWriteTimeout, fails, and closes the
// connection instead of holding its caller.
func TestConn_WriteMessageClientNotReading(t *testing.T) {
	_, cn := divertedStream(t)
	msg := []byte("SIP/2.0 200 OK\r\nCall-ID: diverted\r\nContent-Length: 0\r\n" + strings.Repeat("X-Fill: "+strings.Repeat("x", 1000)+"\r\n", 60) + "\r\n")
	var err error
	for i := 0; i < 100_000 && err == nil; i++ {
		err = cn.WriteMessage(msg)
	}
	if err == nil {
		t.Fatal("every write succeeded to a client that never reads")
	}
	if !cn.Closed() {
		t.Fatalf("connection open after the write failed (%v)", err)
	}
}
