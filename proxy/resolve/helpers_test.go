package resolve

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/dnstest"
	"github.com/authproxy/authproxy/internal/testutil"
)

// fakeClock is a Clock that moves only when the test says so.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []clockWaiter
}

type clockWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) At(t time.Time) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if !c.now.Before(t) {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, clockWaiter{t, ch})
	return ch
}

// Advance moves the clock by d and fires what is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if c.now.Before(w.at) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testResolver is a Resolver asking one dnstest server, on a fake clock,
// with Run going until the test ends.
type testResolver struct {
	*Resolver
	clock *fakeClock
	log   *syncBuffer
	stop  func() // ends Run and waits for it; Cleanup calls it too
}

// newTestResolver starts a Resolver for cfg; unset Servers ask srv, an
// unset Clock is a fakeClock.
func newTestResolver(t testing.TB, srv *dnstest.Server, cfg Config) *testResolver {
	t.Helper()
	clock := newFakeClock()
	if cfg.Clock == nil {
		cfg.Clock = clock
	}
	if cfg.Servers == nil {
		cfg.Servers = []string{srv.Addr()}
	}
	logs := &syncBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	stop := sync.OnceFunc(func() {
		cancel()
		<-done
	})
	t.Cleanup(stop)
	return &testResolver{r, clock, logs, stop}
}

// lookup is Lookup failing the test on an error.
func (r *testResolver) lookup(t testing.TB, q Query) Result {
	t.Helper()
	res, err := r.Lookup(t.Context(), q)
	if err != nil {
		t.Fatalf("Lookup(%v): %v", q, err)
	}
	return res
}

// next waits for the next close of ch, the channel Changed returned.
func next(t testing.TB, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testutil.EventuallyLimit):
		t.Fatalf("Changed not signalled within %v", testutil.EventuallyLimit)
	}
}

// entryState reads what the cache holds for q.
func (r *testResolver) entryState(q Query) (e entry, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.entries[q]
	if p == nil {
		return entry{}, false
	}
	return *p, true
}

// target builds an expected Target.
func target(transport, addrPort, name string, prio, weight uint16) Target {
	return Target{transport, netip.MustParseAddrPort(addrPort), name, prio, weight}
}
