package proxy

import (
	"net/netip"
	"time"
)

// Per-user limits (Limits.UserAuthFailures): failed local authentications
// are counted per user and source address together. Counting per user
// alone would let anyone on the internet lock a user out by answering
// for it with wrong passwords; counting per source alone lets one
// misconfigured phone behind an office's NAT address block the whole
// office. Per (source, user), a bad phone blocks itself: the others
// behind the same address, and the same user elsewhere, are unaffected.

// userKey is one user as seen from one source address.
type userKey struct {
	src  netip.Addr
	user string
}

// userState is what the limiter remembers of one user from one source.
type userState struct {
	fails        int
	seen         time.Time // last failure
	blockedUntil time.Time
}

// userFailedLocked counts a failed authentication of user from src and
// reports whether the pair is now blocked. The table is bounded by
// MaxSources: when full and nothing can be swept, a new pair is not
// tracked (the per-source block still counts its failures).
func (lm *limiter) userFailedLocked(src netip.Addr, user string, now time.Time) bool {
	if lm.l.UserAuthFailures <= 0 || user == "" {
		return false
	}
	k := userKey{src, user}
	u, ok := lm.users[k]
	if !ok {
		if len(lm.users) >= lm.l.MaxSources {
			lm.sweepUsersLocked(now)
			if len(lm.users) >= lm.l.MaxSources {
				return false
			}
		}
		u = &userState{}
		lm.users[k] = u
	}
	u.seen = now
	u.fails++
	if u.fails >= lm.l.UserAuthFailures {
		u.fails = 0
		u.blockedUntil = now.Add(lm.l.UserBlockFor)
		return true
	}
	return false
}

// userBlocked reports whether user is blocked from src now.
func (lm *limiter) userBlocked(src netip.Addr, user string, now time.Time) bool {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	u, ok := lm.users[userKey{src, user}]
	return ok && now.Before(u.blockedUntil)
}

// sweepUsersLocked drops pairs that are not blocked and whose failures
// are old (failMemory) or none.
func (lm *limiter) sweepUsersLocked(now time.Time) {
	for k, u := range lm.users {
		if !now.Before(u.blockedUntil) && (u.fails == 0 || now.Sub(u.seen) > failMemory) {
			delete(lm.users, k)
		}
	}
}

// usersTracked returns how many (source, user) pairs are tracked (tests).
func (lm *limiter) usersTracked() int {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	return len(lm.users)
}
