package proxy

import (
	"net/netip"
	"sync"
	"time"
)

// Limits bounds what one source, one user of a source, and everyone
// together, may ask of the proxy. Zero values mean "no limit" except
// MaxSources.
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
	// UserAuthFailures is how many failed local authentications one user
	// (the username answering authproxy's challenge) may have from one
	// source address before that user is refused from that address
	// (403, "user-blocked") for UserBlockFor, its password no longer
	// checked: a phone with a wrong password blocks itself, not the other
	// users behind the same address. 0: never blocked.
	UserAuthFailures int
	UserBlockFor     time.Duration
	// Exempt are source prefixes the per-source limits do not apply to:
	// Rate, MaxPerSource and the AuthFailures block. For a trusted office
	// whose phones share one NAT address; MaxTotal and UserAuthFailures
	// still apply to it.
	Exempt []netip.Prefix
	// MaxSources bounds how many sources are tracked (memory). When full,
	// idle entries are dropped; if none is idle, new sources are refused
	// until some are. Zero means 100,000.
	MaxSources int
	// Drop makes refused UDP requests go unanswered instead of answered with
	// 403/503: a flood then costs the proxy no outgoing traffic.
	Drop bool
	// Shared makes Rate and Burst hold across the instances sharing the
	// state store (sharedlimits.go): a source that sent more than
	// Rate+Burst requests in one second through all of them together is
	// refused until that second ends. Without a shared store it changes
	// nothing.
	Shared bool
}

// sourceState is what the limiter remembers of one source address.
type sourceState struct {
	tokens float64
	last   time.Time // last token refill
	seen   time.Time // last request

	active       int
	fails        int
	blockedUntil time.Time
	// exempt: the source is in Limits.Exempt (as of its last request).
	exempt bool
	// unsynced counts the requests admitted since the last sync of the
	// cluster-wide counters, and clusterUntil is when the cluster's
	// verdict on the source ends (Limits.Shared, sharedlimits.go).
	unsynced     int64
	clusterUntil time.Time
}

// limiter enforces Limits. One mutex: every operation is a few map and
// arithmetic steps, far cheaper than the SIP parsing before it.
type limiter struct {
	mu      sync.Mutex
	l       Limits
	sources map[netip.Addr]*sourceState
	users   map[userKey]*userState // userlimits.go
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
	if l.UserBlockFor <= 0 {
		l.UserBlockFor = l.BlockFor
	}
	return &limiter{l: l, sources: map[netip.Addr]*sourceState{}, users: map[userKey]*userState{}}
}

// exemptLocked reports whether src is in Limits.Exempt.
func (lm *limiter) exemptLocked(src netip.Addr) bool {
	for _, p := range lm.l.Exempt {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// enter admits a request from src or says why not. An admitted request
// must call leave(src) when done. An exempt source (Limits.Exempt) is
// held to MaxTotal only.
func (lm *limiter) enter(src netip.Addr, now time.Time) limitVerdict {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	exempt := lm.exemptLocked(src)
	s, ok := lm.sources[src]
	if !ok {
		if len(lm.sources) >= lm.l.MaxSources && !exempt {
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
	s.exempt = exempt
	if exempt {
		if lm.l.MaxTotal > 0 && lm.total >= lm.l.MaxTotal {
			return limitTotal
		}
		s.active++
		lm.total++
		return limitOK
	}
	if now.Before(s.blockedUntil) {
		return limitBlocked
	}
	if lm.l.Shared && now.Before(s.clusterUntil) {
		return limitRate
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
		if lm.l.Shared {
			s.unsynced++
		}
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

// authFailed counts a failed local authentication of user from src,
// against the source (unless exempt) and against the user from that
// source; it reports whether either is now blocked.
func (lm *limiter) authFailed(src netip.Addr, user string, now time.Time) (sourceBlocked, userBlocked bool) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	userBlocked = lm.userFailedLocked(src, user, now)
	if lm.l.AuthFailures <= 0 || lm.exemptLocked(src) {
		return false, userBlocked
	}
	s, ok := lm.sources[src]
	if !ok {
		return false, userBlocked
	}
	s.fails++
	if s.fails >= lm.l.AuthFailures {
		s.fails = 0
		s.blockedUntil = now.Add(lm.l.BlockFor)
		return true, userBlocked
	}
	return false, userBlocked
}

// authSucceeded forgets the failures of src and of user from src.
func (lm *limiter) authSucceeded(src netip.Addr, user string) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if s, ok := lm.sources[src]; ok {
		s.fails = 0
	}
	delete(lm.users, userKey{src, user})
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
	lm.sweepUsersLocked(now)
	for a, s := range lm.sources {
		full := lm.l.Rate <= 0 || float64(lm.l.Burst) <= s.tokens+now.Sub(s.last).Seconds()*lm.l.Rate
		// A count not yet added to the cluster's, or the cluster's verdict,
		// is held too (Limits.Shared).
		cluster := s.unsynced > 0 || now.Before(s.clusterUntil)
		if s.active == 0 && full && !cluster && now.After(s.blockedUntil) && (s.fails == 0 || now.Sub(s.seen) > failMemory) {
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

func (lm *limiter) userBlockFor() time.Duration {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	return lm.l.UserBlockFor
}
