package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/authproxy/authproxy/state"
)

// The state a second or restarted instance needs (docs/state.md) goes to a
// state.Store through stateSync: the bindings of clients registered through
// authproxy, the CSeq offsets of REGISTER Call-IDs, the trunk
// registrations' Call-ID, CSeq and schedule, their leases, and the cluster's
// members. The request path never waits on a store that is down: stateSync
// tracks whether the store answers, serves from local state while it does
// not, queues the writes (bounded, the newest per key), retries with
// backoff, logs once per change, and writes the local state back when the
// store returns (a Redis without persistence comes back empty).

// Store key prefixes.
const (
	keyContact = "contact/" // + contactKey: a binding (the latest for that contact)
	keyAlias   = "alias/"   // + alias: a binding registered in contact mode
	keyCSeq    = "cseq/"    // + Call-ID + "\x00" + From tag: a REGISTER's CSeq offset
	keyTrunk   = "trunk/"   // + registration key: a trunk registration's state
	keyMember  = "member/"  // + instance: a live member of the cluster
	leaseTrunk = "trunk/"   // + registration key: the lease of its holder
)

// Timing of the store.
const (
	// storeOpTimeout bounds one store operation on the request path: a
	// healthy store answers in well under a millisecond.
	storeOpTimeout = 500 * time.Millisecond
	// storeRetryMin and storeRetryMax bound the backoff of the checks of
	// a store that stopped answering.
	storeRetryMin = 100 * time.Millisecond
	storeRetryMax = 5 * time.Second
	// maxPendingWrites bounds the writes kept while the store is down (the
	// newest per key); beyond it, writes are dropped and the local state
	// written back whole when the store returns.
	maxPendingWrites = 100000
	// DefaultLeaseTTL is how long a trunk registration's lease lasts
	// without renewal: a dead holder's trunk is taken over within it.
	DefaultLeaseTTL = 15 * time.Second
)

var errStoreDown = errors.New("state store unreachable")

type pendingWrite struct {
	del   bool
	value []byte
	exp   time.Time
}

// stateSync is the proxy's side of the store.
type stateSync struct {
	st       state.Store
	shared   bool
	id       string
	leaseTTL time.Duration
	log      *slog.Logger
	// republish writes the whole local state back (the store returned).
	republish func(ctx context.Context)

	mu       sync.Mutex
	up       bool
	since    time.Time
	lastErr  string
	pending  map[string]pendingWrite
	overflow bool
	wake     chan struct{}
}

func newStateSync(st state.Store, id string, leaseTTL time.Duration, log *slog.Logger) *stateSync {
	if st == nil {
		st = state.NewMemory()
	}
	if leaseTTL <= 0 {
		leaseTTL = DefaultLeaseTTL
	}
	return &stateSync{st: st, shared: st.Shared(), id: id, leaseTTL: leaseTTL, log: log.With("component", "state"),
		up: true, since: time.Now(), pending: map[string]pendingWrite{}, wake: make(chan struct{}, 1)}
}

// healthy reports whether the store answered its last operation.
func (s *stateSync) healthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}

// StoreState is the state store's health, for /status and /readyz.
type StoreState struct {
	Backend string
	Shared  bool
	Up      bool
	Since   time.Time
	Error   string
	Pending int
}

func (s *stateSync) status() StoreState {
	s.mu.Lock()
	st := StoreState{Shared: s.shared, Up: s.up, Since: s.since, Error: s.lastErr, Pending: len(s.pending)}
	s.mu.Unlock()
	if b, ok := s.st.(interface{ Pending() int }); ok {
		// The file backend's writes not committed yet.
		st.Pending += b.Pending()
	}
	return st
}

// failed marks the store down after err (logged once per change).
func (s *stateSync) failed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.up {
		return
	}
	s.up, s.since, s.lastErr = false, time.Now(), err.Error()
	s.log.Warn("state store unreachable; serving from local state", "error", err)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *stateSync) queue(key string, w pendingWrite) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pending[key]; !ok && len(s.pending) >= maxPendingWrites {
		s.overflow = true
		return
	}
	s.pending[key] = w
}

// put writes key, or queues it while the store is down.
func (s *stateSync) put(key string, v []byte, ttl time.Duration) {
	if !s.healthy() {
		s.queue(key, pendingWrite{value: v, exp: time.Now().Add(ttl)})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	if err := s.st.Put(ctx, key, v, ttl); err != nil {
		s.queue(key, pendingWrite{value: v, exp: time.Now().Add(ttl)})
		s.failed(err)
	}
}

// del deletes key, or queues the deletion while the store is down.
func (s *stateSync) del(key string) {
	if !s.healthy() {
		s.queue(key, pendingWrite{del: true})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	if err := s.st.Delete(ctx, key); err != nil {
		s.queue(key, pendingWrite{del: true})
		s.failed(err)
	}
}

// get reads key; errStoreDown while the store does not answer.
func (s *stateSync) get(key string) ([]byte, error) {
	if !s.healthy() {
		return nil, errStoreDown
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	v, err := s.st.Get(ctx, key)
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		s.failed(err)
		return nil, errStoreDown
	}
	return v, err
}

// putJSON writes v as JSON.
func (s *stateSync) putJSON(key string, v any, ttl time.Duration) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("state record not encodable", "key", key, "error", err)
		return
	}
	s.put(key, b, ttl)
}

// run checks a store that stopped answering, with backoff, until it
// answers again; then it writes the queued writes and the local state
// back. It also keeps this instance's member record alive.
func (s *stateSync) run(ctx context.Context, member func() Member) {
	beat := time.NewTicker(s.leaseTTL / 3)
	defer beat.Stop()
	s.heartbeat(member)
	wait := storeRetryMin
	var next time.Time // when a store that is down is checked next
	for {
		var retry <-chan time.Time
		var t *time.Timer
		if !s.healthy() {
			if next.IsZero() {
				next = time.Now().Add(wait)
			}
			t = time.NewTimer(time.Until(next))
			retry = t.C
		}
		fired := false
		select {
		case <-ctx.Done():
		case <-s.wake:
		case <-beat.C:
			if s.healthy() {
				s.heartbeat(member)
			}
		case <-retry:
			fired = true
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
		if !fired {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, storeOpTimeout)
		err := s.st.Ping(pctx)
		cancel()
		if err != nil {
			wait = min(wait*2, storeRetryMax)
			next = time.Now().Add(wait)
			continue
		}
		s.recovered(ctx)
		s.heartbeat(member)
		wait, next = storeRetryMin, time.Time{}
	}
}

// recovered replays the queued writes and the local state.
func (s *stateSync) recovered(ctx context.Context) {
	s.mu.Lock()
	pend := s.pending
	s.pending = map[string]pendingWrite{}
	s.overflow = false
	down := time.Since(s.since)
	s.up, s.since, s.lastErr = true, time.Now(), ""
	s.mu.Unlock()
	now := time.Now()
	for k, w := range pend {
		switch {
		case w.del:
			s.del(k)
		case w.exp.After(now):
			s.put(k, w.value, w.exp.Sub(now))
		}
	}
	if s.republish != nil {
		s.republish(ctx)
	}
	s.log.Info("state store reachable again; local state written back", "down_for", down.Round(time.Millisecond).String(), "queued_writes", len(pend))
}

// Member is one live instance of a cluster sharing a store.
type Member struct {
	ID        string    `json:"id"`
	Advertise []string  `json:"advertise,omitempty"`
	Started   time.Time `json:"started"`
	Seen      time.Time `json:"seen"`
}

func (s *stateSync) heartbeat(member func() Member) {
	if member == nil || !s.shared {
		return
	}
	m := member()
	m.Seen = time.Now()
	s.putJSON(keyMember+s.id, m, s.leaseTTL)
}

// ClusterState is who shares the store and who holds which trunk
// registration, for /status.
type ClusterState struct {
	Instance string
	Store    StoreState
	Members  []Member
	// Holders maps each trunk registration ("upstream aor") to the
	// instance holding its lease.
	Holders map[string]string
}

// Cluster reports the state store and, on a shared one, the cluster.
func (p *Proxy) Cluster(ctx context.Context) ClusterState {
	s := p.store
	cs := ClusterState{Instance: s.id, Store: s.status(), Holders: map[string]string{}}
	cs.Store.Backend = p.cfg.StateBackend
	if !s.shared {
		for _, r := range p.regs.states() {
			if r.State != RegStateStandby {
				cs.Holders[r.Upstream+" "+r.AOR] = s.id
			}
		}
		return cs
	}
	if !s.healthy() {
		return cs
	}
	ctx, cancel := context.WithTimeout(ctx, 2*storeOpTimeout)
	defer cancel()
	_ = s.st.Scan(ctx, keyMember, func(_ string, v []byte) error {
		var m Member
		if json.Unmarshal(v, &m) == nil {
			cs.Members = append(cs.Members, m)
		}
		return nil
	})
	if ls, err := s.st.Leases(ctx); err == nil {
		names := p.regs.names()
		for _, l := range ls {
			if n, ok := names[l.Name]; ok {
				cs.Holders[n] = l.Holder
			}
		}
	}
	return cs
}

// StoreUp reports whether the state store answered its last operation.
func (p *Proxy) StoreUp() bool { return p.store.healthy() }

// StoreReady reports an error while the state store does not answer and
// Config.StateReadiness asks for that to make the instance not ready.
func (p *Proxy) StoreReady() error {
	if !p.cfg.StateReadiness {
		return nil
	}
	if st := p.store.status(); !st.Up {
		return fmt.Errorf("%w since %s: %s", errStoreDown, st.Since.Format(time.RFC3339), st.Error)
	}
	return nil
}
