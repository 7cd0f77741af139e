package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"
)

// HealthCheck configures the OPTIONS pings that mark upstreams up or down.
// The state is informational: it feeds Readiness, UpstreamHealth and the
// Observer, and authproxy still forwards to an upstream marked down (a
// false alarm must not turn into refused calls, and there is no other
// upstream to fail over to: routing is by configuration).
type HealthCheck struct {
	// Interval is the time between two rounds of pings, one OPTIONS to
	// every upstream per round. Zero turns the pings off.
	Interval time.Duration
	// DownAfter consecutive failed pings mark an upstream down. Zero means
	// 3: one lost UDP datagram must not flap the state.
	DownAfter int
	// UpAfter consecutive answered pings mark a down upstream up again.
	// Zero means 2, so that an upstream that restarts in a loop does not
	// flap either. An upstream not yet checked is marked up by its first
	// answer.
	UpAfter int
	// Timeout bounds the wait for one ping's response. Zero means the
	// interval, at most 5s.
	Timeout time.Duration
}

const (
	defaultDownAfter = 3
	defaultUpAfter   = 2
	// maxPingTimeout bounds a ping's wait when the interval is long: an
	// upstream that needs more than 5s to answer an OPTIONS on a LAN is
	// not healthy, and RFC 3261's 32s Timer F would hide an outage for half
	// a minute per ping.
	maxPingTimeout = 5 * time.Second
)

func (h HealthCheck) withDefaults() HealthCheck {
	if h.Interval < 0 {
		h.Interval = 0
	}
	if h.DownAfter <= 0 {
		h.DownAfter = defaultDownAfter
	}
	if h.UpAfter <= 0 {
		h.UpAfter = defaultUpAfter
	}
	if h.Timeout <= 0 {
		h.Timeout = min(h.Interval, maxPingTimeout)
	}
	return h
}

// HealthState is what the health check knows of an upstream.
type HealthState string

// The states of an upstream.
const (
	// HealthUnknown: not checked (yet, or health checks are off).
	HealthUnknown HealthState = "unknown"
	// HealthUp: the upstream answers OPTIONS.
	HealthUp HealthState = "up"
	// HealthDown: the upstream missed DownAfter pings in a row.
	HealthDown HealthState = "down"
)

// UpstreamHealth is a snapshot of one configured upstream's health.
type UpstreamHealth struct {
	// Name, Address and Transport ("udp"/"tcp") are as configured.
	Name, Address, Transport string
	// State is HealthUnknown until the first ping has an outcome, and
	// always when health checks are off.
	State HealthState
	// Since is when State was entered; zero while unknown.
	Since time.Time
	// LastPing is when the last ping ended; zero before the first.
	LastPing time.Time
	// LastRTT is the round-trip time of the last answered ping.
	LastRTT time.Duration
	// LastStatus is the status code of the last answer (any response,
	// 401/407 included, proves the upstream alive); 0 when the last ping
	// failed.
	LastStatus int
	// LastError says why the last ping failed; "" when it was answered.
	LastError string
	// Pings and Failures count the pings sent and those that failed since
	// the upstream was configured with this address and transport.
	Pings, Failures uint64
}

// Errors returned by Readiness.
var (
	// ErrNotListening: Run has not bound the listeners yet.
	ErrNotListening = errors.New("listeners not bound")
	// ErrDraining: the proxy is shutting down and refuses new requests.
	ErrDraining = errors.New("shutting down")
	// ErrNoUpstreamUp: health checks are on and every upstream is down.
	ErrNoUpstreamUp = errors.New("every upstream is down")
)

// Readiness returns nil when the proxy takes requests: its listeners are
// bound and all still serving, it is not shutting down, and, when OPTIONS
// health checks are on, at least one upstream is not marked down. One
// upstream down among several keeps the proxy ready: every instance sees
// the same upstreams, so failing readiness for one of them would take all
// instances out and turn one PBX's outage into an outage of all of them.
func (p *Proxy) Readiness() error {
	p.mu.Lock()
	bound := len(p.listeners) > 0
	stopped := p.stoppedListener()
	p.mu.Unlock()
	if !bound {
		return ErrNotListening
	}
	if stopped != nil {
		return stopped
	}
	if p.flight.isDraining() {
		return ErrDraining
	}
	if p.health.config().Interval <= 0 {
		return nil
	}
	hs := p.UpstreamHealth()
	var down []string
	for _, u := range hs {
		if u.State != HealthDown {
			return nil
		}
		down = append(down, u.Name)
	}
	if len(down) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrNoUpstreamUp, strings.Join(down, ", "))
}

// UpstreamHealth returns the health of every configured upstream, in
// configuration order (after a reload, of the new configuration).
func (p *Proxy) UpstreamHealth() []UpstreamHealth {
	ups := p.rt.Load().upstreams
	out := make([]UpstreamHealth, 0, len(ups))
	h := p.health
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, u := range ups {
		uh := UpstreamHealth{
			Name: u.Name, Address: net.JoinHostPort(u.host, strconv.Itoa(u.port)),
			Transport: strings.ToLower(u.transport), State: HealthUnknown,
		}
		if s := h.states[healthKey(u)]; s != nil {
			uh.State, uh.Since = s.state, s.since
			uh.LastPing, uh.LastRTT, uh.LastStatus, uh.LastError = s.lastPing, s.lastRTT, s.lastStatus, s.lastErr
			uh.Pings, uh.Failures = s.pings, s.failures
		}
		out = append(out, uh)
	}
	return out
}

// healthChecker pings the upstreams with OPTIONS and keeps their state.
type healthChecker struct {
	p    *Proxy
	cfg  atomic.Pointer[HealthCheck]
	kick chan struct{} // capacity 1: the configuration changed

	mu     sync.Mutex
	states map[string]*upstreamState // by healthKey
}

// upstreamState is the health record of one upstream; guarded by
// healthChecker.mu.
type upstreamState struct {
	state      HealthState
	since      time.Time
	okRun      int // consecutive answered pings
	failRun    int // consecutive failed pings
	lastPing   time.Time
	lastRTT    time.Duration
	lastStatus int
	lastErr    string
	pings      uint64
	failures   uint64
}

func newHealthChecker(p *Proxy, cfg HealthCheck) *healthChecker {
	h := &healthChecker{p: p, kick: make(chan struct{}, 1), states: map[string]*upstreamState{}}
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

// healthKey identifies an upstream's health record: a renamed upstream, or
// one given a new address or transport by a reload, starts afresh.
func healthKey(u *upstream) string {
	return u.Name + "\x00" + u.transport + "\x00" + net.JoinHostPort(u.host, strconv.Itoa(u.port))
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
			h.forget()
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

// forget drops every record: with health checks off, every upstream is
// unknown.
func (h *healthChecker) forget() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.states)
}

// round pings every configured upstream at once and waits for all.
func (h *healthChecker) round(ctx context.Context, cfg HealthCheck) {
	ups := h.p.rt.Load().upstreams
	type result struct {
		status int
		rtt    time.Duration
		err    error
	}
	results := make([]result, len(ups))
	var wg sync.WaitGroup
	for i, u := range ups {
		wg.Go(func() {
			status, rtt, err := h.p.ping(ctx, u, cfg.Timeout)
			results[i] = result{status, rtt, err}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // shutting down: a cancelled ping says nothing of the upstream
	}
	now := time.Now()
	h.mu.Lock()
	keep := make(map[string]bool, len(ups))
	type change struct {
		u    *upstream
		up   bool
		last string
	}
	var changes []change
	for i, u := range ups {
		k := healthKey(u)
		keep[k] = true
		s := h.states[k]
		if s == nil {
			s = &upstreamState{state: HealthUnknown}
			h.states[k] = s
		}
		r := results[i]
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
			s.state, s.since = next, now
			changes = append(changes, change{u, next == HealthUp, s.lastErr})
		}
	}
	for k := range h.states {
		if !keep[k] {
			delete(h.states, k) // removed by a reload
		}
	}
	h.mu.Unlock()

	for _, c := range changes {
		if c.up {
			h.p.log.Info("upstream up", logUpstream, c.u.Name, "address", net.JoinHostPort(c.u.host, strconv.Itoa(c.u.port)))
		} else {
			h.p.log.Warn("upstream down", logUpstream, c.u.Name, "address", net.JoinHostPort(c.u.host, strconv.Itoa(c.u.port)),
				"failed_pings", cfg.DownAfter, "error", c.last)
		}
		h.p.cfg.Observer.UpstreamStateChanged(c.u.Name, c.up)
	}
}

// errPingTimeout is the error of a ping that got no response in time.
var errPingTimeout = errors.New("no response")

// ping sends one OPTIONS to u (RFC 3261 §11) and waits up to timeout for
// any response: a 401/407 or even a 5xx proves that the upstream's SIP
// stack is alive and reachable, which is all a health check can tell.
func (p *Proxy) ping(ctx context.Context, u *upstream, timeout time.Duration) (status int, rtt time.Duration, err error) {
	req := p.healthRequest(u)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	tx, err := p.request(ctx, req, u.transport)
	if err != nil {
		return 0, 0, fmt.Errorf("send OPTIONS: %w", err)
	}
	defer tx.Terminate()
	select {
	case res := <-tx.Responses():
		return res.StatusCode, time.Since(start), nil
	case <-tx.Done():
		if err := tx.Err(); err != nil {
			return 0, 0, fmt.Errorf("OPTIONS: %w", err)
		}
		return 0, 0, fmt.Errorf("OPTIONS: %w", errPingTimeout)
	case <-ctx.Done():
		return 0, 0, fmt.Errorf("OPTIONS: %w within %s", errPingTimeout, timeout)
	}
}

// healthRequest builds the OPTIONS authproxy pings u with. It carries
// every header RFC 3261 §8.1.1 requires (our Via is added when it is
// sent), a fresh Call-ID so that no upstream sees it as a retransmission or
// checks its CSeq against an earlier ping, and Accept as §11.1 recommends.
func (p *Proxy) healthRequest(u *upstream) *sip.Request {
	host := u.host
	if strings.Contains(host, ":") {
		host = "[" + host + "]" // IPv6 in a URI
	}
	target := sip.Uri{Scheme: "sip", Host: host, Port: u.port, UriParams: sip.NewParams(), Headers: sip.NewParams()}
	if u.transport != "UDP" {
		target.UriParams.Add("transport", strings.ToLower(u.transport))
	}
	req := sip.NewRequest(sip.OPTIONS, target)

	local := "authproxy.invalid"
	var laddr sip.Addr
	if l := p.listenerFor(u.transport); l != nil {
		local = l.advertise
		if u.transport == "UDP" && !l.ip.IsUnspecified() && p.udpListenerServing(l) {
			// From the listening socket, as forwarded requests are: the
			// upstream answers where it would answer a client's request.
			laddr = sip.Addr{IP: l.ip, Port: l.port}
		}
	} else if len(p.listeners) > 0 {
		local = p.listeners[0].advertise
	}
	if strings.Contains(local, ":") {
		local = "[" + local + "]"
	}
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "authproxy", Host: local}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(16))
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", Host: host, Port: u.port}, Params: sip.NewParams()}
	callID := sip.CallIDHeader(uuid.NewString())
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&callID)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.OPTIONS})
	req.AppendHeader(&mf)
	req.AppendHeader(sip.NewHeader("Accept", "application/sdp"))
	req.AppendHeader(sip.NewHeader("User-Agent", "authproxy"))
	req.SetBody(nil)
	req.SetDestination(net.JoinHostPort(u.host, strconv.Itoa(u.port)))
	req.SetTransport(u.transport)
	req.Laddr = laddr
	return req
}

// udpListenerServing reports whether sipgo has registered l's socket.
// Run starts serving and the health checker at the same time; a request
// naming l as its local address before the socket is registered makes
// sipgo bind the port a second time and fail, so the first pings of a
// start go from an ephemeral port instead (our Via, with rport, still
// names the listener, and either way the response reaches the same
// transaction layer).
func (p *Proxy) udpListenerServing(l *boundListener) bool {
	pool := p.ua.TransportLayer().Pool("udp")
	if pool == nil || l.udp == nil {
		return false
	}
	c := pool.Get(l.udp.LocalAddr().String())
	if c == nil {
		return false
	}
	_, _ = c.TryClose() // Get took a reference; a listener is never closed by it
	return true
}

// isDraining reports whether shutdown has begun.
func (f *inflight) isDraining() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.draining
}
