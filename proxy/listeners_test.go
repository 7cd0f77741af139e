package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// TestListenerStoppedFailsReadiness: a listener whose serve loop ends
// while the proxy runs (here: its socket closed under it) takes the proxy
// out of readiness, naming the listener, instead of leaving UDP and
// /readyz saying all is well while TCP never answers again.
func TestListenerStoppedFailsReadiness(t *testing.T) {
	store, err := credentials.NewStore(nil)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	p, err := New(Config{
		Listeners:     []Listener{{Transport: "udp", Address: "127.0.0.1:0"}, {Transport: "tcp", Address: "127.0.0.1:0"}},
		Upstreams:     []Upstream{{Name: "pbx", Address: "127.0.0.2:5060"}},
		Credentials:   store,
		Clients:       []ClientGroup{{Name: "loopback", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Upstreams: []string{"*"}}},
		ShutdownGrace: time.Second,
		Logger:        slog.New(slog.DiscardHandler),
		Ready:         func() { close(ready) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	if err := p.Readiness(); err != nil {
		t.Fatalf("Readiness before: %v", err)
	}
	tcpAddr := p.ListenAddrs()["tcp"]
	p.mu.Lock()
	ln := p.listeners[1].tcp
	p.mu.Unlock()
	_ = ln.Close()

	testutil.Eventually(t, "readiness to fail", func() bool { return p.Readiness() != nil })
	err = p.Readiness()
	if !errors.Is(err, ErrListenerStopped) || !strings.Contains(err.Error(), "tcp "+tcpAddr) {
		t.Fatalf("Readiness: %v, want %v naming tcp %s", err, ErrListenerStopped, tcpAddr)
	}
	ls := p.Listeners()
	if len(ls) != 2 || !ls[0].Serving || ls[1].Serving || ls[1].Address != tcpAddr || ls[1].Error == "" {
		t.Fatalf("Listeners: %+v, want udp serving and tcp %s stopped with its error", ls, tcpAddr)
	}
}

// TestConnectionPeer: who may hold a TCP connection is decided by the
// admission rules requests go through; an upstream's address is exempt
// from the caps even inside a client network.
func TestConnectionPeer(t *testing.T) {
	rt := &routing{
		upstreams: []*upstream{{Upstream: Upstream{Name: "pbx"}, ip: netip.MustParseAddr("10.0.0.5")}},
		clients:   []ClientGroup{{Name: "office", Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}},
	}
	for _, tc := range []struct {
		src  string
		want tcpguard.Peer
	}{
		{"10.0.0.5", tcpguard.Upstream},
		{"10.0.0.7", tcpguard.Client},
		{"192.0.2.1", tcpguard.Refused},
	} {
		if got := rt.connectionPeer(netip.MustParseAddr(tc.src)); got != tc.want {
			t.Errorf("connectionPeer(%s) = %v, want %v", tc.src, got, tc.want)
		}
	}
}

func TestValidateTCP(t *testing.T) {
	for _, tc := range []struct {
		name string
		l    tcpguard.Limits
		ok   bool
	}{
		{"Zero", tcpguard.Limits{}, true},
		{"Max", tcpguard.Limits{MaxMessageSize: MaxMessageSize}, true},
		{"OverMax", tcpguard.Limits{MaxMessageSize: MaxMessageSize + 1}, false},
		{"Negative", tcpguard.Limits{IdleTimeout: -time.Second}, false},
	} {
		if err := validateTCP(tc.l); (err == nil) != tc.ok {
			t.Errorf("%s: validateTCP = %v", tc.name, err)
		}
	}
	if got := tcpLimits(Config{}).MaxMessageSize; got != MaxMessageSize {
		t.Errorf("default max message size %d, want %d", got, MaxMessageSize)
	}
}
