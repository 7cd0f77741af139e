package proxy

import (
	"fmt"
	"testing"
	"time"
)

// TestRegistrationTiming: a trunk registration is refreshed 60 s before it
// expires, or at half its lifetime when that is shorter; after failures it
// retries with a backoff doubling from 2 s to 5 min, ±25 %; a rejected
// password waits at least 30 s.
func TestRegistrationTiming(t *testing.T) {
	for _, tc := range []struct{ granted, want time.Duration }{
		{3600 * time.Second, 3540 * time.Second},
		{300 * time.Second, 240 * time.Second},
		{120 * time.Second, 60 * time.Second},
		{60 * time.Second, 30 * time.Second},
		{time.Second, 500 * time.Millisecond},
	} {
		if got := refreshIn(tc.granted); got != tc.want {
			t.Errorf("refreshIn(%v) = %v, want %v", tc.granted, got, tc.want)
		}
	}

	p := &Proxy{}
	p.cfg.setRegistrationDefaults()
	if p.cfg.RegistrationRejectedBackoff != 30*time.Second {
		t.Errorf("rejected-password backoff %v, want 30s", p.cfg.RegistrationRejectedBackoff)
	}
	for _, tc := range []struct {
		failures int
		base     time.Duration
	}{
		{1, 2 * time.Second},
		{2, 4 * time.Second},
		{5, 32 * time.Second},
		{8, 256 * time.Second},
		{9, 5 * time.Minute},
		{100, 5 * time.Minute},
	} {
		t.Run(fmt.Sprint(tc.failures), func(t *testing.T) {
			lo, hi := tc.base-tc.base/4, tc.base+tc.base/4
			seen := map[time.Duration]bool{}
			for range 200 {
				d := p.backoff(tc.failures)
				if d < lo || d > hi {
					t.Fatalf("backoff after %d failures %v, want %v ±25%%", tc.failures, d, tc.base)
				}
				seen[d] = true
			}
			if len(seen) < 2 {
				t.Errorf("backoff after %d failures is always %v: no jitter", tc.failures, seen)
			}
		})
	}
}
