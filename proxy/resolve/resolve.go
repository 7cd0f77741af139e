package resolve

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
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
	// brackets). Lookup also accepts upper case, brackets and a trailing
	// dot, and reports the query in this canonical form (Result.Query).
	Host string
	// Port is the port the address names; 0 when it names none, which
	// makes a domain go through SRV (RFC 3263 §4.2). An IP literal without
	// a port gets the transport's default port.
	Port int
	// Transport is UDP, TCP or TLS (any case). Empty lets NAPTR choose
	// among the transports authproxy supports (§4.1), falling back to SRV
	// lookups for each, then UDP. A sips: URI must pass TLS (§4.1: only
	// TLS may carry it), which asks _sips._tcp.
	Transport string
}

// String formats q for logs and errors: "host", "host:port", with
// ";transport=UDP" when the transport is set.
func (q Query) String() string {
	s := q.Host
	if strings.Contains(s, ":") {
		s = "[" + s + "]"
	}
	if q.Port != 0 {
		s += ":" + strconv.Itoa(q.Port)
	}
	if q.Transport != "" {
		s += ";transport=" + q.Transport
	}
	return s
}

// Target is one place a request may be sent: a transport and an address.
type Target struct {
	Transport string
	Addr      netip.AddrPort
	// Name is the host name the address was found for (the SRV target,
	// or the queried host), without a trailing dot; the address itself
	// for an IP literal.
	Name string
	// Priority and Weight are the SRV record's (RFC 2782); 0 for targets
	// found without SRV.
	Priority, Weight uint16
}

// String formats t for logs: "UDP 192.0.2.1:5060 (sip1.example.com)".
func (t Target) String() string {
	return t.Transport + " " + t.Addr.String() + " (" + t.Name + ")"
}

// Result is what is known of a query.
type Result struct {
	Query Query
	// Targets are sorted by priority, lowest first; within a priority in
	// the order DNS gave, and for one host name its IPv4 addresses before
	// its IPv6 ones. Order draws the per-request order. The slice is the
	// cache's own, shared by every Lookup: read it, never change it.
	Targets []Target
	// Updated is when Targets were last resolved successfully (zero for
	// an IP literal, which needs no DNS).
	Updated time.Time
	// Expires is when the cache refreshes the result: the smallest TTL
	// of the records used, clamped to Config.MinTTL and MaxTTL; after a
	// failed refresh, when the next attempt is due.
	Expires time.Time
	// Err is the error of the last refresh when it failed; Targets are
	// then the last good ones (kept until a refresh succeeds), if any.
	// It wraps ErrNoTargets when DNS said there is nothing (NXDOMAIN, no
	// address, an SRV target of "."), and the DNS failure otherwise (a
	// timeout, SERVFAIL): the message tells which.
	Err error
}

// Defaults of Config's zero values.
const (
	// DefaultMinTTL is the floor of a cached result's lifetime. Local
	// records often have TTL 0 (dnsmasq's without --local-ttl) and
	// failover zones use a few seconds: without a floor, every request
	// would wait for DNS. 10s keeps the load to a few queries per upstream
	// a minute while a change in DNS still shows within seconds.
	DefaultMinTTL = 10 * time.Second
	// DefaultMaxTTL is the ceiling of a cached result's lifetime. A day
	// is a common TTL; a PBX that moves must not stay unreachable for
	// that long, and one refresh an hour costs nothing.
	DefaultMaxTTL = time.Hour
	// DefaultTimeout bounds one DNS exchange with one server. A working
	// resolver answers in milliseconds; 2s (glibc waits 5s, then retries)
	// bounds what a first lookup, the only one a request waits for, can
	// cost per server, while a background refresh retries anyway.
	DefaultTimeout = 2 * time.Second
)

// Config configures a Resolver. The zero value uses the system's DNS
// servers and the defaults above.
type Config struct {
	// Servers are the DNS servers asked ("ip:port", or "ip" for port 53),
	// tried in order. Empty: the nameservers of /etc/resolv.conf (its
	// search list is not used: names are asked fully qualified).
	Servers []string
	// MinTTL and MaxTTL clamp the TTL of cached results: a TTL of 0 (as
	// dnsmasq gives local records) must not make every request wait for
	// DNS, and a day-long TTL must not hide a change for a day. They also
	// bound the retry backoff after a failure: the first retry comes
	// after MinTTL, each next one after twice as long, at most MaxTTL.
	// Zero means DefaultMinTTL and DefaultMaxTTL.
	MinTTL, MaxTTL time.Duration
	// Timeout bounds one DNS exchange. Zero means DefaultTimeout.
	Timeout time.Duration
	// Logger receives resolution changes (Info) and failures (Warn), once
	// per change of state. nil discards.
	Logger *slog.Logger
	// Clock tells the time of expiry and refresh; nil is the system
	// clock. Tests set one to move time without waiting for it.
	Clock Clock
}

// Clock is the time source of a Resolver.
type Clock interface {
	Now() time.Time
	// At returns a channel that receives once the clock has reached t:
	// at once if it already has.
	At(t time.Time) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) At(t time.Time) <-chan time.Time { return time.After(time.Until(t)) }

// withDefaults validates cfg and fills in its zero values.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.MinTTL == 0 {
		cfg.MinTTL = DefaultMinTTL
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = max(DefaultMaxTTL, cfg.MinTTL)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	var errs []error
	if cfg.MinTTL < 0 || cfg.MaxTTL < cfg.MinTTL {
		errs = append(errs, fmt.Errorf("resolve: TTL bounds %v..%v: want 0 <= MinTTL <= MaxTTL", cfg.MinTTL, cfg.MaxTTL))
	}
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("resolve: timeout %v: want > 0", cfg.Timeout))
	}
	servers := make([]string, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		a, err := serverAddr(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("resolve: %w", err))
		}
		servers = append(servers, a)
	}
	cfg.Servers = servers
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	return cfg, errors.Join(errs...)
}

// ErrNoTargets is wrapped by the error of a query that resolved to
// nothing usable.
var ErrNoTargets = errors.New("no targets")

// normalize puts q in the canonical form the cache is keyed by, or says
// why it cannot be resolved.
func normalize(q Query) (Query, error) {
	q.Host = strings.ToLower(strings.TrimSuffix(strings.Trim(q.Host, "[]"), "."))
	q.Transport = strings.ToUpper(q.Transport)
	switch q.Transport {
	case "", UDP, TCP, TLS:
	default:
		return q, fmt.Errorf("resolve %s: transport %q: want UDP, TCP or TLS", q, q.Transport)
	}
	if q.Port < 0 || q.Port > 65535 {
		return q, fmt.Errorf("resolve %s: port %d: want 0 to 65535", q, q.Port)
	}
	if _, ok := parseIP(q.Host); ok {
		return q, nil
	}
	if _, ok := dns.IsDomainName(q.Host); !ok || q.Host == "" {
		return q, fmt.Errorf("resolve %q: not a domain name or IP address", q.Host)
	}
	return q, nil
}

// literal answers a query whose host is an IP address.
func literal(q Query) (Result, bool) {
	ip, ok := parseIP(q.Host)
	if !ok {
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

// parseIP parses host as an IP address. It does not try a domain name
// (whose last label cannot be all digits, RFC 1123 §2.1): a failed parse
// allocates its error, and Lookup of a cached name allocates nothing more.
func parseIP(host string) (netip.Addr, bool) {
	if host == "" || (!strings.Contains(host, ":") && !isDigit(host[len(host)-1])) {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(host)
	return ip, err == nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// DefaultPort is a transport's SIP port: 5061 for TLS, 5060 otherwise
// (RFC 3261 §19.1.2).
func DefaultPort(transport string) int {
	if transport == TLS {
		return 5061
	}
	return 5060
}
