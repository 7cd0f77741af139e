package proxy

import (
	"sync"
	"time"
)

// inflight counts requests being handled so that shutdown can wait for
// them; once draining, new requests are refused.
type inflight struct {
	mu       sync.Mutex
	n        int
	draining bool
	idle     chan struct{}
}

// enter registers a request; false means the proxy is shutting down.
func (f *inflight) enter() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.draining {
		return false
	}
	f.n++
	return true
}

func (f *inflight) leave() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
}

func (f *inflight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// close refuses new requests from now on.
func (f *inflight) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.draining = true
}

// drain refuses new requests and waits up to grace for the others; it
// reports whether all finished.
func (f *inflight) drain(grace time.Duration) bool {
	f.mu.Lock()
	f.draining = true
	if f.n == 0 {
		f.mu.Unlock()
		return true
	}
	idle := make(chan struct{})
	f.idle = idle
	f.mu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}
