package proxy

import (
	"net/netip"
	"testing"
	"time"
)

// TestLimiterPerUser: failed local authentications block a user from one
// source, not the other users of that source nor the same user elsewhere;
// an exempt source is never blocked, rate-limited or capped per source,
// and its users are still blocked one by one.
func TestLimiterPerUser(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	office := netip.MustParseAddr("192.0.2.10")
	home := netip.MustParseAddr("198.51.100.7")
	exempt := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}

	type step struct {
		src     netip.Addr
		user    string
		fail    bool          // a failed authentication (else a success)
		at      time.Duration // after now
		wantSrc bool          // authFailed reports the source blocked
		wantUsr bool          // authFailed reports the user blocked
	}
	type check struct {
		src       netip.Addr
		user      string
		at        time.Duration
		userBlock bool         // userBlocked
		enter     limitVerdict // enter's verdict
	}
	for _, tc := range []struct {
		name   string
		limits Limits
		steps  []step
		checks []check
	}{
		{
			name:   "a bad phone blocks itself, not the office",
			limits: Limits{UserAuthFailures: 3, UserBlockFor: time.Minute, AuthFailures: 5, BlockFor: 5 * time.Minute, Exempt: exempt},
			steps: []step{
				{src: office, user: "1001", fail: true},
				{src: office, user: "1001", fail: true},
				{src: office, user: "1001", fail: true, wantUsr: true},
				{src: office, user: "1002", fail: true},
				{src: office, user: "1002", fail: true},
			},
			checks: []check{
				{src: office, user: "1001", userBlock: true, enter: limitOK},
				{src: office, user: "1002", enter: limitOK},
				{src: home, user: "1001", enter: limitOK},
				{src: office, user: "1001", at: 61 * time.Second, enter: limitOK},
			},
		},
		{
			name:   "without exemption the source block still applies",
			limits: Limits{UserAuthFailures: 3, UserBlockFor: time.Minute, AuthFailures: 4, BlockFor: 5 * time.Minute},
			steps: []step{
				{src: home, user: "a", fail: true},
				{src: home, user: "b", fail: true},
				{src: home, user: "c", fail: true},
				{src: home, user: "d", fail: true, wantSrc: true},
			},
			checks: []check{
				{src: home, user: "a", enter: limitBlocked},
				{src: office, user: "a", enter: limitOK},
			},
		},
		{
			name:   "a success forgets the user's failures",
			limits: Limits{UserAuthFailures: 2, UserBlockFor: time.Minute},
			steps: []step{
				{src: home, user: "a", fail: true},
				{src: home, user: "a"},
				{src: home, user: "a", fail: true},
			},
			checks: []check{{src: home, user: "a", enter: limitOK}},
		},
		{
			name:   "per-user limit off",
			limits: Limits{AuthFailures: 0},
			steps: []step{
				{src: home, user: "a", fail: true},
				{src: home, user: "a", fail: true},
			},
			checks: []check{{src: home, user: "a", enter: limitOK}},
		},
		{
			name:   "user_block_for defaults to block_for",
			limits: Limits{UserAuthFailures: 1, BlockFor: 2 * time.Minute},
			steps:  []step{{src: home, user: "a", fail: true, wantUsr: true}},
			checks: []check{
				{src: home, user: "a", at: 119 * time.Second, userBlock: true, enter: limitOK},
				{src: home, user: "a", at: 121 * time.Second, enter: limitOK},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lm := newLimiter(tc.limits)
			for i, s := range tc.steps {
				at := now.Add(s.at)
				if v := lm.enter(s.src, at); v != limitOK {
					t.Fatalf("step %d: enter %q", i, v)
				}
				lm.leave(s.src)
				if !s.fail {
					lm.authSucceeded(s.src, s.user)
					continue
				}
				src, usr := lm.authFailed(s.src, s.user, at)
				if src != s.wantSrc || usr != s.wantUsr {
					t.Errorf("step %d: authFailed = source %v, user %v; want %v, %v", i, src, usr, s.wantSrc, s.wantUsr)
				}
			}
			for _, c := range tc.checks {
				at := now.Add(c.at)
				if got := lm.userBlocked(c.src, c.user, at); got != c.userBlock {
					t.Errorf("userBlocked(%v, %s) at +%v = %v, want %v", c.src, c.user, c.at, got, c.userBlock)
				}
				v := lm.enter(c.src, at)
				if v == limitOK {
					lm.leave(c.src)
				}
				if v != c.enter {
					t.Errorf("enter(%v) at +%v = %q, want %q", c.src, c.at, v, c.enter)
				}
			}
		})
	}
}

// TestLimiterExempt: a source in Limits.Exempt is held to MaxTotal only.
func TestLimiterExempt(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	office := netip.MustParseAddr("192.0.2.10")
	lm := newLimiter(Limits{Rate: 1, Burst: 1, MaxPerSource: 1, MaxTotal: 5, AuthFailures: 1, BlockFor: time.Hour,
		Exempt: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	if blocked, _ := lm.authFailed(office, "x", now); blocked {
		t.Fatal("an exempt source blocked")
	}
	for i := range 5 {
		if v := lm.enter(office, now); v != limitOK {
			t.Fatalf("request %d in the same instant from the exempt source: %q", i, v)
		}
	}
	if v := lm.enter(office, now); v != limitTotal {
		t.Fatalf("past max_total: %q, want %q", v, limitTotal)
	}
	for range 5 {
		lm.leave(office)
	}
	if v := lm.enter(addr(1), now); v != limitOK {
		t.Fatalf("another source after the exempt one left: %q", v)
	}
}

// TestLimiterUserTableBounded: pairs are bounded by MaxSources; a sweep
// drops those with nothing to remember.
func TestLimiterUserTableBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	lm := newLimiter(Limits{UserAuthFailures: 3, BlockFor: time.Minute, MaxSources: 100})
	src := addr(1)
	for i := range 1000 {
		lm.authFailed(src, string(rune('a'+i%26))+string(rune('a'+i/26)), now)
	}
	if n := lm.usersTracked(); n > 100 {
		t.Fatalf("%d pairs tracked, want at most 100", n)
	}
	lm.sweep(now.Add(failMemory + time.Second))
	if n := lm.usersTracked(); n != 0 {
		t.Fatalf("%d pairs after their failures aged out, want 0", n)
	}
}
