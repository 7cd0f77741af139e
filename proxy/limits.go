package proxy

import (
	"net/netip"
	"sync"
	"time"
)

// Limits bounds what one source, and everyone together, may ask of the
// proxy. Zero values mean "no limit" except MaxSources.
type Limits struct {
	// Rate is the sustained requests per second one source may send, and
	// Burst how many it may send at once (token bucket). Rate 0: no limit.
	Rate  float64
	Burst int
	// MaxPerSource bounds one source's requests in progress at once.
	MaxPerSource int
	// MaxTotal bounds all requests in progress at once.
	MaxTotal int
	// AuthFailures is how many failed local authentications a source may
	// have before it is blocked for BlockFor. 0: never blocked.
	AuthFailures int
	BlockFor     time.Duration
	// MaxSources bounds how many sources are tracked (memory). When full,
	// idle entries are dropped; if none is idle, new sources are refused
	// until some are. Zero means 100,000.
	MaxSources int
	// Drop makes refused UDP requests go unanswered instead of answered with
	// 403/503: a flood then costs the proxy no outgoing traffic.
	Drop bool
}

// sourceState is what the limiter remembers of one source address.
type sourceState struct {
	tokens float64
	last   time.Time // last token refill
	seen   time.Time // last request

	active       int
	fails        int
	blockedUntil time.Time
}

// limiter enforces Limits. One mutex: every operation is a few map and
// arithmetic steps, far cheaper than the SIP parsing before it.
type limiter struct {
	mu      sync.Mutex
	l       Limits
	sources map[netip.Addr]*sourceState
	total   int
	// lastFullSweep bounds how often a full table is swept on the request
	// path: sweeping is O(sources), and doing it for every new source of a
	// flood would make the flood quadratic.
	lastFullSweep time.Time
}

// limitVerdict says why a request was refused, for the log and metrics.
type limitVerdict string

const (
	limitOK         limitVerdict = ""
	limitRate       limitVerdict = "rate-limited"
	limitConcurrent limitVerdict = "too-many-in-progress"
	limitTotal      limitVerdict = "overloaded"
	limitBlocked    limitVerdict = "blocked"
	limitSources    limitVerdict = "too-many-sources"
)

func newLimiter(l Limits) *limiter {
	if l.MaxSources <= 0 {
		l.MaxSources = 100000
	}
	if l.Burst <= 0 && l.Rate > 0 {
		l.Burst = int(l.Rate) + 1
	}
	return &limiter{l: l, sources: map[netip.Addr]*sourceState{}}
}

// enter admits a request from src or says why not. An admitted request
// must call leave(src) when done.
func (lm *limiter) enter(src netip.Addr, now time.Time) limitVerdict {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	s, ok := lm.sources[src]
	if !ok {
		if len(lm.sources) >= lm.l.MaxSources {
			if now.Sub(lm.lastFullSweep) >= fullSweepEvery {
				lm.lastFullSweep = now
				lm.sweepLocked(now)
			}
			if len(lm.sources) >= lm.l.MaxSources {
				return limitSources
			}
		}
		s = &sourceState{tokens: float64(lm.l.Burst), last: now}
		lm.sources[src] = s
	}
	s.seen = now
	if now.Before(s.blockedUntil) {
		return limitBlocked
	}
	if lm.l.Rate > 0 {
		s.tokens += now.Sub(s.last).Seconds() * lm.l.Rate
		if s.tokens > float64(lm.l.Burst) {
			s.tokens = float64(lm.l.Burst)
		}
		s.last = now
		if s.tokens < 1 {
			return limitRate
		}
	}
	if lm.l.MaxPerSource > 0 && s.active >= lm.l.MaxPerSource {
		return limitConcurrent
	}
	if lm.l.MaxTotal > 0 && lm.total >= lm.l.MaxTotal {
		return limitTotal
	}
	if lm.l.Rate > 0 {
		s.tokens--
	}
	s.active++
	lm.total++
	return limitOK
}

func (lm *limiter) leave(src netip.Addr) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if s, ok := lm.sources[src]; ok && s.active > 0 {
		s.active--
		lm.total--
	}
}

// authFailed counts a failed local authentication; it reports whether the
// source is now blocked.
func (lm *limiter) authFailed(src netip.Addr, now time.Time) bool {
	if lm.l.AuthFailures <= 0 {
		return false
	}
	lm.mu.Lock()
	defer lm.mu.Unlock()
	s, ok := lm.sources[src]
	if !ok {
		return false
	}
	s.fails++
	if s.fails >= lm.l.AuthFailures {
		s.fails = 0
		s.blockedUntil = now.Add(lm.l.BlockFor)
		return true
	}
	return false
}

// authSucceeded forgets a source's failures.
func (lm *limiter) authSucceeded(src netip.Addr) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if s, ok := lm.sources[src]; ok {
		s.fails = 0
	}
}

// fullSweepEvery is the least time between two sweeps of a full table.
const fullSweepEvery = 100 * time.Millisecond

// failMemory is how long a source's failed authentications are remembered
// without a new request from it.
const failMemory = 10 * time.Minute

// sweep drops sources that hold nothing: no request in progress, a full
// token bucket, no block, and no failures (or none recent).
func (lm *limiter) sweep(now time.Time) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	lm.sweepLocked(now)
}

func (lm *limiter) sweepLocked(now time.Time) {
	for a, s := range lm.sources {
		full := lm.l.Rate <= 0 || float64(lm.l.Burst) <= s.tokens+now.Sub(s.last).Seconds()*lm.l.Rate
		if s.active == 0 && full && now.After(s.blockedUntil) && (s.fails == 0 || now.Sub(s.seen) > failMemory) {
			delete(lm.sources, a)
		}
	}
}

// setLimits applies new limits (a reload); the state per source is kept.
func (lm *limiter) setLimits(l Limits) {
	n := newLimiter(l)
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if lm.l.Rate <= 0 && n.l.Rate > 0 {
		// Buckets were not kept while rate limiting was off: start full.
		for _, s := range lm.sources {
			s.tokens = float64(n.l.Burst)
		}
	}
	lm.l = n.l
}

// size returns how many sources are tracked (tests, metrics).
func (lm *limiter) size() int {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	return len(lm.sources)
}

func (lm *limiter) drop() bool {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	return lm.l.Drop
}

func (lm *limiter) blockFor() time.Duration {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	return lm.l.BlockFor
}
