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
func runProxy(t *testing.T, p *proxy.Proxy, ready <-chan struct{}, after func()) {
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
