package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/authproxy/authproxy/credentials"
)

// Config is a validated authproxy configuration as plain values. Every
// default is filled in and every address is normalised, so consumers never
// re-parse or re-default anything.
type Config struct {
	// Log configures logging; cmd/authproxy builds the handler from it.
	Log Log
	// Proxy tunes the proxy core.
	Proxy Proxy
	// Admin configures the HTTP admin listener (metrics, health, status).
	Admin Admin
	// Health configures the OPTIONS health checks of the upstreams.
	Health Health
	// DNS configures how upstream names are resolved.
	DNS DNS
	// Reload configures live reloading of the configuration file.
	Reload Reload
	// Listen has at least one entry.
	Listen []Listen
	// Upstreams has at least one entry; names are unique, at most one
	// upstream or group is the default.
	Upstreams []Upstream
	// Groups are the [[group]] tables: ordered lists of upstreams routed
	// to as one, failing over from each to the next. Their names differ
	// from the upstreams'.
	Groups []Group
	// Credentials are in file order, each with exactly one kind of secret
	// (Password, or one or more HA1s) and its Server resolved: an upstream
	// name is replaced by that upstream's normalised address.
	Credentials []credentials.Entry
	// Clients are the [[client]] groups, in file order: who is admitted,
	// to which upstreams. At least one (authproxy admits no one by default).
	Clients []Client
	// Limits is the [limits] table.
	Limits Limits
	// TCP is the [tcp] table.
	TCP TCP
	// WebSocket is the [websocket] table.
	WebSocket WebSocket
	// Registrations are the [[registration]] tables: registrations
	// authproxy keeps up with an upstream itself.
	Registrations []Registration
	// Runtime is the [runtime] table.
	Runtime Runtime
	// State is the [state] table.
	State State
	// Capture is the [capture] table (capture.go).
	Capture Capture
}

// Runtime is the [runtime] table: Go runtime settings cmd/authproxy
// applies at start, for a machine where authproxy shares a few cores with
// the PBX (docs/performance.md says what each setting costs and gains). A
// zero field leaves Go's default, and with it the GOMAXPROCS, GOGC and
// GOMEMLIMIT environment variables, in charge.
type Runtime struct {
	// MaxProcs is GOMAXPROCS: how many threads run Go code at once.
	MaxProcs int
	// GCPercent is GOGC: heap growth over the live heap before a GC
	// cycle, in percent; -1 turns the proportional trigger off (then
	// MemoryLimit is required).
	GCPercent int
	// MemoryLimit is GOMEMLIMIT in bytes: the heap size at which the GC
	// runs whatever GCPercent says (a soft limit).
	MemoryLimit int64
}

// DNS is the [dns] table: how authproxy resolves upstream names (RFC 3263:
// NAPTR, SRV, A/AAAA), caches the results and refreshes them in the
// background.
type DNS struct {
	// Servers are the DNS servers asked, "ip:port" (port 53 when omitted;
	// IPv6 as "[::1]:53"), in order. Empty (the default): the nameservers
	// of /etc/resolv.conf.
	Servers []string
	// MinTTL and MaxTTL clamp how long a resolution is cached (default 10s
	// and 1h): a record with TTL 0 must not make every request wait for
	// DNS, and a day-long TTL must not hide a move for a day.
	MinTTL, MaxTTL time.Duration
	// Timeout bounds one DNS exchange, and how long a request waits for
	// the first resolution of its upstream's name (default 2s).
	Timeout time.Duration
}

// Group is one [[group]] table.
type Group struct {
	// Name identifies the group in logs; unique among groups and
	// upstreams.
	Name string
	// Upstreams are the upstream names tried in order (at least one, each
	// once).
	Upstreams []string
	// Domains are the Request-URI hosts routed to the group, lowercased and
	// unique across all upstreams and groups.
	Domains []string
	// Default makes the group take Request-URIs that match no upstream or
	// group (at most one upstream or group is the default).
	Default bool
	// FailoverOn are the final statuses of an upstream that move a request
	// to the next (default 408, 500, 502, 503, 504). An unreachable
	// upstream (no response, transport error) always does.
	FailoverOn []int
}

// Registration is one [[registration]] table.
type Registration struct {
	// Upstream is the name of the upstream registered with.
	Upstream string
	// AOR is the address-of-record, "sip:user@domain".
	AOR string
	// ContactUser is the user part of the Contact (at authproxy); empty
	// means the AOR's user.
	ContactUser string
	// Expires is the registration lifetime asked for (default 3600s).
	Expires time.Duration
	// Target is where requests to the registered contact go: a SIP URI or
	// "host:port"; empty: nowhere special.
	Target string
}

// Client is one [[client]] group.
type Client struct {
	// Name identifies the group in logs.
	Name string
	// Networks are the admitted source prefixes; empty admits any source
	// (then Users must be set).
	Networks []netip.Prefix
	// Upstreams are the upstream names the group may use; "*" is all.
	Upstreams []string
	// Trusted keeps the identity headers (P-Asserted-Identity, ...) its
	// clients send.
	Trusted bool
	// Realm is the realm of authproxy's own challenge (default "authproxy").
	Realm string
	// Users are local accounts; when present, clients must authenticate
	// to authproxy itself.
	Users map[string]credentials.Secret
}

// Limits is the [limits] table: abuse limits per source, per user of a
// source, and in total.
type Limits struct {
	Rate         float64 // requests per second per source; 0 = off
	Burst        int
	MaxPerSource int // requests in progress per source; 0 = off
	MaxTotal     int // requests in progress in total; 0 = off
	AuthFailures int // failed local authentications before a block; 0 = off
	BlockFor     time.Duration
	MaxSources   int
	Drop         bool // deny = "drop": refused UDP requests are not answered
	// UserAuthFailures is how many failed local authentications one user
	// may have from one source address before that user (not the source)
	// is refused from it for UserBlockFor; 0 = off.
	UserAuthFailures int
	UserBlockFor     time.Duration
	// ExemptNetworks are sources exempt from rate, max_per_source and the
	// auth_failures block (a trusted office behind one NAT address).
	ExemptNetworks []netip.Prefix
	// Shared makes rate and burst hold across the instances sharing
	// [state] backend = "redis" (docs/state.md).
	Shared bool
}

// Log is the [log] table: how cmd/authproxy builds its slog handler.
type Log struct {
	// Level is the minimum level logged (default info).
	Level slog.Level
	// Format is "auto" (tint on a terminal, JSON otherwise; the default),
	// "text" or "json".
	Format string
	// SIPTrace logs every SIP message at debug level, with authorization
	// header values redacted (default false).
	SIPTrace bool
}

// Proxy is the [proxy] table: behaviour of the proxy core.
type Proxy struct {
	// MaxChallenges is how many 401/407 challenges one request may have
	// answered before the last one is relayed to the client, 1..10
	// (default 3). It bounds loops on rejected credentials and stale nonces.
	MaxChallenges int
	// ShutdownGrace is how long transactions in flight may finish after
	// SIGTERM (default 5s).
	ShutdownGrace time.Duration
	// TimerC bounds how long an INVITE that had a provisional response
	// waits for its final one (RFC 3261 §16.8: more than 3 minutes;
	// default 3m30s).
	TimerC time.Duration
	// DialogIdleTimeout ends the state of a dialog with no request for
	// this long, a call whose BYE was lost (default 2h).
	DialogIdleTimeout time.Duration
	// FailoverTimeout is how long an attempt waits for any response
	// before the request moves to the upstream's next target or the
	// group's next upstream, when there is one (default 4s; the last
	// attempt keeps Timer B/F, 32s).
	FailoverTimeout time.Duration
}

// Admin is the [admin] table: the HTTP listener serving /metrics,
// /healthz, /readyz and /status.
type Admin struct {
	// Address is the local "host:port" the admin listener binds, host
	// lowercased; empty (the default) means no admin listener. Port 0 means
	// any free port. The endpoints have no authentication: bind loopback or
	// an interface only the monitoring network reaches.
	Address string
	// Pprof also serves Go's profiler under /debug/pprof/ on the admin
	// listener (default false): for measuring a load run, not for an
	// exposed network, since profiles can show request contents in memory.
	Pprof bool
}

// Health is the [health] table: OPTIONS pings that mark upstreams up or
// down for /readyz, /status and the metrics.
type Health struct {
	// OptionsInterval is the time between two OPTIONS pings to each
	// upstream (default 30s: an upstream that stops answering is marked
	// down within DownAfter intervals); zero turns the pings off.
	OptionsInterval time.Duration
	// DownAfter is how many consecutive unanswered pings mark an upstream
	// down, 1..100 (default 3).
	DownAfter int
	// UpAfter is how many consecutive answered pings mark a down upstream
	// up again, 1..100 (default 2).
	UpAfter int
}

// Reload is the [reload] table.
type Reload struct {
	// Watch reloads the configuration when its file changes, as SIGHUP
	// does (default false).
	Watch bool
}

// Listen is one [[listen]] entry: a local socket serving SIP clients.
type Listen struct {
	// Transport is "udp" (the default), "tcp", "tls", "ws" or "wss" (SIP
	// over WebSocket, RFC 7118).
	Transport string
	// Address is the local host:port to bind, host lowercased. Port 0
	// means any free port.
	Address string
	// Advertise is the host written into Via and Record-Route. It defaults
	// to the host of Address, and is required when that host is unspecified
	// (0.0.0.0, :: or empty), because no peer can route to those.
	Advertise string
	// CertFile and KeyFile are the PEM certificate chain and key of a "tls"
	// or "wss" listener, resolved against the configuration's directory.
	CertFile, KeyFile string
	// Path is the HTTP path a "ws" or "wss" listener upgrades (default
	// "/").
	Path string
	// Origins are the web page origins ("https://app.example.com",
	// lowercased) allowed to open a "ws" or "wss" connection; empty allows
	// every origin.
	Origins []string
	// TokenSecret, from token_secret_env or token_secret_file, makes a
	// "ws" or "wss" listener require a token signed with it at the
	// upgrade (docs/websocket.md).
	TokenSecret credentials.Secret
}

// Upstream is one [[upstream]] entry: a PBX requests are forwarded to.
type Upstream struct {
	// Name identifies the upstream in logs and in credential scopes.
	Name string
	// Address is the normalised address: "ip:port" for an IP (port 5060,
	// 5061 for tls, if the file gave none; IPv6 in brackets),
	// "host:port" for a name with a port (its A/AAAA records), or the
	// bare domain for a name without one (NAPTR, SRV, then A/AAAA: RFC
	// 3263). Hosts are lowercased. It is also the server identity
	// credentials are scoped by, whatever it resolves to.
	Address string
	// Transport is "udp" (the default), "tcp", "tls" or "auto" (the
	// domain's NAPTR records choose, RFC 3263 §4.1).
	Transport string
	// AcceptFrom are source prefixes besides the addresses Address
	// resolves to that requests from this upstream may come from.
	AcceptFrom []netip.Prefix
	// Domains are the Request-URI hosts routed here besides the upstream's
	// own host, lowercased and unique across all upstreams.
	Domains []string
	// Default makes this upstream take Request-URIs that match no
	// upstream. At most one upstream is the default.
	Default bool
	// CAFile is a PEM bundle that verifies a "tls" upstream's certificate
	// (resolved against the configuration's directory); empty means the
	// system roots. ServerName is the name its certificate must carry;
	// empty means the address host.
	CAFile, ServerName string
	// Preemptive is which requests carry credentials computed from the
	// upstream's last accepted challenge before it challenges them: "off",
	// "registrations" (REGISTER only) or "all" (the default: every request
	// but ACK and CANCEL, in and out of dialogs).
	Preemptive string
	// RegisterMode is how clients' REGISTERs are forwarded here: "path"
	// (the default: a Path header, RFC 3327) or "contact" (the Contact is
	// rewritten to authproxy, for registrars without Path support).
	RegisterMode string
}

// Summary describes the configuration in one line for the startup log and
// authproxy -check, counting every section, e.g. "2 listeners, 2
// upstreams, 0 groups, 3 credentials, 1 client group, 0 client users, 0
// registrations". It never shows a secret.
func (c *Config) Summary() string {
	users := 0
	for _, g := range c.Clients {
		users += len(g.Users)
	}
	return strings.Join([]string{
		plural(len(c.Listen), "listener"),
		plural(len(c.Upstreams), "upstream"),
		plural(len(c.Groups), "group"),
		plural(len(c.Credentials), "credential"),
		plural(len(c.Clients), "client group"),
		plural(users, "client user"),
		plural(len(c.Registrations), "registration"),
	}, ", ")
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// Option adjusts how Parse and Load resolve what a configuration refers
// to outside itself.
type Option func(*options)

type options struct {
	baseDir   string
	lookupEnv func(string) (string, bool)
	// environ lists the environment as "NAME=value" for the check of
	// unknown AUTHPROXY_ variables; nil skips that check.
	environ func() []string
	// skipSecrets leaves password_env, password_file and TLS key_file
	// unread.
	skipSecrets bool
}

// WithBaseDir sets the directory relative password_file paths resolve
// against. Parse defaults to the working directory; Load to the directory
// of the file it loads (an explicit WithBaseDir passed to Load wins).
func WithBaseDir(dir string) Option {
	return func(o *options) { o.baseDir = dir }
}

// WithLookupEnv replaces os.LookupEnv as the source of environment
// variables, both the AUTHPROXY_<TABLE>__<KEY> overrides and the variables
// password_env names. Tests use it to inject a map instead of mutating the
// process environment. A lookup function cannot list the variables, so
// unknown AUTHPROXY_ variables are not reported (WithEnviron does both).
func WithLookupEnv(lookup func(key string) (string, bool)) Option {
	return func(o *options) { o.lookupEnv, o.environ = lookup, nil }
}

// WithEnviron replaces the process environment with env ("NAME=value"
// entries, as os.Environ returns): the overrides, the password_env
// variables, and the list checked for unknown AUTHPROXY_ variables.
func WithEnviron(env []string) Option {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(o *options) {
		o.lookupEnv = func(k string) (string, bool) { v, ok := m[k]; return v, ok }
		o.environ = func() []string { return env }
	}
}

// SkipSecrets validates the structure of the configuration without
// reading the secrets it refers to outside itself: the variables
// password_env names and the files password_file and a TLS listener's
// key_file name need not exist (authproxy -check -skip-secrets, for CI).
// Such a credential gets a placeholder secret: a Config parsed this way is
// for checking, never for serving. Inline secrets (password, ha1) are
// still checked.
func SkipSecrets() Option {
	return func(o *options) { o.skipSecrets = true }
}

// Parse parses and validates a TOML configuration. Defaults are applied
// first, then data, then AUTHPROXY_<TABLE>__<KEY> environment overrides
// (see the package documentation). All validation problems are returned
// together, joined with errors.Join; each is a *FieldError. A TOML syntax
// error is returned alone and wraps ErrSyntax.
//
// Parse reads the environment variables and files that password_env and
// password_file name, and nothing else.
func Parse(data []byte, opts ...Option) (*Config, error) {
	o := options{lookupEnv: os.LookupEnv, environ: os.Environ}
	for _, opt := range opts {
		opt(&o)
	}
	if o.lookupEnv == nil {
		o.lookupEnv = os.LookupEnv
	}

	v := &validator{opts: o, bad: map[string]bool{}}
	raw, err := v.load(data)
	if err != nil {
		return nil, err
	}
	var fc fileConfig
	v.checkKeys("", raw, fileConfigType)
	v.decode(raw, &fc)
	v.checkEnviron(&fc)
	cfg := v.build(&fc)
	if err := errors.Join(v.errs...); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Load reads the TOML file at path and parses it like Parse, with relative
// password_file paths resolved against the file's directory. Errors read
// "load <path>: ...".
func Load(path string, opts ...Option) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	cfg, err := Parse(data, append([]Option{WithBaseDir(dir)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return cfg, nil
}
