package resolve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Log keys.
const (
	logAddress = "address"
	logTargets = "targets"
	logError   = "error"
	logRetryIn = "retry_in"
)

// errStopped is the error of a lookup that needs DNS after Run returned.
var errStopped = errors.New("resolver stopped")

// Resolver resolves queries and caches the results. Safe for concurrent
// use.
type Resolver struct {
	cfg Config // defaults filled in
	x   *exchanger

	// ctx ends when Run returns, stopping every resolution in flight.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // resolutions in flight
	wake   chan struct{}  // (1 buffered) tells Run the schedule changed

	mu      sync.Mutex
	entries map[Query]*entry
	changed chan struct{} // closed on the next change of a watched result
	stopped bool          // Run returned: no resolution starts any more
}

// entry is the cache's state of one query.
type entry struct {
	res       Result
	resolved  bool          // res is the outcome of a resolution
	refreshAt time.Time     // when Run refreshes it (watched entries)
	fails     int           // failed resolutions in a row, for the backoff
	inflight  chan struct{} // closed when the running resolution ends; nil when none runs
	waiters   int           // Lookups waiting for the first resolution
	watched   bool
	lastUse   time.Time // last Lookup or Cached
}

// New returns a Resolver for cfg. It fails on an invalid Config; a
// missing /etc/resolv.conf is not an error here but the error of every
// lookup, so that a proxy whose upstreams are IP addresses runs without
// one.
func New(cfg Config) (*Resolver, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	x := &exchanger{servers: cfg.Servers, timeout: cfg.Timeout}
	if len(x.servers) == 0 {
		x.servers, x.serversErr = systemServers(resolvConf)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Resolver{
		cfg:     cfg,
		x:       x,
		ctx:     ctx,
		cancel:  cancel,
		wake:    make(chan struct{}, 1),
		entries: map[Query]*entry{},
		changed: make(chan struct{}),
	}, nil
}

// Watch sets the queries the background refresh keeps fresh (Run),
// replacing the previous set; the first resolution of those not resolved
// yet starts at once. IP literals need no DNS and are ignored; so are
// invalid queries, with a warning. Queries no longer watched stay cached
// for Lookup until unused for MaxTTL.
func (r *Resolver) Watch(qs []Query) {
	set := make(map[Query]bool, len(qs))
	for _, q := range qs {
		nq, err := normalize(q)
		if err != nil {
			r.cfg.Logger.Warn("upstream address not watched", logError, err)
			continue
		}
		if _, ok := literal(nq); !ok {
			set[nq] = true
		}
	}
	r.mu.Lock()
	for q, e := range r.entries {
		e.watched = set[q]
	}
	for q := range set {
		e := r.entryLocked(q)
		e.watched = true
		if !e.resolved {
			r.startLocked(q, e)
		}
	}
	r.mu.Unlock()
	r.poke()
}

// Run refreshes the watched queries shortly before they expire, and
// retries failed ones with backoff, until ctx ends. It then stops every
// resolution in flight (including those Lookup started) and returns once
// all have ended; after that, Lookup answers from the cache only. Call it
// once. Without Run, Lookup still resolves and caches, but nothing is
// refreshed before a Lookup finds it expired, and a resolution in flight
// ends only with its own timeouts.
func (r *Resolver) Run(ctx context.Context) {
	defer r.shutdown()
	for {
		var at <-chan time.Time
		if next, ok := r.refreshDue(); ok {
			at = r.cfg.Clock.At(next)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-at:
		}
	}
}

// refreshDue starts the refresh of every watched entry that is due, drops
// unwatched entries unused for MaxTTL, and returns when the next refresh
// is due, if any.
func (r *Resolver) refreshDue() (next time.Time, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Clock.Now()
	for q, e := range r.entries {
		switch {
		case e.inflight != nil:
			// Its end pokes Run with the new schedule.
		case !e.watched:
			if e.waiters == 0 && now.Sub(e.lastUse) > r.cfg.MaxTTL {
				delete(r.entries, q)
			}
		case !now.Before(e.refreshAt):
			r.startLocked(q, e)
		case !ok || e.refreshAt.Before(next):
			next, ok = e.refreshAt, true
		}
	}
	return next, ok
}

func (r *Resolver) shutdown() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}

// poke tells Run that the schedule changed, without waiting.
func (r *Resolver) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Lookup returns q's targets. An IP literal is answered at once; a name
// from the cache when it has a result (even an expired one, which a
// background refresh then replaces); otherwise it is resolved now, bounded
// by ctx, and concurrent Lookups of the same query share one resolution.
// A failed resolution is cached too: Lookup returns its error at once,
// and asks again in the background once its retry time (Result.Expires)
// has passed.
//
// The error is nil whenever Targets is not empty, even if the last refresh
// failed (Result.Err tells); otherwise it is Result.Err, the error of an
// invalid query, or ctx's.
func (r *Resolver) Lookup(ctx context.Context, q Query) (Result, error) {
	q, err := normalize(q)
	if err != nil {
		return Result{Query: q}, err
	}
	if res, ok := literal(q); ok {
		return res, nil
	}
	r.mu.Lock()
	e := r.entryLocked(q)
	now := r.cfg.Clock.Now()
	e.lastUse = now
	if e.resolved {
		res := e.res
		if !now.Before(res.Expires) {
			r.startLocked(q, e) // serve stale; refresh in the background
		}
		r.mu.Unlock()
		return res, resultErr(res)
	}
	if !r.startLocked(q, e) {
		r.mu.Unlock()
		return Result{Query: q}, fmt.Errorf("resolve %s: %w", q, errStopped)
	}
	done := e.inflight
	e.waiters++
	r.mu.Unlock()

	select {
	case <-done:
	case <-ctx.Done():
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e.waiters--
	switch {
	case e.resolved:
		return e.res, resultErr(e.res)
	case ctx.Err() != nil:
		return Result{Query: q}, fmt.Errorf("resolve %s: %w", q, context.Cause(ctx))
	default: // the resolution ended unfinished: Run returned
		return Result{Query: q}, fmt.Errorf("resolve %s: %w", q, errStopped)
	}
}

// resultErr is Lookup's error for a cached result.
func resultErr(res Result) error {
	if len(res.Targets) > 0 {
		return nil
	}
	return res.Err
}

// Cached returns the cached result of q without any I/O and without
// starting a refresh (an IP literal is always there). A result may have no
// targets and an Err: DNS was asked and failed.
func (r *Resolver) Cached(q Query) (Result, bool) {
	q, err := normalize(q)
	if err != nil {
		return Result{Query: q}, false
	}
	if res, ok := literal(q); ok {
		return res, true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[q]
	if e == nil || !e.resolved {
		return Result{Query: q}, false
	}
	e.lastUse = r.cfg.Clock.Now()
	return e.res, true
}

// Changed returns a channel that is closed the next time any watched
// result changes (its targets, or the error of its last refresh); call it
// again for the change after that.
func (r *Resolver) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

func (r *Resolver) entryLocked(q Query) *entry {
	e := r.entries[q]
	if e == nil {
		e = &entry{res: Result{Query: q}, lastUse: r.cfg.Clock.Now()}
		r.entries[q] = e
	}
	return e
}

// startLocked starts resolving q unless a resolution of it is in flight
// already (so that concurrent lookups share one), and reports whether one
// is now in flight: false once Run has returned.
func (r *Resolver) startLocked(q Query, e *entry) bool {
	if e.inflight != nil {
		return true
	}
	if r.stopped {
		return false
	}
	e.inflight = make(chan struct{})
	r.wg.Add(1)
	go r.resolve(q, e)
	return true
}

// resolve runs one resolution of q and stores its outcome in e.
func (r *Resolver) resolve(q Query, e *entry) {
	defer r.wg.Done()
	defer r.poke()
	ts, ttl, err := locate(r.ctx, r.x, q)

	r.mu.Lock()
	defer r.mu.Unlock()
	close(e.inflight)
	e.inflight = nil
	if r.ctx.Err() != nil {
		return // stopped, not a DNS failure: keep what is known
	}
	now := r.cfg.Clock.Now()
	old := e.res
	if err != nil {
		e.fails++
		retry := r.backoff(e.fails)
		e.res.Err = fmt.Errorf("resolve %s: %w", q, err)
		e.res.Expires = now.Add(retry)
		e.refreshAt = e.res.Expires
		r.report(old, e, retry)
	} else {
		e.fails = 0
		life := r.lifetime(ttl)
		e.res = Result{Query: q, Targets: ts, Updated: now, Expires: now.Add(life)}
		e.refreshAt = now.Add(life - life/refreshAhead)
		r.report(old, e, 0)
	}
	e.resolved = true
}

// refreshAhead: Run refreshes a watched result when 1/refreshAhead of its
// lifetime is left, so that the refresh (a few round trips) has ended
// before the result expires and a Lookup never finds it expired.
const refreshAhead = 10

// lifetime is a TTL in seconds clamped to [MinTTL, MaxTTL].
func (r *Resolver) lifetime(ttl uint32) time.Duration {
	d := r.cfg.MaxTTL
	if ttl < noTTL && time.Duration(ttl) < d/time.Second {
		d = time.Duration(ttl) * time.Second
	}
	return max(d, r.cfg.MinTTL)
}

// backoff is the wait before the retry after fails failures in a row:
// MinTTL, doubling each time, at most MaxTTL.
func (r *Resolver) backoff(fails int) time.Duration {
	d := r.cfg.MinTTL
	for range fails - 1 {
		if d >= r.cfg.MaxTTL/2 {
			return r.cfg.MaxTTL
		}
		d *= 2
	}
	return min(d, r.cfg.MaxTTL)
}

// report logs how e's result changed from old and, for a watched query,
// signals Changed. A failure is logged when it starts or its error
// changes, not at every retry. Called with r.mu held.
func (r *Resolver) report(old Result, e *entry, retry time.Duration) {
	res := e.res
	targetsChanged := !slices.Equal(old.Targets, res.Targets)
	errChanged := errText(old.Err) != errText(res.Err)
	if !targetsChanged && !errChanged && e.resolved {
		return
	}
	log := r.cfg.Logger.With(logAddress, res.Query.String())
	switch {
	case res.Err != nil && errChanged:
		log.Warn("upstream resolution failed", logError, res.Err,
			logTargets, targetList(res.Targets), logRetryIn, retry)
	case res.Err == nil && old.Err != nil:
		log.Info("upstream resolution recovered", logTargets, targetList(res.Targets))
	}
	if targetsChanged && res.Err == nil {
		log.Info("upstream targets changed", logTargets, targetList(res.Targets))
	}
	if e.watched {
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// targetList formats targets for a log line.
func targetList(ts []Target) slog.Value {
	if len(ts) == 0 {
		return slog.StringValue("none")
	}
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.String()
	}
	return slog.StringValue(strings.Join(s, ", "))
}
