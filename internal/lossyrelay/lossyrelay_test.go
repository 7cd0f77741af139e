package lossyrelay

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/testutil"
)

// echoPeer answers every datagram with "echo:" and the datagram, until the
// test ends.
func echoPeer(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, src, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("echo:"), buf[:n]...), src)
		}
	}()
	return pc.LocalAddr().String()
}

// sinkPeer counts what it receives and never answers.
func sinkPeer(t *testing.T) (addr string, got func() int) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	counts := make(chan int, 1)
	counts <- 0
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			counts <- <-counts + 1
		}
	}()
	return pc.LocalAddr().String(), func() int { n := <-counts; counts <- n; return n }
}

func start(t *testing.T, cfg Config) *Relay {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	r, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// exchange sends msg through the relay from conn and returns the answer.
func exchange(t *testing.T, conn net.Conn, msg string) string {
	t.Helper()
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, maxDatagram)
	_ = conn.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no answer to %q: %v", msg, err)
	}
	return string(buf[:n])
}

func TestRelayForwardsBothWays(t *testing.T) {
	r := start(t, Config{Peer: echoPeer(t), Jitter: 5 * time.Millisecond, Seed: 1})
	// Two clients: each gets its own answers.
	var conns []net.Conn
	for range 2 {
		c, err := net.Dial("udp", r.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for i := range 10 {
		for j, c := range conns {
			msg := fmt.Sprintf("client %d datagram %d", j, i)
			if got, want := exchange(t, c, msg), "echo:"+msg; got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		}
	}
	want := Stats{ToPeer: Direction{Received: 20, Sent: 20}, FromPeer: Direction{Received: 20, Sent: 20}}
	testutil.Eventually(t, "20 datagrams counted each way, none dropped", func() bool { return r.Stats() == want })
}

// TestRelayLossIsSeeded: the same seed drops the same datagrams; every
// datagram is either dropped or delivered.
func TestRelayLossIsSeeded(t *testing.T) {
	const n, loss = 400, 0.25
	dropped := func(seed uint64) uint64 {
		peer, got := sinkPeer(t)
		r := start(t, Config{Peer: peer, Loss: loss, Jitter: time.Millisecond, Seed: seed})
		c, err := net.Dial("udp", r.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// In bursts the relay's socket buffer holds: a datagram the
		// kernel drops would never be counted.
		for i := range n {
			if _, err := c.Write([]byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
			if (i+1)%50 == 0 {
				testutil.Eventually(t, "the burst read by the relay", func() bool { return r.Stats().ToPeer.Received == uint64(i+1) })
			}
		}
		testutil.Eventually(t, "every datagram not dropped delivered", func() bool {
			s := r.Stats().ToPeer
			return s.Dropped+s.Sent == n && uint64(got()) == s.Sent
		})
		return r.Stats().ToPeer.Dropped
	}
	a, b, other := dropped(7), dropped(7), dropped(8)
	if a != b {
		t.Errorf("seed 7 dropped %d, then %d datagrams of %d", a, b, n)
	}
	// Binomial(400, 0.25): mean 100, standard deviation 8.7.
	for _, d := range []uint64{a, other} {
		if d < 60 || d > 140 {
			t.Errorf("dropped %d of %d with loss %v", d, n, loss)
		}
	}
}

func TestRelayCloseStopsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	peer := echoPeer(t)
	r, err := Start(context.Background(), Config{Listen: "127.0.0.1:0", Peer: peer, Jitter: time.Hour, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Held for an hour: Close must not wait for it.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the datagram read", func() bool { return r.Stats().ToPeer.Received == 1 })
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	// The echo peer's goroutine belongs to the test. The relay's own end
	// once Close returned, at their own pace: waited for, not sampled.
	testutil.Eventually(t, "the relay's goroutines to end", func() bool {
		return runtime.NumGoroutine() <= before+1
	})
	pc, err := net.ListenPacket("udp", r.Addr())
	if err != nil {
		t.Fatalf("the relay's address is still bound after Close: %v", err)
	}
	pc.Close()
}

func TestRelayStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, Config{Listen: "127.0.0.1:0", Peer: "127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	done := make(chan struct{})
	go func() { _ = r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(testutil.EventuallyLimit):
		t.Fatal("Close did not return after the context ended")
	}
}

func TestStartRejects(t *testing.T) {
	for _, cfg := range []Config{
		{Listen: "127.0.0.1:0", Peer: "127.0.0.1:9", Loss: 1.5},
		{Listen: "127.0.0.1:0", Peer: "127.0.0.1:9", Jitter: -1},
		{Listen: "127.0.0.1:0", Peer: "nowhere"},
		{Listen: "192.0.2.1:0", Peer: "127.0.0.1:9"},
	} {
		if r, err := Start(t.Context(), cfg); err == nil {
			r.Close()
			t.Errorf("Start(%+v) succeeded", cfg)
		}
	}
}
