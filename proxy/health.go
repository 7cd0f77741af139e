package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// HealthCheck configures the OPTIONS pings that mark each target of each
// upstream (every address its name resolves to) up or down. A request
// skips the targets marked down, unless every one is (a false alarm must
// not turn into refused calls): targets.go, failover.go. The states also
// feed Readiness, UpstreamHealth and the Observer.
type HealthCheck struct {
	// Interval is the time between two rounds of pings, one OPTIONS to
	// every target of every upstream per round. Zero turns the pings off.
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
	if err := p.StoreReady(); err != nil {
		return err
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

// errPingTimeout is the error of a ping that got no response in time.
var errPingTimeout = errors.New("no response")

// ping sends one OPTIONS to target t of u (RFC 3261 §11) and waits up to
// timeout for any response: a 401/407 or even a 5xx proves that the
// target's SIP stack is alive and reachable, which is all a health check
// can tell.
func (p *Proxy) ping(ctx context.Context, u *upstream, t resolve.Target, timeout time.Duration) (status int, rtt time.Duration, err error) {
	req := p.healthRequest(u, t)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	if err := p.tlsReady(ctx, u, t); err != nil {
		return 0, 0, fmt.Errorf("send OPTIONS: %w", err)
	}
	tx, err := p.request(ctx, req, t.Transport)
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

// healthRequest builds the OPTIONS authproxy pings target t of u with. It
// is addressed to the upstream's configured name (the Request-URI and To
// carry the address as configured; only the destination is t's IP), carries
// every header RFC 3261 §8.1.1 requires (our Via is added when it is sent),
// a fresh Call-ID so that no upstream sees it as a retransmission or checks
// its CSeq against an earlier ping, and Accept as §11.1 recommends.
func (p *Proxy) healthRequest(u *upstream, t resolve.Target) *sip.Request {
	port := 0
	if u.query.Port != 0 || u.literal != nil {
		port = u.port // a domain resolved through SRV names no port
	}
	target := sip.Uri{Scheme: "sip", Host: u.host, Port: port, UriParams: sip.NewParams(), Headers: sip.NewParams()}
	if t.Transport != "UDP" {
		target.UriParams.Add("transport", strings.ToLower(t.Transport))
	}
	req := sip.NewRequest(sip.OPTIONS, target)

	local := "authproxy.invalid"
	var laddr sip.Addr
	if l := p.listenerFor(t.Transport, t.Addr.Addr()); l != nil {
		local = l.advertise
		if t.Transport == "UDP" && !l.ip.IsUnspecified() && p.udpListenerServing(l) {
			// From the listening socket, as forwarded requests are: the
			// upstream answers where it would answer a client's request.
			laddr = sip.Addr{IP: l.ip, Port: l.port}
		}
	} else if len(p.listeners) > 0 {
		local = p.listeners[0].advertise
	}
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "authproxy", Host: local}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(16))
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", Host: u.host, Port: port}, Params: sip.NewParams()}
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
	req.SetDestination(t.Addr.String())
	req.SetTransport(t.Transport)
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
