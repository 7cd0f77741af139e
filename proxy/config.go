package proxy

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/proxy/resolve"
	"github.com/authproxy/authproxy/proxy/tcpguard"
	"github.com/authproxy/authproxy/proxy/wsgate"
	"github.com/authproxy/authproxy/state"
)

// Listener is one local socket the proxy serves clients (and upstream
// responses) on.
type Listener struct {
	// Transport is "udp", "tcp", "tls", "ws" or "wss" (SIP over
	// WebSocket, RFC 7118; "wss" over TLS).
	Transport string
	// Address is the local host:port to bind; port 0 picks a free one
	// (tests), reported afterwards by Proxy.ListenAddrs.
	Address string
	// Advertise is the host written into our Via and Record-Route headers;
	// empty means the bound host.
	Advertise string
	// TLS is the server configuration (certificate) of a "tls" or "wss"
	// listener.
	TLS *tls.Config
	// WebSocket is what a "ws" or "wss" listener checks at the upgrade.
	WebSocket WebSocketListener
}

// WebSocketListener is the HTTP side of a "ws" or "wss" listener
// (wsgate.ListenerConfig).
type WebSocketListener struct {
	// Path is the request path upgraded (default "/"); any other is
	// answered 404.
	Path string
	// Origins are the web page origins ("https://app.example.com") that may
	// open a connection; a page of another origin is answered 403. Empty
	// allows every origin.
	Origins []string
	// TokenSecret, when set, requires a token signed with it (wsgate
	// token.go) at the upgrade, and admits the SIP requests of that
	// connection without authproxy's digest challenge.
	TokenSecret credentials.Secret
}

// Upstream is one configured server authproxy forwards to. Requests only
// ever go to an Upstream, never to a host a client names.
type Upstream struct {
	// Name identifies the upstream in logs.
	Name string
	// Address is an IP literal, "host:port" (the host's A/AAAA records) or a
	// domain without port (NAPTR, SRV, then A/AAAA: RFC 3263), resolved by
	// authproxy (targets.go). It is also the server identity credentials
	// are looked up with (config resolves a credential's upstream name to
	// it), whatever it resolves to.
	Address string
	// Transport is "udp", "tcp", "tls" or "auto": the domain's NAPTR
	// records choose among the three (RFC 3263 §4.1; an IP literal or an
	// address with a port is UDP).
	Transport string
	// RootCAs verifies a "tls" upstream's certificate; nil means the system
	// roots. Verification is never off.
	RootCAs *x509.CertPool
	// ServerName is the name the upstream's certificate must carry; empty
	// means the host of Address.
	ServerName string
	// Domains are the Request-URI hosts routed here besides the upstream's
	// own host.
	Domains []string
	// Default makes this upstream take requests whose Request-URI matches no
	// upstream.
	Default bool
	// Preemptive says which requests carry credentials computed from the
	// upstream's last challenge before it challenges them (preemptive.go).
	// The zero value is PreemptiveOff.
	Preemptive Preemptive
	// AcceptFrom are source prefixes besides the addresses Address resolves
	// to that requests from this upstream may come from (a carrier that
	// sends from other addresses than it receives on): a callee's BYE, an
	// INVITE to a registered client or a trunk registration.
	AcceptFrom []netip.Prefix
	// RegisterMode is how clients' REGISTERs reach this upstream:
	// RegisterPath ("path", the default when empty) adds a Path header;
	// RegisterContact ("contact") rewrites the Contact to authproxy, for
	// registrars without RFC 3327 support (registrar.go).
	RegisterMode string
}

// Credentials answers which credential to use for a challenge. It is
// satisfied by *credentials.Store; an interface so that a reload can swap
// stores behind it.
type Credentials interface {
	Lookup(server, realm, user string) credentials.Credential
}

// Config is everything the proxy needs, as plain values. cmd/authproxy
// builds it from the TOML configuration.
type Config struct {
	Listeners []Listener
	Upstreams []Upstream
	// Groups route to ordered lists of upstreams, failing over from one to
	// the next (groups.go).
	Groups      []UpstreamGroup
	Credentials Credentials
	// Clients are the groups of clients admitted, in order; a request from
	// a source no group admits is refused. No groups: nobody is admitted.
	Clients []ClientGroup
	// Limits bound requests per source and in total.
	Limits Limits
	// TCP bounds the connections of the TCP and TLS listeners: caps in
	// total and per source, deadlines, the maximum message size
	// (tcpguard.Limits). A zero field turns its limit off, except
	// MaxMessageSize: zero means MaxMessageSize, the most it may be.
	// Connections to a source no client group admits are refused whatever
	// the limits; connections authproxy opens to upstreams are not limited.
	// Reload does not apply a change (ErrRestartRequired).
	TCP tcpguard.Limits
	// WebSocket bounds the connections of the "ws" and "wss" listeners:
	// caps in total and per source, the handshake and idle timeouts, the
	// Ping interval, the maximum message size (wsgate.Limits). Reload does
	// not apply a change (ErrRestartRequired).
	WebSocket wsgate.Limits
	// MaxChallenges bounds how many 401/407 one request may have answered
	// before the last one is relayed to the client (RFC 3261 §22.1 forbids
	// retrying rejected credentials; this caps stale-nonce rounds too).
	// Zero means 3.
	MaxChallenges int
	// UpstreamTimeout is how long a non-INVITE request, or an INVITE that has
	// had no response yet, waits upstream before the client gets 408. Zero
	// means 32s, RFC 3261 Timer F/B (64*T1).
	UpstreamTimeout time.Duration
	// TimerC bounds how long an INVITE that has had a provisional response
	// waits for its final one before authproxy CANCELs it upstream and
	// answers 408 (RFC 3261 §16.8: more than 3 minutes). Zero means 3m30s.
	TimerC time.Duration
	// DialogIdleTimeout ends the state of a dialog that has seen no request
	// for this long (a call whose BYE was lost). Zero means 2h.
	DialogIdleTimeout time.Duration
	// ShutdownGrace bounds how long Run waits for transactions in flight
	// after its context is cancelled. Zero means 5s.
	ShutdownGrace time.Duration
	// Logger receives one line per forwarded request and diagnostics. nil
	// discards.
	Logger *slog.Logger
	// SIPTrace logs every SIP message at debug level, with Authorization and
	// Proxy-Authorization values redacted.
	SIPTrace bool
	// Observer, if set, is told about every request, for metrics.
	Observer Observer
	// Ready, if set, is called once every listener is bound.
	Ready func()
	// Health configures OPTIONS pings to the upstreams; the zero value
	// turns them off. Reload applies a new one.
	Health HealthCheck
	// Registrations are the trunk registrations authproxy keeps up itself
	// (registration.go). Reload adds and removes them without touching the
	// others.
	Registrations []Registration
	// RegistrationRetryMin and RegistrationRetryMax bound the backoff
	// between failed registration attempts (doubling, with jitter). Zero
	// means 2s and 5m.
	RegistrationRetryMin, RegistrationRetryMax time.Duration
	// RegistrationRejectedBackoff is the least wait after a registrar
	// rejected the credentials. Zero means 30s.
	RegistrationRejectedBackoff time.Duration
	// DNS configures the resolver of upstream names (its Logger is the
	// proxy's). Its Timeout also bounds how long a request waits for the
	// first resolution of its upstream's name; zero means 2s.
	DNS resolve.Config
	// FailoverTimeout is how long an attempt waits for any response before
	// the request moves to the next target or upstream, when there is one
	// (RFC 3263 §4.3); the last attempt keeps UpstreamTimeout. Zero means
	// 4s.
	FailoverTimeout time.Duration
	// State is where the bindings, REGISTER CSeq offsets, trunk
	// registrations' state and leases go (docs/state.md); nil keeps them
	// in memory only. The proxy does not close it.
	State state.Store
	// StateBackend names State's backend, for /status ("memory", "file",
	// "redis").
	StateBackend string
	// Instance names this instance in a shared store (lease holder,
	// cluster member). Empty means the host name and the process ID.
	Instance string
	// LeaseTTL is how long a trunk registration's lease lasts without
	// renewal in a shared store: a dead holder's trunk is taken over
	// within it. Zero means 15s.
	LeaseTTL time.Duration
	// StateReadiness makes Ready report not ready while a shared store
	// does not answer.
	StateReadiness bool
	// Capture sends a HEPv3 copy of every SIP message authproxy's sockets
	// read or write to a receiver (capture.go); the zero value sends
	// none. Reload does not apply a change.
	Capture Capture
}

func (c *Config) setRegistrationDefaults() {
	if c.RegistrationRetryMin <= 0 {
		c.RegistrationRetryMin = defaultRegRetryMin
	}
	if c.RegistrationRetryMax <= 0 {
		c.RegistrationRetryMax = defaultRegRetryMax
	}
	if c.RegistrationRetryMax < c.RegistrationRetryMin {
		c.RegistrationRetryMax = c.RegistrationRetryMin
	}
	if c.RegistrationRejectedBackoff <= 0 {
		c.RegistrationRejectedBackoff = rejectedMinBackoff
	}
}

const (
	defaultMaxChallenges   = 3
	defaultUpstreamTimeout = 32 * time.Second // RFC 3261 Timer F = 64*T1
	defaultShutdownGrace   = 5 * time.Second
	defaultTimerC          = 210 * time.Second // RFC 3261 §16.8: greater than 3 minutes
	defaultDialogIdle      = 2 * time.Hour
)

// upstream is an Upstream with its address parsed once.
type upstream struct {
	Upstream
	host      string       // lowercased, IPv6 without brackets
	ip        netip.Addr   // host when it is an IP literal (unmapped), else invalid
	udpAddr   *net.UDPAddr // ip and port, when ip is valid: where the fast lane sends datagrams
	port      int          // the address's port, else the transport's default
	transport string       // "UDP", "TCP" or "TLS", as sipgo spells it; "" for "auto" (each target has its own)
	query     resolve.Query
	// literal is the one target of an IP literal, which needs no DNS (nil
	// for a name), and literalHop its hop, computed once.
	literal    []resolve.Target
	literalHop hop
}

func (c *Config) validate() ([]*upstream, error) {
	if len(c.Listeners) == 0 {
		return nil, fmt.Errorf("no listener configured")
	}
	for i, l := range c.Listeners {
		tp, err := listenTransport(l.Transport)
		if err != nil {
			return nil, fmt.Errorf("listener %d: %w", i, err)
		}
		if (tp == "TLS" || tp == "WSS") && (l.TLS == nil || (len(l.TLS.Certificates) == 0 && l.TLS.GetCertificate == nil)) {
			return nil, fmt.Errorf("listener %d: tls needs a certificate", i)
		}
	}
	if c.Credentials == nil {
		return nil, fmt.Errorf("no credential source configured")
	}
	if err := validateCapture(c.Capture); err != nil {
		return nil, err
	}
	if err := validateTCP(c.TCP); err != nil {
		return nil, err
	}
	if err := validateWebSocket(c.WebSocket); err != nil {
		return nil, err
	}
	ups := make([]*upstream, 0, len(c.Upstreams))
	for i, u := range c.Upstreams {
		tp, err := upstreamTransport(u.Transport)
		if err != nil {
			return nil, fmt.Errorf("upstream %d (%s): %w", i, u.Name, err)
		}
		host, port, portGiven, err := parseUpstreamAddress(u.Address, tp)
		if err != nil || host == "" {
			return nil, fmt.Errorf("upstream %d (%s): address %q: want an IP, host:port or a domain", i, u.Name, u.Address)
		}
		switch u.RegisterMode {
		case "", RegisterPath, RegisterContact:
		default:
			return nil, fmt.Errorf("upstream %d (%s): register mode %q: want path or contact", i, u.Name, u.RegisterMode)
		}
		ip, _ := netip.ParseAddr(host) // invalid for a name
		up := &upstream{Upstream: u, host: host, ip: ip.Unmap(), port: port, transport: tp,
			query: upstreamQuery(host, port, portGiven, tp)}
		if up.ip.IsValid() {
			up.udpAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(up.ip, uint16(port)))
			up.literal = []resolve.Target{literalTarget(up.ip, port, cmp.Or(tp, "UDP"), host)}
			up.literalHop = hopOf(up.literal[0])
		}
		ups = append(ups, up)
	}
	for i, r := range c.Registrations {
		found := false
		for _, u := range c.Upstreams {
			found = found || u.Name == r.Upstream
		}
		if !found {
			return nil, fmt.Errorf("registration %d (%s): upstream %q is not configured", i, r.AOR, r.Upstream)
		}
		var aor sip.Uri
		if err := sip.ParseUri(r.AOR, &aor); err != nil || aor.User == "" || aor.Host == "" {
			return nil, fmt.Errorf("registration %d: aor %q: want sip:user@domain", i, r.AOR)
		}
		if r.Target != "" {
			if _, _, _, err := parseTarget(r.Target, aor.User); err != nil {
				return nil, fmt.Errorf("registration %d (%s): %w", i, r.AOR, err)
			}
		}
	}
	for i, g := range c.Clients {
		for _, name := range g.Upstreams {
			if name == "*" {
				continue
			}
			found := false
			for _, u := range c.Upstreams {
				found = found || u.Name == name
			}
			if !found {
				return nil, fmt.Errorf("client group %d (%s): upstream %q is not configured", i, g.Name, name)
			}
		}
	}
	return ups, nil
}

// listenTransport is normTransport for a listener, which may also be
// "ws" or "wss".
func listenTransport(t string) (string, error) {
	switch strings.ToLower(t) {
	case "ws":
		return "WS", nil
	case "wss":
		return "WSS", nil
	}
	tp, err := normTransport(t)
	if err != nil {
		return "", fmt.Errorf("transport %q: want udp, tcp, tls, ws or wss", t)
	}
	return tp, nil
}

// isWebSocket reports whether transport ("WS", "WSS") is SIP over
// WebSocket.
func isWebSocket(transport string) bool {
	return transport == "WS" || transport == "WSS"
}

// upstreamTransport is normTransport for an upstream, which may also be
// "auto" (returned as "": the resolver's NAPTR lookup chooses).
func upstreamTransport(t string) (string, error) {
	if strings.EqualFold(t, "auto") {
		return "", nil
	}
	tp, err := normTransport(t)
	if err != nil {
		return "", fmt.Errorf("transport %q: want udp, tcp, tls or auto", t)
	}
	return tp, nil
}

func normTransport(t string) (string, error) {
	switch strings.ToLower(t) {
	case "udp", "":
		return "UDP", nil
	case "tcp":
		return "TCP", nil
	case "tls":
		return "TLS", nil
	}
	return "", fmt.Errorf("transport %q: want udp, tcp or tls", t)
}

// splitHostPort parses host[:port] with the SIP default port 5060.
func splitHostPort(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		// No port: the whole thing is the host.
		if strings.Contains(err.Error(), "missing port") {
			return strings.ToLower(strings.Trim(addr, "[]")), 5060, nil
		}
		return "", 0, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q out of range", portStr)
	}
	return strings.ToLower(host), port, nil
}
