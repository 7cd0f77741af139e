package tcpguard

import (
	"io"
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
