// Package state is where authproxy keeps the state a restarted or second
// instance needs: the bindings of clients registered through it, the CSeq
// offsets of REGISTER Call-IDs, trunk registrations' Call-ID, CSeq and
// expiry, the leases that give each trunk registration one holder, and the
// members of a cluster. Three stores implement one interface: Memory (one
// process, nothing kept), File (bbolt in a data directory, survives a
// restart) and Redis (shared by a cluster).
//
// The package knows keys, values, expiry and leases; what they mean is the
// proxy's business. It imports neither config nor proxy.
package state

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Errors of a Store.
var (
	// ErrNotFound: no live value under the key.
	ErrNotFound = errors.New("state: not found")
	// ErrHeld: another holder has the lease.
	ErrHeld = errors.New("state: lease held by another")
	// ErrLost: the lease is no longer the caller's (expired, taken over).
	ErrLost = errors.New("state: lease lost")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("state: store closed")
)

// Store keeps values with an expiry and hands out leases. Every method is
// safe for concurrent use. A ttl of zero or less means no expiry.
type Store interface {
	// Put stores value under key until ttl has passed.
	Put(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// Get returns the value under key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Delete removes key (no error when absent).
	Delete(ctx context.Context, key string) error
	// Scan calls fn for every live key starting with prefix, in no
	// particular order.
	Scan(ctx context.Context, prefix string, fn func(key string, value []byte) error) error
	// Add adds each delta to its key's counter (a missing or expired key
	// counts from 0), keeps each counter for ttl after the add, and
	// returns the new values: the counters of cluster-wide limits.
	Add(ctx context.Context, deltas map[string]int64, ttl time.Duration) (map[string]int64, error)

	// Acquire takes the lease name for holder for ttl, when nobody else
	// holds it (ErrHeld otherwise). Each grant carries a fencing token
	// larger than any earlier grant of name.
	Acquire(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error)
	// Renew extends a lease the caller still holds, or returns ErrLost.
	Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// Release gives a lease up (no error when it was lost already).
	Release(ctx context.Context, l Lease) error
	// Leases returns every lease held now.
	Leases(ctx context.Context) ([]Lease, error)

	// Shared reports whether other instances see this store (then a value
	// read from it may be newer than the local copy).
	Shared() bool
	// Ping checks that the store answers.
	Ping(ctx context.Context) error
	// Close flushes what is pending and releases the store.
	Close() error
}

// Lease is one grant of a named lease.
type Lease struct {
	Name   string
	Holder string
	// Token is the fencing token: it grows with every grant of Name, so
	// a write carrying an older token can be told from the holder's.
	Token   uint64
	Expires time.Time
}

// leaseValue encodes a lease's holder and token as one string.
func leaseValue(holder string, token uint64) string {
	return strconv.FormatUint(token, 10) + " " + holder
}

// parseLeaseValue reverses leaseValue.
func parseLeaseValue(v string) (holder string, token uint64, ok bool) {
	t, h, found := strings.Cut(v, " ")
	if !found {
		return "", 0, false
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return "", 0, false
	}
	return h, n, true
}

// Backends.
const (
	BackendMemory = "memory"
	BackendFile   = "file"
	BackendRedis  = "redis"
)
