package scenarios

// Attacks on the TCP and TLS listeners, in process: each test configures
// short limits, attacks, and waits for the event that proves the defence
// (the connection closed, a counter moved), never for time to pass.

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/tcpguard"
)

func forwarded(h *harness, callID string) bool {
	for _, r := range h.A.Requests() {
		if r.CallID == callID {
			return true
		}
	}
	return false
}

// TestTCPSlowloris: a header trickled a byte at a time does not hold the
// connection past the message deadline.
func TestTCPSlowloris(t *testing.T) {
	h := startHarness(t, harnessOptions{TCP: tcpguard.Limits{MessageTimeout: 300 * time.Millisecond, IdleTimeout: time.Hour}})
	r := siptest.DialRaw(t, h.Addr["tcp"], "127.0.0.1")
	r.Works(t, "before-the-trickle")
	go func() {
		for _, b := range []byte(r.Message("trickled", 100) + strings.Repeat("X", 1<<20)) {
			if _, err := r.Conn.Write([]byte{b}); err != nil {
				return // closed: what the test waits for
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	r.ClosedByPeer(t)
	if n := h.Proxy.TCPStats().Closed[tcpguard.ReasonMessage]; n != 1 {
		t.Fatalf("closed by the message deadline: %d, want 1", n)
	}
	if forwarded(h, "trickled") {
		t.Fatal("the trickled request was forwarded")
	}
}

// TestTCPPartialMessageFlood: connections holding 60 kB of a header block
// that never ends are all closed by the message deadline; the memory they
// held goes with them (counted by the open connections, not the heap).
func TestTCPPartialMessageFlood(t *testing.T) {
	const conns = 100
	h := startHarness(t, harnessOptions{TCP: tcpguard.Limits{MessageTimeout: time.Second, IdleTimeout: time.Hour}})
	head := []byte("OPTIONS sip:pbx-a.example.com SIP/2.0\r\n")
	for i := 0; len(head) < 60<<10; i++ {
		head = fmt.Appendf(head, "X-Pad-%d: %s\r\n", i, strings.Repeat("p", 100))
	}
	var wg sync.WaitGroup
	clients := make([]*siptest.RawTCP, conns)
	for i := range conns {
		clients[i] = siptest.DialRaw(t, h.Addr["tcp"], fmt.Sprintf("127.0.1.%d", 1+i%50))
		wg.Go(func() { _, _ = clients[i].Conn.Write(head) })
	}
	wg.Wait()
	for _, c := range clients {
		c.ClosedByPeer(t)
	}
	testutil.Eventually(t, "no TCP connection open", func() bool { return h.Proxy.TCPStats().Open == 0 })
	if n := h.Proxy.TCPStats().Closed[tcpguard.ReasonMessage]; n != conns {
		t.Fatalf("closed by the message deadline: %d, want %d", n, conns)
	}
}

// TestTCPConnectionCaps: the connection over a cap is closed at once,
// without an answer, while those under it go on working; a configured
// upstream's connection does not count.
func TestTCPConnectionCaps(t *testing.T) {
	for _, tc := range []struct {
		name    string
		limits  tcpguard.Limits
		sources []string
		over    string
		reason  string
	}{
		{"PerSource", tcpguard.Limits{MaxConnsPerSource: 2}, []string{"127.0.0.1", "127.0.0.1", "127.0.0.4"}, "127.0.0.1", tcpguard.ReasonPerSourceLimit},
		{"Total", tcpguard.Limits{MaxConns: 3}, []string{"127.0.0.4", "127.0.0.5", "127.0.0.6"}, "127.0.0.7", tcpguard.ReasonTotalLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, harnessOptions{TCP: tc.limits})
			var under []*siptest.RawTCP
			for i, src := range tc.sources {
				r := siptest.DialRaw(t, h.Addr["tcp"], src)
				r.Works(t, fmt.Sprintf("under-%d", i))
				under = append(under, r)
			}
			over := siptest.DialRaw(t, h.Addr["tcp"], tc.over)
			_, _ = over.Conn.Write([]byte(over.Message("over-the-cap", 5))) // may fail: the connection is closed at once
			if got := over.ClosedByPeer(t); got != "" {
				t.Fatalf("the connection over the cap was answered %q", got)
			}
			upstream := siptest.DialRaw(t, h.Addr["tcp"], "127.0.0.2") // pbx-a's address
			upstream.Write(t, upstream.Message("from-the-upstream", 5))
			if res := upstream.Final(t); res.CallID().Value() != "from-the-upstream" {
				t.Fatalf("the upstream's connection got %d %s", res.StatusCode, res.Reason)
			}
			for i, r := range under {
				r.Works(t, fmt.Sprintf("still-%d", i))
			}
			if st := h.Proxy.TCPStats(); st.Refused[tc.reason] != 1 {
				t.Fatalf("refused %v, want one %s", st.Refused, tc.reason)
			}
			if forwarded(h, "over-the-cap") {
				t.Fatal("the request over the cap was forwarded")
			}
		})
	}
}

// TestTCPMessageTooLarge: a request over the maximum size is answered 513
// (RFC 3261 §21.5.14) and its connection closed; nothing reaches the
// upstream.
func TestTCPMessageTooLarge(t *testing.T) {
	h := startHarness(t, harnessOptions{TCP: tcpguard.Limits{MaxMessageSize: 4096}})
	r := siptest.DialRaw(t, h.Addr["tcp"], "127.0.0.1")
	r.Works(t, "small")
	r.Write(t, r.Message("large", 8000))
	res := r.Final(t)
	if res.StatusCode != 513 || res.CallID().Value() != "large" {
		t.Fatalf("answer %d %s to %s, want 513 to the large request", res.StatusCode, res.Reason, res.CallID().Value())
	}
	r.ClosedByPeer(t)
	// Barrier: a request sent after it reaches pbx-a and is answered.
	siptest.DialRaw(t, h.Addr["tcp"], "127.0.0.1").Works(t, "after")
	if forwarded(h, "large") {
		t.Fatal("the large request reached the upstream")
	}
	if n := h.Proxy.TCPStats().Closed[tcpguard.ReasonTooLarge]; n != 1 {
		t.Fatalf("too large: %d, want 1", n)
	}
}

// TestTCPRefusedSource: a source no client group admits is disconnected at
// once, before anything is read, and gets no SIP answer at all.
func TestTCPRefusedSource(t *testing.T) {
	h := startHarness(t, harnessOptions{Clients: []proxy.ClientGroup{{
		Name: "one-host", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Upstreams: []string{"*"},
	}}})
	r := siptest.DialRaw(t, h.Addr["tcp"], "127.0.0.9")
	_, _ = r.Conn.Write([]byte(r.Message("refused", 5))) // may fail: the connection is closed at once
	if got := r.ClosedByPeer(t); got != "" {
		t.Fatalf("a refused source was answered %q", got)
	}
	if n := h.Proxy.TCPStats().Refused[tcpguard.ReasonSourceDenied]; n != 1 {
		t.Fatalf("refused for the source: %d, want 1", n)
	}
	siptest.DialRaw(t, h.Addr["tcp"], "127.0.0.1").Works(t, "admitted")
}

// TestTLSHandshakeNeverCompleted: a TLS connection that never finishes its
// handshake is closed by the handshake deadline.
func TestTLSHandshakeNeverCompleted(t *testing.T) {
	ca := newTestCA(t)
	h := startHarness(t, harnessOptions{
		ListenTLS: &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "127.0.0.1")}, MinVersion: tls.VersionTLS12},
		TCP:       tcpguard.Limits{HandshakeTimeout: 300 * time.Millisecond},
	})
	r := siptest.DialRaw(t, h.Addr["tls"], "127.0.0.1")
	r.Write(t, "\x16\x03\x01") // the start of a ClientHello, and no more
	r.ClosedByPeer(t)
	testutil.Eventually(t, "the handshake timeout counted", func() bool {
		return h.Proxy.TCPStats().Closed[tcpguard.ReasonHandshake] == 1
	})
}

// TestTCPUpstreamConnectionsNotCapped: the connections authproxy opens to
// upstreams are not inbound connections: with room for one connection, a
// client's request still goes out and comes back over TCP.
func TestTCPUpstreamConnectionsNotCapped(t *testing.T) {
	h := startHarness(t, harnessOptions{UpstreamTCP: true, TCP: tcpguard.Limits{MaxConns: 1}})
	r := siptest.DialRaw(t, h.Addr["tcp"], "127.0.0.1")
	r.Works(t, "to-a")
	r.Write(t, strings.ReplaceAll(r.Message("to-b", 5), "pbx-a.example.com", "pbx-b.example.com"))
	if res := r.Final(t); res.StatusCode != 200 {
		t.Fatalf("to pbx-b: %d %s", res.StatusCode, res.Reason)
	}
	if st := h.Proxy.TCPStats(); st.Open != 1 || st.Refused[tcpguard.ReasonTotalLimit] != 0 {
		t.Fatalf("stats %+v, want the one client connection and no refusal", st)
	}
}
