package tcpguard

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/testutil"
)

// tapped is one call of Config.Tap.
type tapped struct {
	msg           string
	sent          bool
	local, remote netip.AddrPort
}

// With Config.Tap and no Inspect, the tap sees each complete message read
// (sent in pieces or several per write) and each write on the connection,
// the guard's CRLF pong included, with the connection's addresses; the SIP
// stack reads every message unchanged.
func TestConn_Tap(t *testing.T) {
	var mu sync.Mutex
	var taps []tapped
	g := New(Config{Tap: func(msg []byte, sent bool, local, remote netip.AddrPort) {
		mu.Lock()
		defer mu.Unlock()
		taps = append(taps, tapped{string(msg), sent, local, remote})
	}})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := g.Listen(inner, nil)
	defer ln.Close()
	c := dial(t, inner.Addr().String(), "127.0.0.1")
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	read := make(chan string, 1)
	want := request("one") + request("two")
	go func() {
		b := make([]byte, len(want))
		_, _ = io.ReadFull(sc, b)
		read <- string(b)
	}()
	one := request("one")
	if _, err := c.Write([]byte(one[:10])); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(one[10:] + "\r\n\r\n" + request("two"))); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-read:
		if got != want {
			t.Fatalf("the SIP stack read %q, want %q", got, want)
		}
	case <-time.After(testutil.EventuallyLimit):
		t.Fatal("the SIP stack read nothing")
	}
	response := "SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
	if _, err := sc.Write([]byte(response)); err != nil {
		t.Fatal(err)
	}
	local := netip.MustParseAddrPort(inner.Addr().String())
	remote := netip.MustParseAddrPort(c.LocalAddr().String())
	wantTaps := []tapped{
		{request("one"), false, local, remote},
		{"\r\n", true, local, remote}, // the pong to the ping between them
		{request("two"), false, local, remote},
		{response, true, local, remote},
	}
	testutil.Eventually(t, "four taps", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(taps) >= len(wantTaps)
	})
	mu.Lock()
	defer mu.Unlock()
	for i, w := range wantTaps {
		if taps[i] != w {
			t.Errorf("tap %d = %+v, want %+v", i, taps[i], w)
		}
	}
}
