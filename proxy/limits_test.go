package proxy

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

func TestLimiter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	t.Run("rate and burst", func(t *testing.T) {
		lm := newLimiter(Limits{Rate: 2, Burst: 3})
		a := addr(1)
		for i := 0; i < 3; i++ {
			if v := lm.enter(a, now); v != limitOK {
				t.Fatalf("request %d: %q", i, v)
			}
			lm.leave(a)
		}
		if v := lm.enter(a, now); v != limitRate {
			t.Fatalf("4th request in the same instant: %q, want %q", v, limitRate)
		}
		if v := lm.enter(a, now.Add(500*time.Millisecond)); v != limitOK {
			t.Fatalf("after half a second at 2/s: %q", v)
		}
		if v := lm.enter(addr(2), now); v != limitOK {
			t.Fatalf("another source is limited by the first: %q", v)
		}
	})
	t.Run("in progress per source and in total", func(t *testing.T) {
		lm := newLimiter(Limits{MaxPerSource: 2, MaxTotal: 3})
		a, b := addr(1), addr(2)
		lm.enter(a, now)
		lm.enter(a, now)
		if v := lm.enter(a, now); v != limitConcurrent {
			t.Fatalf("3rd of a: %q", v)
		}
		lm.enter(b, now)
		if v := lm.enter(b, now); v != limitTotal {
			t.Fatalf("4th overall: %q", v)
		}
		lm.leave(a)
		if v := lm.enter(b, now); v != limitOK {
			t.Fatalf("after a leave: %q", v)
		}
	})
	t.Run("blocked after failed authentications", func(t *testing.T) {
		lm := newLimiter(Limits{AuthFailures: 3, BlockFor: time.Minute})
		a := addr(1)
		lm.enter(a, now)
		lm.leave(a)
		for i := 0; i < 2; i++ {
			if blocked, _ := lm.authFailed(a, "", now); blocked {
				t.Fatalf("blocked after %d failures", i+1)
			}
		}
		if blocked, _ := lm.authFailed(a, "", now); !blocked {
			t.Fatal("not blocked after 3 failures")
		}
		if v := lm.enter(a, now.Add(30*time.Second)); v != limitBlocked {
			t.Fatalf("during the block: %q", v)
		}
		if v := lm.enter(a, now.Add(61*time.Second)); v != limitOK {
			t.Fatalf("after the block: %q", v)
		}
	})
	t.Run("memory bounded under a flood from many sources", func(t *testing.T) {
		lm := newLimiter(Limits{Rate: 1, Burst: 1, MaxSources: 1000})
		refused := 0
		for i := 0; i < 50000; i++ {
			a := addr(i)
			switch lm.enter(a, now) {
			case limitOK:
				lm.leave(a)
			default:
				refused++
			}
			if lm.size() > 1000 {
				t.Fatalf("tracking %d sources, bound is 1000", lm.size())
			}
		}
		// Every source spent its only token: none is idle, new ones are
		// refused until tokens refill.
		if refused == 0 {
			t.Fatal("no source refused although the table was full")
		}
		// A second later every bucket is full again: the table empties.
		lm.sweep(now.Add(2 * time.Second))
		if n := lm.size(); n != 0 {
			t.Fatalf("%d sources left after the sweep", n)
		}
	})
	t.Run("reload keeps state", func(t *testing.T) {
		lm := newLimiter(Limits{MaxPerSource: 1})
		a := addr(1)
		lm.enter(a, now)
		lm.setLimits(Limits{MaxPerSource: 1, Rate: 100})
		if v := lm.enter(a, now); v != limitConcurrent {
			t.Fatalf("in-progress count lost on reload: %q", v)
		}
	})
}

func TestLocalAuthNonce(t *testing.T) {
	la := newLocalAuth()
	now := time.Unix(1_700_000_000, 0)
	src, other := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	n := la.nonce(src, now)
	if !la.nonceValid(n, src, now.Add(time.Minute)) {
		t.Fatal("fresh nonce refused")
	}
	if la.nonceValid(n, other, now) {
		t.Fatal("nonce accepted from another source")
	}
	if la.nonceValid(n, src, now.Add(localNonceTTL+time.Second)) {
		t.Fatal("expired nonce accepted")
	}
	if la.nonceValid(n[:len(n)-2]+"AA", src, now) {
		t.Fatal("tampered nonce accepted")
	}
	if !la.acceptCount(n, 1, true) || la.acceptCount(n, 1, true) || !la.acceptCount(n, 2, true) {
		t.Fatal("nonce counts not checked for replay")
	}
	// Two phones behind one address challenged within the same second
	// get different nonces, so that both may answer with nc=1.
	if n2 := la.nonce(src, now); n2 == n || !la.nonceValid(n2, src, now) {
		t.Fatalf("second nonce in the same second: %q (first %q)", n2, n)
	}
}

// TestRefusalLogThrottled: a flood of refusals writes one "request refused"
// line a second, not one per request, so that refused traffic cannot fill
// the log.
func TestRefusalLogThrottled(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	p := &Proxy{}
	src := netip.MustParseAddr("192.0.2.7")
	for range 100 {
		p.refusalLog(log, "source not admitted", src)
	}
	if n := strings.Count(buf.String(), `"msg":"request refused"`); n != 1 {
		t.Fatalf("%d lines for 100 refusals within a second, want 1:\n%s", n, buf.String())
	}
	for _, want := range []string{`"level":"WARN"`, `"reason":"source not admitted"`, `"source":"192.0.2.7"`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("refusal line lacks %s: %s", want, buf.String())
		}
	}
	// A second later the next refusal is logged again.
	p.lastRefusalLog.Store(time.Now().Add(-time.Second - time.Millisecond).UnixNano())
	p.refusalLog(log, "rate-limited", src)
	if n := strings.Count(buf.String(), `"msg":"request refused"`); n != 2 {
		t.Fatalf("%d lines after the second passed, want 2", n)
	}
}
