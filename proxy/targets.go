package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// Where requests to an upstream go (RFC 3263). An upstream's address is an
// IP literal (one target, no DNS), a host name with a port (its A/AAAA
// records) or a domain without one (NAPTR, then SRV, then A/AAAA).
// authproxy resolves names itself through proxy/resolve, which keeps every
// configured name fresh in the background from start and after each
// reload, and hands sipgo only IP:port destinations: the Request-URI and
// Route keep the name, and a slow or failing DNS server never holds up a
// request whose upstream already has targets. Credentials stay scoped by
// the configured address (the server identity), never by a resolved IP.

const (
	// defaultDNSTimeout bounds one DNS exchange, and how long a request
	// waits for the first resolution of its upstream's name (only the
	// first: afterwards the last known targets serve while a refresh runs
	// in the background). A client's INVITE has had its 100 Trying by
	// then; two seconds is Go's and glibc's own per-server budget order.
	defaultDNSTimeout = 2 * time.Second
	// defaultFailoverTimeout is how long an attempt waits for any response
	// before the next target is tried, when there is one (the last target
	// keeps the full Timer B/F). Over UDP the request has been sent four
	// times by then (0, 0.5, 1.5, 3.5 s): a target that answers none of
	// those is unreachable, not lossy. Kamailio and OpenSIPS failover
	// setups use a few seconds for fr_timer / fr_timeout for the same
	// reason.
	defaultFailoverTimeout = 4 * time.Second
)

// ErrNoTarget is the cause of a 503 for a request whose upstream has no
// usable target: its name did not resolve (yet), or every address it
// resolved to is of a family authproxy has no listener for.
var ErrNoTarget = errors.New("no usable target")

// upstreamQuery is what the resolver is asked for an upstream.
func upstreamQuery(host string, port int, portGiven bool, transport string) resolve.Query {
	q := resolve.Query{Host: host, Transport: transport}
	if portGiven {
		q.Port = port
	}
	return q
}

// literalTarget is the one target of an upstream addressed by IP.
func literalTarget(ip netip.Addr, port int, transport, host string) resolve.Target {
	return resolve.Target{Transport: transport, Addr: netip.AddrPortFrom(ip, uint16(port)), Name: host}
}

// hopOf is the next hop a target is: where sipgo sends the request.
func hopOf(t resolve.Target) hop {
	return hop{transport: t.Transport, addr: t.Addr.String()}
}

// targets keeps the resolver and what the request path needs from it.
type targets struct {
	r       *resolve.Resolver
	timeout time.Duration // bound on the wait for a first resolution
}

func newTargets(cfg resolve.Config) (*targets, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultDNSTimeout
	}
	r, err := resolve.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	return &targets{r: r, timeout: cfg.Timeout}, nil
}

// watch makes the resolver keep the names of ups fresh: their first
// resolution starts now, and every later one before the cached result
// expires.
func (t *targets) watch(ups []*upstream) {
	qs := make([]resolve.Query, 0, len(ups))
	for _, u := range ups {
		if u.literal == nil {
			qs = append(qs, u.query)
		}
	}
	t.r.Watch(qs)
}

// cached returns u's targets in resolver order without waiting: an IP
// literal's one target, or the last result of u's name. ok is false when
// the name has no result yet.
func (t *targets) cached(u *upstream) ([]resolve.Target, bool) {
	if u.literal != nil {
		return u.literal, true
	}
	res, ok := t.r.Cached(u.query)
	if !ok || len(res.Targets) == 0 {
		return nil, false
	}
	return t.order(res), true
}

// lookup returns u's targets, waiting for a first resolution of its name
// at most the DNS timeout (and never past ctx).
func (t *targets) lookup(ctx context.Context, u *upstream) ([]resolve.Target, error) {
	if ts, ok := t.cached(u); ok {
		return ts, nil
	}
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	res, err := t.r.Lookup(ctx, u.query) // its errors name the query
	if err == nil && len(res.Targets) == 0 {
		err = fmt.Errorf("resolve %s: %w", u.query, resolve.ErrNoTargets)
	}
	if err != nil {
		return nil, err
	}
	return t.order(res), nil
}

// order draws one request's order of res's targets (RFC 2782 weights
// within a priority).
func (t *targets) order(res resolve.Result) []resolve.Target {
	if len(res.Targets) == 1 {
		return res.Targets
	}
	return res.Order(nil)
}

// usableTargets filters ts, in order, for one request to u: targets of an
// address family authproxy has no listener of are dropped (our Via and
// Record-Route would name an address of the other family, which the
// target cannot answer), and targets marked down (health checks, or a
// failed transaction: health.go) are skipped, unless every one is: then
// all are tried, in order.
func (p *Proxy) usableTargets(u *upstream, ts []resolve.Target) []resolve.Target {
	if len(ts) == 1 {
		if !p.hasFamily(ts[0].Addr.Addr()) {
			return nil
		}
		return ts
	}
	out := make([]resolve.Target, 0, len(ts))
	var down []resolve.Target
	now := time.Now()
	for _, t := range ts {
		if !p.hasFamily(t.Addr.Addr()) {
			continue
		}
		if p.health.avoid(u, t, now) {
			down = append(down, t)
			continue
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return down // every one is down: try them anyway, in order
	}
	return out
}

// hasFamily reports whether authproxy listens on an address of a's family
// (an IPv6 wildcard listener serves both on Linux).
func (p *Proxy) hasFamily(a netip.Addr) bool {
	for _, l := range p.listeners {
		if l.serves(a) {
			return true
		}
	}
	return len(p.listeners) == 0 // not bound (tests without sockets)
}

// targetKey names a target of an upstream in health records and logs.
func targetKey(u *upstream, t resolve.Target) string {
	return u.Name + "\x00" + t.Transport + "\x00" + t.Addr.String()
}

// parseUpstreamAddress splits an upstream address into its host (lowercase,
// an IPv6 literal without brackets) and port; portGiven is false when the
// address names none ("carrier.example", "[2001:db8::1]"), and port is
// then the transport's default.
func parseUpstreamAddress(addr, transport string) (host string, port int, portGiven bool, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		if !strings.Contains(err.Error(), "missing port") {
			return "", 0, false, err
		}
		h = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
		return strings.ToLower(h), resolve.DefaultPort(transport), false, nil
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, false, fmt.Errorf("port %q out of range", p)
	}
	return strings.ToLower(h), n, true, nil
}
