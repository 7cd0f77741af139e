package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/authproxy/authproxy/proxy"
)

// runProxy runs p until the test ends and returns once it is ready (ready
// is closed by its Config.Ready). Cleanup stops it and reports an error
// Run returned, then calls after (nil: nothing), e.g. to check the logs.
func runProxy(t testing.TB, p *proxy.Proxy, ready <-chan struct{}, after func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy Run: %v", err)
		}
		if after != nil {
			after()
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("proxy stopped before ready: %v", err)
	case <-time.After(hostileWait):
		t.Fatal("proxy not ready")
	}
}

// eachHandOff runs test as two subtests of t, name+"/read loop" and
// name+"/workers": UDP requests handled on the socket's reading goroutine,
// then by the per-source workers (proxy.UDPHandOffAbove), which the fast
// lane must treat alike. test gets the hand-off threshold, for names that
// must differ between the two.
func eachHandOff(t *testing.T, name string, test func(t *testing.T, handOffAt int64)) {
	t.Helper()
	for _, h := range []struct {
		name string
		at   int64
	}{{"read loop", proxy.UDPHandOffAbove.Load()}, {"workers", -1}} {
		t.Run(name+"/"+h.name, func(t *testing.T) {
			was := proxy.UDPHandOffAbove.Swap(h.at)
			defer proxy.UDPHandOffAbove.Store(was)
			test(t, h.at)
		})
	}
}
