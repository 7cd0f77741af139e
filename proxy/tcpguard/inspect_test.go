package tcpguard

import (
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/testutil"
)

// With Config.Inspect, the SIP stack reads only the complete messages the
// inspector lets through, in order, sent in pieces or several per write;
// a refused message is dropped and its answer written on the connection,
// which stays open. The inspector is told the transport and the
// connection's remote address.
func TestConn_Inspect(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	inspect := func(msg []byte, transport string, from netip.AddrPort) (bool, []byte) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, transport+" "+from.Addr().String())
		if strings.Contains(string(msg), "Call-ID: refused") {
			return false, []byte("SIP/2.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
		}
		return true, nil
	}
	g := New(Config{Limits: Limits{IdleTimeout: time.Hour}, Inspect: inspect})
	s := serve(t, g, nil)
	c := dial(t, s.addr, "127.0.0.1")
	first := request("first")
	for i := range first { // a byte at a time: nothing before the last
		if _, err := c.Write([]byte{first[i]}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, "the server reads the first message", func() bool { return s.received("Call-ID: first") })
	if _, err := c.Write([]byte(request("refused") + request("second"))); err != nil {
		t.Fatal(err)
	}
	answer := make([]byte, len("SIP/2.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n"))
	_ = c.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	if _, err := io.ReadFull(c, answer); err != nil || !strings.HasPrefix(string(answer), "SIP/2.0 403 ") {
		t.Fatalf("answer %q, %v; want the inspector's 403", answer, err)
	}
	testutil.Eventually(t, "the server reads the second message", func() bool { return s.received("Call-ID: second") })
	if got, want := s.read(0), request("first")+request("second"); got != want {
		t.Fatalf("the server read %q, want the messages let through %q", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen[0] != "TCP 127.0.0.1" {
		t.Fatalf("inspector saw %q, want 3 messages over TCP from 127.0.0.1", seen)
	}
}
