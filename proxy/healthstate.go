package proxy

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// The health of each target of each upstream: OPTIONS pings (HealthCheck)
// move a target up or down with hysteresis, and a transaction that failed
// on a target (no response, a transport error, a 503: failover.go) keeps
// it out of requests' first choices for a while (avoidFor), as Kamailio's
// destination blocklist does, with health checks on or off; with them on,
// a target the pings saw down and then up again is back in requests' first
// choices as soon as it is marked up. An upstream is up when one of its
// targets is, down when all are.

// Passive avoidance of a target after a failed transaction.
const (
	// avoidFor is how long a target that failed a transaction is tried
	// only after the others: long enough that a dead target costs one
	// failover timeout per half minute instead of one per request, short
	// enough that a target back from a restart gets traffic soon even
	// without health checks (Kamailio's dst_blocklist_expire is 60s).
	avoidFor = 30 * time.Second
	// maxAvoidFor bounds the Retry-After of a 503 honoured the same way
	// (RFC 3261 §21.5.4), so that a careless value cannot take a target
	// out for a day.
	maxAvoidFor = 5 * time.Minute
)

// UpstreamHealth is a snapshot of one configured upstream's health and of
// what its address resolves to.
type UpstreamHealth struct {
	// Name, Address and Transport ("udp"/"tcp"/"tls") are as configured.
	Name, Address, Transport string
	// State is HealthUp when one of its targets is up, HealthDown when
	// every target is down, HealthUnknown otherwise (and always when
	// health checks are off).
	State HealthState
	// Since is when State was entered; zero while unknown.
	Since time.Time
	// LastPing is when the last ping to any of its targets ended, and
	// LastRTT, LastStatus and LastError are that ping's.
	LastPing   time.Time
	LastRTT    time.Duration
	LastStatus int
	LastError  string
	// Pings and Failures count the pings sent to its targets and those
	// that failed.
	Pings, Failures uint64
	// Targets are the addresses Address resolves to, in priority order
	// (one for an IP literal), each with its own health.
	Targets []TargetHealth
	// Resolved is when the name last resolved successfully and Expires
	// when the resolver refreshes it (both zero for an IP literal);
	// ResolveError is why the last resolution failed ("" when it did not:
	// Targets are then the last good ones, if any).
	Resolved, Expires time.Time
	ResolveError      string
}

// TargetHealth is the health of one target of an upstream.
type TargetHealth struct {
	// Transport is "udp", "tcp" or "tls"; Address the "ip:port" requests
	// are sent to; Name the host it was found for (an SRV target).
	Transport, Address, Name string
	// Priority and Weight are its SRV record's (0 without SRV).
	Priority, Weight uint16
	// State is the OPTIONS pings' verdict (HealthUnknown with health
	// checks off or before the first ping has an outcome); Since when it
	// was entered.
	State HealthState
	Since time.Time
	// LastPing, LastRTT, LastStatus, LastError, Pings and Failures are as
	// in UpstreamHealth, for this target alone.
	LastPing        time.Time
	LastRTT         time.Duration
	LastStatus      int
	LastError       string
	Pings, Failures uint64
	// AvoidUntil is, after a transaction failed on this target, until when
	// requests try it only after the upstream's other targets (zero when
	// they do not).
	AvoidUntil time.Time
	// LastFailure says how the last failed transaction failed ("timeout",
	// "transport-error", "503").
	LastFailure string
}

// healthChecker pings the targets with OPTIONS and keeps their state.
type healthChecker struct {
	p    *Proxy
	cfg  atomic.Pointer[HealthCheck]
	kick chan struct{} // capacity 1: the configuration changed

	mu     sync.Mutex
	states map[string]*targetState // by targetKey
	ups    map[string]*upstreamAgg // by upstreamKey
}

// targetState is the health record of one target; guarded by
// healthChecker.mu.
type targetState struct {
	state       HealthState
	since       time.Time
	okRun       int // consecutive answered pings
	failRun     int // consecutive failed pings
	lastPing    time.Time
	lastRTT     time.Duration
	lastStatus  int
	lastErr     string
	pings       uint64
	failures    uint64
	avoidUntil  time.Time
	lastFailure string
}

// upstreamAgg is an upstream's state as last derived from its targets'.
type upstreamAgg struct {
	state HealthState
	since time.Time
}

func newHealthChecker(p *Proxy, cfg HealthCheck) *healthChecker {
	h := &healthChecker{p: p, kick: make(chan struct{}, 1), states: map[string]*targetState{}, ups: map[string]*upstreamAgg{}}
	h.configure(cfg)
	return h
}

func (h *healthChecker) config() HealthCheck { return *h.cfg.Load() }

// configure applies a new configuration from the next round on (at once
// when the interval changed).
func (h *healthChecker) configure(cfg HealthCheck) {
	cfg = cfg.withDefaults()
	old := h.cfg.Swap(&cfg)
	if old != nil && old.Interval == cfg.Interval {
		return
	}
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// upstreamKey identifies an upstream's aggregate record: a renamed
// upstream, or one given a new address or transport by a reload, starts
// afresh.
func upstreamKey(u *upstream) string {
	return u.Name + "\x00" + u.transport + "\x00" + u.Address
}

// start runs the checker until ctx ends; the returned channel is closed
// once it has stopped and every ping it sent has finished.
func (h *healthChecker) start(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.run(ctx)
	}()
	return done
}

func (h *healthChecker) run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	if !timer.Stop() {
		<-timer.C
	}
	for {
		cfg := h.config()
		var tick <-chan time.Time
		if cfg.Interval > 0 {
			h.round(ctx, cfg)
			timer.Reset(cfg.Interval)
			tick = timer.C
		} else {
			h.forgetPings()
		}
		select {
		case <-ctx.Done():
			return
		case <-h.kick:
			if !timer.Stop() && tick != nil {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-tick:
		}
	}
}

// forgetPings drops what pings found: with health checks off, every target
// is unknown (passive avoidance stays).
func (h *healthChecker) forgetPings() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.states {
		*s = targetState{state: HealthUnknown, avoidUntil: s.avoidUntil, lastFailure: s.lastFailure}
	}
	clear(h.ups)
}

// pingResult is the outcome of one ping.
type pingResult struct {
	u      *upstream
	t      resolve.Target
	status int
	rtt    time.Duration
	err    error
}

// round pings every target of every configured upstream at once and waits
// for all. An upstream whose name has not resolved yet waits for it at
// most the ping timeout.
func (h *healthChecker) round(ctx context.Context, cfg HealthCheck) {
	ups := h.p.rt.Load().upstreams
	var mu sync.Mutex
	var results []pingResult
	var wg sync.WaitGroup
	for _, u := range ups {
		wg.Go(func() {
			lctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
			ts, err := h.p.targets.lookup(lctx, u)
			cancel()
			if err != nil {
				return // reported by the resolver's state in UpstreamHealth
			}
			var inner sync.WaitGroup
			for _, t := range ts {
				inner.Go(func() {
					status, rtt, err := h.p.ping(ctx, u, t, cfg.Timeout)
					mu.Lock()
					results = append(results, pingResult{u, t, status, rtt, err})
					mu.Unlock()
				})
			}
			inner.Wait()
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // shutting down: a cancelled ping says nothing of a target
	}
	h.record(ups, results, cfg, time.Now())
}

// record applies a round's results, derives the upstreams' states and
// reports the changes.
func (h *healthChecker) record(ups []*upstream, results []pingResult, cfg HealthCheck, now time.Time) {
	type change struct {
		name, address string
		up            bool
		last          string
	}
	var changes []change
	h.mu.Lock()
	keep := make(map[string]bool, len(results))
	for _, r := range results {
		k := targetKey(r.u, r.t)
		keep[k] = true
		s := h.states[k]
		if s == nil {
			s = &targetState{state: HealthUnknown}
			h.states[k] = s
		}
		s.pings++
		s.lastPing = now
		if r.err != nil {
			s.failures++
			s.failRun++
			s.okRun = 0
			s.lastStatus, s.lastErr = 0, r.err.Error()
		} else {
			s.okRun++
			s.failRun = 0
			s.lastStatus, s.lastErr, s.lastRTT = r.status, "", r.rtt
		}
		next := s.state
		switch {
		case r.err == nil && s.state == HealthUnknown,
			r.err == nil && s.state == HealthDown && s.okRun >= cfg.UpAfter:
			next = HealthUp
		case r.err != nil && s.state != HealthDown && s.failRun >= cfg.DownAfter:
			next = HealthDown
		}
		if next != s.state {
			if next == HealthUp && s.state == HealthDown {
				// The pings saw it die and come back (a restart): the
				// avoidance its failed transactions earned ends now, so
				// that it rejoins at once rather than at avoidFor.
				s.avoidUntil = time.Time{}
			}
			s.state, s.since = next, now
			if next == HealthUp {
				h.p.log.Info("upstream target up", logUpstream, r.u.Name, "target", r.t.Addr.String())
			} else {
				h.p.log.Warn("upstream target down", logUpstream, r.u.Name, "target", r.t.Addr.String(),
					"failed_pings", cfg.DownAfter, "error", s.lastErr)
			}
		}
	}
	for k, s := range h.states {
		if !keep[k] && s.avoidUntil.Before(now) {
			delete(h.states, k) // a target no longer resolved, or an upstream removed by a reload
		}
	}
	upKeep := make(map[string]bool, len(ups))
	for _, u := range ups {
		uk := upstreamKey(u)
		upKeep[uk] = true
		state, last := h.deriveLocked(u, results)
		a := h.ups[uk]
		if a == nil {
			a = &upstreamAgg{state: HealthUnknown}
			h.ups[uk] = a
		}
		if state != a.state && state != HealthUnknown {
			a.state, a.since = state, now
			changes = append(changes, change{u.Name, u.Address, state == HealthUp, last})
		}
	}
	for k := range h.ups {
		if !upKeep[k] {
			delete(h.ups, k)
		}
	}
	h.mu.Unlock()

	for _, c := range changes {
		if c.up {
			h.p.log.Info("upstream up", logUpstream, c.name, "address", c.address)
		} else {
			h.p.log.Warn("upstream down", logUpstream, c.name, "address", c.address, "error", c.last)
		}
		h.p.cfg.Observer.UpstreamStateChanged(c.name, c.up)
	}
}

// deriveLocked is u's state from its targets pinged in this round: up when
// one is up, down when all are down, unknown otherwise; last is the error
// of a down target.
func (h *healthChecker) deriveLocked(u *upstream, results []pingResult) (HealthState, string) {
	n, down := 0, 0
	last := ""
	for _, r := range results {
		if r.u != u {
			continue
		}
		n++
		switch s := h.states[targetKey(u, r.t)]; s.state {
		case HealthUp:
			return HealthUp, ""
		case HealthDown:
			down++
			last = s.lastErr
		}
	}
	if n > 0 && down == n {
		return HealthDown, last
	}
	return HealthUnknown, ""
}

// avoid reports whether requests should try target t of u only after the
// others: marked down by pings, or a transaction failed on it recently.
func (h *healthChecker) avoid(u *upstream, t resolve.Target, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.states[targetKey(u, t)]
	return s != nil && (s.state == HealthDown || now.Before(s.avoidUntil))
}

// failed notes a transaction that failed on target t of u (how: "timeout",
// "transport-error", "503"): the target is avoided for avoidFor, or for
// the 503's Retry-After when it gave one (at most maxAvoidFor).
func (h *healthChecker) failed(u *upstream, t resolve.Target, how string, retryAfter time.Duration) {
	d := avoidFor
	if retryAfter > 0 {
		d = min(retryAfter, maxAvoidFor)
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.states[targetKey(u, t)]
	if s == nil {
		s = &targetState{state: HealthUnknown}
		h.states[targetKey(u, t)] = s
	}
	s.avoidUntil, s.lastFailure = now.Add(d), how
}

// UpstreamHealth returns the health of every configured upstream and its
// targets, in configuration order (after a reload, of the new
// configuration).
func (p *Proxy) UpstreamHealth() []UpstreamHealth {
	ups := p.rt.Load().upstreams
	out := make([]UpstreamHealth, 0, len(ups))
	for _, u := range ups {
		tp := strings.ToLower(u.transport)
		if tp == "" {
			tp = "auto"
		}
		uh := UpstreamHealth{Name: u.Name, Address: u.displayAddress(), Transport: tp, State: HealthUnknown}
		res := resolve.Result{Targets: u.literal}
		if u.literal == nil {
			res, _ = p.targets.r.Cached(u.query)
			uh.Resolved, uh.Expires = res.Updated, res.Expires
			if res.Err != nil {
				uh.ResolveError = res.Err.Error()
			}
		}
		p.health.snapshot(u, res.Targets, &uh)
		out = append(out, uh)
	}
	return out
}

// snapshot fills uh's states from the records of u and its targets ts.
func (h *healthChecker) snapshot(u *upstream, ts []resolve.Target, uh *UpstreamHealth) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if a := h.ups[upstreamKey(u)]; a != nil {
		uh.State, uh.Since = a.state, a.since
	}
	for _, t := range ts {
		th := TargetHealth{
			Transport: strings.ToLower(t.Transport), Address: t.Addr.String(), Name: t.Name,
			Priority: t.Priority, Weight: t.Weight, State: HealthUnknown,
		}
		if s := h.states[targetKey(u, t)]; s != nil {
			th.State, th.Since = s.state, s.since
			th.LastPing, th.LastRTT, th.LastStatus, th.LastError = s.lastPing, s.lastRTT, s.lastStatus, s.lastErr
			th.Pings, th.Failures = s.pings, s.failures
			th.AvoidUntil, th.LastFailure = s.avoidUntil, s.lastFailure
			uh.Pings += s.pings
			uh.Failures += s.failures
			if s.lastPing.After(uh.LastPing) {
				uh.LastPing, uh.LastRTT, uh.LastStatus, uh.LastError = s.lastPing, s.lastRTT, s.lastStatus, s.lastErr
			}
		}
		uh.Targets = append(uh.Targets, th)
	}
}

// displayAddress is the upstream's address as configured, normalised: host
// and port, or the bare domain when it names no port (SRV).
func (u *upstream) displayAddress() string {
	if u.literal == nil && u.query.Port == 0 {
		return u.host
	}
	return net.JoinHostPort(u.host, strconv.Itoa(u.port))
}
