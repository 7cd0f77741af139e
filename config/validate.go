package config

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/authproxy/authproxy/credentials"
)

// Rules with a reason behind their numbers.
const (
	// maxChallengesLimit caps proxy.max_challenges: a PBX that keeps
	// challenging after ten answers is rejecting the credentials, and each
	// round costs a full upstream round trip.
	maxChallengesLimit = 10
	// defaultSIPPort is the RFC 3261 §19.1.2 default for sip: URIs over
	// UDP and TCP.
	defaultSIPPort = 5060
	// maxPasswordFile bounds what password_file reads: the file holds one
	// password, and the bound keeps a mistaken path (a log, a device) from
	// being read whole.
	maxPasswordFile = 64 << 10
	// minOptionsInterval bounds how often authproxy pings each upstream:
	// ten OPTIONS a second is already more than any PBX needs to prove it
	// is alive, and a typo ("1ms") must not turn health checks into load.
	minOptionsInterval = 100 * time.Millisecond
	// maxHealthThreshold caps down_after and up_after: a larger count would
	// take minutes to notice anything at any sensible interval.
	maxHealthThreshold = 100
)

// validator collects errors while the raw file is loaded, decoded and
// turned into a Config. Nothing in it outlives one Parse call.
type validator struct {
	opts options
	errs []error
	// bad holds key paths that already have a decoding error; errors at
	// those keys or below are not reported again (a value that failed to
	// decode is left zero and would fail its rule a second time).
	bad map[string]bool
	// env maps a key path to the environment variable that overrode it.
	env map[string]string
}

// add records one error unless its key (or a parent) is already bad.
func (v *validator) add(key, value, rule string, sentinel, cause error) {
	if v.suppressed(key) {
		return
	}
	v.errs = append(v.errs, &FieldError{
		Key: key, Env: v.env[key], Value: value, Rule: rule, Err: sentinel, Cause: cause,
	})
}

func (v *validator) suppressed(key string) bool {
	for i := range len(key) {
		if (key[i] == '.' || key[i] == '[') && v.bad[key[:i]] {
			return true
		}
	}
	return v.bad[key]
}

// build validates fc and converts it to a Config. The Config is returned
// even when errors were recorded; Parse discards it then.
func (v *validator) build(fc *fileConfig) *Config {
	cfg := &Config{
		Log:    v.buildLog(fc.Log),
		Proxy:  v.buildProxy(fc.Proxy),
		Admin:  v.buildAdmin(fc.Admin),
		Health: v.buildHealth(fc.Health),
		Reload: Reload{Watch: fc.Reload.Watch},
		Listen: v.buildListen(fc.Listen),
	}
	var idx upstreamIndex
	cfg.Upstreams, idx = v.buildUpstreams(fc.Upstream)
	cfg.Credentials = v.buildCredentials(fc.Credential, idx)
	cfg.Clients = v.buildClients(fc.Client, cfg.Upstreams)
	cfg.Limits = v.buildLimits(fc.Limits)
	cfg.TCP = v.buildTCP(fc.TCP)
	cfg.Registrations = v.buildRegistrations(fc.Registration, idx)
	cfg.Runtime = v.buildRuntime(fc.Runtime)
	return cfg
}

// Bounds of [runtime]: more threads than that or a memory limit under
// minMemoryLimit is a typo, not a setting.
const (
	maxMaxProcs    = 1024
	minMemoryLimit = 8 << 20
)

func (v *validator) buildRuntime(r fileRuntime) Runtime {
	out := Runtime{MaxProcs: r.MaxProcs, GCPercent: r.GCPercent}
	if r.MaxProcs < 0 || r.MaxProcs > maxMaxProcs {
		v.add("runtime.max_procs", strconv.Itoa(r.MaxProcs),
			fmt.Sprintf("must be between 1 and %d, or 0 for Go's default (GOMAXPROCS, else the CPUs)", maxMaxProcs), ErrInvalid, nil)
	}
	if r.GCPercent < -1 {
		v.add("runtime.gc_percent", strconv.Itoa(r.GCPercent),
			"must be a percentage such as 400, -1 for off (with runtime.memory_limit), or 0 for Go's default (GOGC, else 100)", ErrInvalid, nil)
	}
	if r.MemoryLimit != "" {
		n, ok := parseByteSize(r.MemoryLimit)
		if !ok || n < minMemoryLimit {
			v.add("runtime.memory_limit", strconv.Quote(r.MemoryLimit),
				`must be a size of at least 8MiB such as "48MiB" or "1GiB", or "" for none`, ErrInvalid, nil)
		}
		out.MemoryLimit = n
	}
	if r.GCPercent == -1 && r.MemoryLimit == "" {
		v.add("runtime.gc_percent", "-1", "turns the GC's proportional trigger off and needs runtime.memory_limit, or the heap would grow without bound", ErrInvalid, nil)
	}
	return out
}

// parseByteSize parses a byte count as GOMEMLIMIT writes it: digits and an
// optional unit B, KiB, MiB, GiB or TiB.
func parseByteSize(s string) (int64, bool) {
	units := []struct {
		suffix string
		shift  uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}
	shift := uint(0)
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, shift = num, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, false
	}
	return n << shift, true
}

// Bounds of [[registration]] expires, in seconds: RFC 3261 §10.2.1.1
// suggests 3600; a day is more than any trunk asks for.
const (
	defaultRegistrationExpires = 3600
	maxRegistrationExpires     = 86400
)

func (v *validator) buildRegistrations(rs []fileRegistration, idx upstreamIndex) []Registration {
	var out []Registration
	seen := map[string]int{}
	for i, r := range rs {
		key := fmt.Sprintf("registration[%d]", i)
		o := Registration{Upstream: r.Upstream, AOR: r.AOR, ContactUser: r.ContactUser, Target: r.Target,
			Expires: defaultRegistrationExpires * time.Second}
		if _, ok := idx.byName[r.Upstream]; !ok {
			v.add(key+".upstream", strconv.Quote(r.Upstream), "must name a configured [[upstream]]", ErrInvalid, nil)
		}
		user, ok := sipUser(r.AOR)
		if !ok {
			v.add(key+".aor", strconv.Quote(r.AOR), `must be a SIP URI "sip:user@domain"`, ErrInvalid, nil)
		}
		cu := r.ContactUser
		if cu == "" {
			cu = user
		}
		if strings.ContainsAny(r.ContactUser, "@:;<> \t") || hasControl(r.ContactUser) {
			v.add(key+".contact_user", strconv.Quote(r.ContactUser), "must be a plain SIP user part", ErrInvalid, nil)
		}
		switch {
		case r.Expires == 0:
		case r.Expires < 1 || r.Expires > maxRegistrationExpires:
			v.add(key+".expires", strconv.Itoa(r.Expires), fmt.Sprintf("must be between 1 and %d seconds", maxRegistrationExpires), ErrInvalid, nil)
		default:
			o.Expires = time.Duration(r.Expires) * time.Second
		}
		if r.Target != "" {
			if strings.HasPrefix(strings.ToLower(r.Target), "sip:") {
				if _, ok := sipUser(r.Target); !ok && !strings.Contains(r.Target[4:], ".") {
					v.add(key+".target", strconv.Quote(r.Target), `must be a SIP URI or "host:port"`, ErrInvalid, nil)
				}
			} else if _, _, rule := parseAddress(r.Target, 5060); rule != "" {
				v.add(key+".target", strconv.Quote(r.Target), `must be a SIP URI or "host:port": `+rule, ErrInvalid, nil)
			}
		}
		k := r.Upstream + "\x00" + r.AOR + "\x00" + cu
		if j, dup := seen[k]; dup {
			v.add(key+".aor", strconv.Quote(r.AOR), fmt.Sprintf("duplicates registration[%d] (same upstream, aor and contact_user)", j), ErrDuplicate, nil)
		} else {
			seen[k] = i
		}
		out = append(out, o)
	}
	return out
}

// sipUser returns the user of a "sip:user@host..." URI, and whether it
// has that shape.
func sipUser(u string) (string, bool) {
	rest, ok := strings.CutPrefix(u, "sip:")
	if !ok {
		return "", false
	}
	user, host, ok := strings.Cut(rest, "@")
	if !ok || user == "" || host == "" || strings.ContainsAny(user, " <>") || hasControl(u) {
		return "", false
	}
	return user, true
}

func (v *validator) buildClients(cs []fileClient, ups []Upstream) []Client {
	if len(cs) == 0 {
		v.add("client", "", "at least one [[client]] group is required: authproxy admits no one by default", ErrRequired, nil)
		return nil
	}
	names := map[string]int{}
	out := make([]Client, 0, len(cs))
	for i, c := range cs {
		key := fmt.Sprintf("client[%d]", i)
		g := Client{Name: c.Name, Upstreams: c.Upstreams, Trusted: c.Trusted, Realm: c.Realm}
		if c.Name == "" {
			v.add(key+".name", "", "is required", ErrRequired, nil)
		} else if j, dup := names[c.Name]; dup {
			v.add(key+".name", strconv.Quote(c.Name), fmt.Sprintf("duplicates client[%d].name", j), ErrDuplicate, nil)
		} else {
			names[c.Name] = i
		}
		for j, n := range c.Networks {
			p, err := netip.ParsePrefix(n)
			if err != nil {
				if a, aerr := netip.ParseAddr(n); aerr == nil {
					p, err = a.Prefix(a.BitLen())
				}
			}
			if err != nil {
				v.add(fmt.Sprintf("%s.networks[%d]", key, j), strconv.Quote(n), "must be a CIDR prefix such as 10.0.0.0/8 or an address", ErrInvalid, nil)
				continue
			}
			g.Networks = append(g.Networks, p.Masked())
		}
		if len(c.Upstreams) == 0 {
			v.add(key+".upstreams", "", `is required: the upstream names this group may use, or ["*"]`, ErrRequired, nil)
		}
		for j, u := range c.Upstreams {
			if u == "*" {
				continue
			}
			found := false
			for _, up := range ups {
				found = found || up.Name == u
			}
			if !found {
				v.add(fmt.Sprintf("%s.upstreams[%d]", key, j), strconv.Quote(u), "names no configured upstream", ErrInvalid, nil)
			}
		}
		if len(c.User) > 0 {
			g.Users = map[string]credentials.Secret{}
		}
		for j, u := range c.User {
			ukey := fmt.Sprintf("%s.user[%d]", key, j)
			if u.Username == "" {
				v.add(ukey+".username", "", "is required", ErrRequired, nil)
				continue
			}
			if _, dup := g.Users[u.Username]; dup {
				v.add(ukey+".username", strconv.Quote(u.Username), "duplicates another user of this group", ErrDuplicate, nil)
				continue
			}
			var e credentials.Entry
			v.loadSecret(ukey, fileCredential{Username: u.Username, Password: u.Password, PasswordEnv: u.PasswordEnv, PasswordFile: u.PasswordFile}, &e)
			g.Users[u.Username] = e.Password
		}
		if len(g.Networks) == 0 && len(g.Users) == 0 {
			v.add(key+".networks", "", "is required unless the group has users: an empty group would admit everyone", ErrRequired, nil)
		}
		out = append(out, g)
	}
	return out
}

func (v *validator) buildLimits(l fileLimits) Limits {
	out := Limits{Rate: float64(l.Rate), Burst: l.Burst, MaxPerSource: l.MaxPerSource, MaxTotal: l.MaxTotal,
		AuthFailures: l.AuthFailures, MaxSources: l.MaxSources}
	for _, f := range []struct {
		key string
		val float64
	}{{"limits.rate", float64(l.Rate)}, {"limits.burst", float64(l.Burst)}, {"limits.max_per_source", float64(l.MaxPerSource)},
		{"limits.max_total", float64(l.MaxTotal)}, {"limits.auth_failures", float64(l.AuthFailures)}, {"limits.max_sources", float64(l.MaxSources)}} {
		if f.val < 0 {
			v.add(f.key, strconv.FormatFloat(f.val, 'g', -1, 64), "must not be negative (0 turns the limit off)", ErrInvalid, nil)
		}
	}
	d, err := time.ParseDuration(l.BlockFor)
	if err != nil || d < 0 {
		v.add("limits.block_for", strconv.Quote(l.BlockFor), `must be a duration such as "5m"`, ErrInvalid, nil)
	}
	out.BlockFor = d
	switch strings.ToLower(l.Deny) {
	case "reject":
	case "drop":
		out.Drop = true
	default:
		v.add("limits.deny", strconv.Quote(l.Deny), `must be "reject" (403/503) or "drop" (no answer on UDP)`, ErrInvalid, nil)
	}
	return out
}

func (v *validator) buildLog(l fileLog) Log {
	out := Log{SIPTrace: l.SIPTrace}
	switch strings.ToLower(l.Level) {
	case "debug":
		out.Level = slog.LevelDebug
	case "info":
		out.Level = slog.LevelInfo
	case "warn":
		out.Level = slog.LevelWarn
	case "error":
		out.Level = slog.LevelError
	default:
		v.add("log.level", strconv.Quote(l.Level), `must be one of "debug", "info", "warn", "error"`, ErrInvalid, nil)
	}
	switch f := strings.ToLower(l.Format); f {
	case "auto", "text", "json":
		out.Format = f
	default:
		v.add("log.format", strconv.Quote(l.Format), `must be one of "auto", "text", "json"`, ErrInvalid, nil)
	}
	return out
}

func (v *validator) buildProxy(p fileProxy) Proxy {
	out := Proxy{MaxChallenges: p.MaxChallenges}
	if p.MaxChallenges < 1 || p.MaxChallenges > maxChallengesLimit {
		v.add("proxy.max_challenges", strconv.Itoa(p.MaxChallenges),
			fmt.Sprintf("must be between 1 and %d", maxChallengesLimit), ErrInvalid, nil)
	}
	d, err := time.ParseDuration(p.ShutdownGrace)
	switch {
	case err != nil:
		v.add("proxy.shutdown_grace", strconv.Quote(p.ShutdownGrace),
			`must be a duration such as "5s", "500ms" or "1m30s"`, ErrInvalid, nil)
	case d < 0:
		v.add("proxy.shutdown_grace", strconv.Quote(p.ShutdownGrace), "must not be negative", ErrInvalid, nil)
	}
	out.ShutdownGrace = d
	out.TimerC = v.duration("proxy.timer_c", p.TimerC, 3*time.Minute+time.Second,
		"must be more than 3 minutes (RFC 3261 §16.8), e.g. \"3m30s\"")
	out.DialogIdleTimeout = v.duration("proxy.dialog_idle_timeout", p.DialogIdleTimeout, time.Minute,
		"must be at least 1m, e.g. \"2h\"")
	return out
}

// duration parses a duration key that must be at least min.
func (v *validator) duration(key, val string, min time.Duration, rule string) time.Duration {
	d, err := time.ParseDuration(val)
	if err != nil || d < min {
		v.add(key, strconv.Quote(val), rule, ErrInvalid, nil)
	}
	return d
}

func (v *validator) buildAdmin(a fileAdmin) Admin {
	if a.Address == "" {
		if a.Pprof {
			v.add("admin.pprof", "true", `needs admin.address: the profiler is served on the admin listener`, ErrInvalid, nil)
		}
		return Admin{}
	}
	host, port, rule := parseAddress(a.Address, 0)
	if rule != "" {
		v.add("admin.address", strconv.Quote(a.Address), rule+`, or "" for no admin listener`, ErrInvalid, nil)
		return Admin{Address: a.Address, Pprof: a.Pprof}
	}
	return Admin{Address: net.JoinHostPort(host, strconv.Itoa(port)), Pprof: a.Pprof}
}

func (v *validator) buildHealth(h fileHealth) Health {
	out := Health{DownAfter: h.DownAfter, UpAfter: h.UpAfter}
	d, err := time.ParseDuration(h.OptionsInterval)
	switch {
	case err != nil:
		v.add("health.options_interval", strconv.Quote(h.OptionsInterval),
			`must be a duration such as "10s" or "1m", or "0s" for no health checks`, ErrInvalid, nil)
	case d < 0:
		v.add("health.options_interval", strconv.Quote(h.OptionsInterval), "must not be negative", ErrInvalid, nil)
	case d > 0 && d < minOptionsInterval:
		v.add("health.options_interval", strconv.Quote(h.OptionsInterval),
			fmt.Sprintf("must be 0s (off) or at least %s", minOptionsInterval), ErrInvalid, nil)
	default:
		out.OptionsInterval = d
	}
	for _, k := range []struct {
		key string
		n   int
	}{{"health.down_after", h.DownAfter}, {"health.up_after", h.UpAfter}} {
		if k.n < 1 || k.n > maxHealthThreshold {
			v.add(k.key, strconv.Itoa(k.n), fmt.Sprintf("must be between 1 and %d", maxHealthThreshold), ErrInvalid, nil)
		}
	}
	return out
}

func (v *validator) buildListen(ls []fileListen) []Listen {
	if len(ls) == 0 {
		v.add("listen", "", "at least one [[listen]] table is required", ErrRequired, nil)
		return nil
	}
	out := make([]Listen, 0, len(ls))
	seen := map[string]int{} // transport + " " + address → first index
	for i, l := range ls {
		key := fmt.Sprintf("listen[%d]", i)
		tr := v.transport(key, l.Transport)
		o := Listen{Transport: tr, Address: l.Address, Advertise: l.Advertise}
		if tr == "tls" {
			o.CertFile = v.existingFile(key+".cert_file", l.CertFile, "the listener's PEM certificate chain")
			o.KeyFile = v.existingFile(key+".key_file", l.KeyFile, "the listener's PEM private key")
		} else {
			for _, f := range []struct{ k, v string }{{"cert_file", l.CertFile}, {"key_file", l.KeyFile}} {
				if f.v != "" {
					v.add(key+"."+f.k, strconv.Quote(f.v), `applies only to transport = "tls"`, ErrInvalid, nil)
				}
			}
		}
		if l.Address == "" {
			v.add(key+".address", "", `is required, as "host:port"`, ErrRequired, nil)
			out = append(out, o)
			continue
		}
		host, port, rule := parseAddress(l.Address, 0)
		if rule != "" {
			v.add(key+".address", strconv.Quote(l.Address), rule, ErrInvalid, nil)
			out = append(out, o)
			continue
		}
		o.Address = net.JoinHostPort(host, strconv.Itoa(port))
		switch {
		case l.Advertise != "":
			adv := lowerASCII(strings.TrimSuffix(strings.TrimPrefix(l.Advertise, "["), "]"))
			if !validHost(adv) || unspecified(adv) {
				v.add(key+".advertise", strconv.Quote(l.Advertise),
					"must be a hostname or IP address peers can reach (not 0.0.0.0 or ::)", ErrInvalid, nil)
			}
			o.Advertise = adv
		case unspecified(host):
			v.add(key+".advertise", `""`, fmt.Sprintf(
				"is required when the address host is unspecified (%q): Via and Record-Route need a host peers can reach",
				l.Address), ErrRequired, nil)
		default:
			o.Advertise = host
		}
		// Port 0 binds a fresh ephemeral port each time, so two such
		// listeners never collide.
		if port != 0 {
			k := tr + " " + o.Address
			if j, dup := seen[k]; dup {
				v.add(key, strconv.Quote(l.Address),
					fmt.Sprintf("duplicates listen[%d]: same transport and address", j), ErrDuplicate, nil)
			} else {
				seen[k] = i
			}
		}
		out = append(out, o)
	}
	return out
}

// upstreamIndex is what credential server resolution needs to know about
// the upstreams.
type upstreamIndex struct {
	byName    map[string]string // name → normalised address
	hosts     map[string]bool   // lowercased host
	hostPorts map[string]bool   // normalised host:port
	names     []string
}

func (v *validator) buildUpstreams(us []fileUpstream) ([]Upstream, upstreamIndex) {
	idx := upstreamIndex{byName: map[string]string{}, hosts: map[string]bool{}, hostPorts: map[string]bool{}}
	if len(us) == 0 {
		v.add("upstream", "", "at least one [[upstream]] table is required", ErrRequired, nil)
		return nil, idx
	}
	out := make([]Upstream, 0, len(us))
	nameAt := map[string]int{}
	addrAt := map[string]int{}      // transport + " " + address → first index
	domainAt := map[string]string{} // domain → first key
	defaultAt := -1
	for i, u := range us {
		key := fmt.Sprintf("upstream[%d]", i)
		o := Upstream{Name: u.Name, Address: u.Address, Transport: v.transport(key, u.Transport), Default: u.Default,
			Preemptive: v.preemptive(key, u.Preemptive)}

		switch j, dup := nameAt[u.Name]; {
		case strings.TrimSpace(u.Name) == "":
			v.add(key+".name", strconv.Quote(u.Name), "is required", ErrRequired, nil)
		case hasControl(u.Name):
			v.add(key+".name", strconv.Quote(u.Name), "must not contain control characters", ErrInvalid, nil)
		case dup:
			v.add(key+".name", strconv.Quote(u.Name), fmt.Sprintf("duplicates upstream[%d].name", j), ErrDuplicate, nil)
		default:
			nameAt[u.Name] = i
			idx.names = append(idx.names, u.Name)
		}

		if u.Address == "" {
			v.add(key+".address", "", `is required, as "host:port" or "host" (port 5060)`, ErrRequired, nil)
		} else if host, port, rule := parseAddress(u.Address, defaultPort(o.Transport)); rule != "" {
			v.add(key+".address", strconv.Quote(u.Address), rule, ErrInvalid, nil)
		} else if host == "" || unspecified(host) {
			v.add(key+".address", strconv.Quote(u.Address),
				"must name a host to forward to, not an unspecified address", ErrInvalid, nil)
		} else {
			o.Address = net.JoinHostPort(host, strconv.Itoa(port))
			idx.hosts[host] = true
			idx.hostPorts[o.Address] = true
			k := o.Transport + " " + o.Address
			if j, dup := addrAt[k]; dup {
				v.add(key+".address", strconv.Quote(u.Address),
					fmt.Sprintf("duplicates upstream[%d].address (same transport)", j), ErrDuplicate, nil)
			} else {
				addrAt[k] = i
			}
		}
		if o.Transport == "tls" {
			if u.CAFile != "" {
				o.CAFile = v.existingFile(key+".ca_file", u.CAFile, "a PEM CA bundle")
			}
			o.ServerName = lowerASCII(u.ServerName)
		} else {
			for _, f := range []struct{ k, v string }{{"ca_file", u.CAFile}, {"server_name", u.ServerName}} {
				if f.v != "" {
					v.add(key+"."+f.k, strconv.Quote(f.v), `applies only to transport = "tls"`, ErrInvalid, nil)
				}
			}
		}
		if _, taken := idx.byName[u.Name]; !taken && u.Name != "" {
			idx.byName[u.Name] = o.Address
		}
		switch rm := strings.ToLower(u.RegisterMode); rm {
		case "", "path":
			o.RegisterMode = "path"
		case "contact":
			o.RegisterMode = rm
		default:
			v.add(key+".register_mode", strconv.Quote(u.RegisterMode), `must be "path" or "contact"`, ErrInvalid, nil)
		}

		for j, d := range u.Domains {
			dkey := fmt.Sprintf("%s.domains[%d]", key, j)
			dom := lowerASCII(d)
			if !validHost(dom) {
				v.add(dkey, strconv.Quote(d), "must be a hostname or IP address", ErrInvalid, nil)
				continue
			}
			if first, dup := domainAt[dom]; dup {
				v.add(dkey, strconv.Quote(d), "duplicates "+first+": a domain routes to one upstream", ErrDuplicate, nil)
				continue
			}
			domainAt[dom] = dkey
			o.Domains = append(o.Domains, dom)
		}

		if u.Default {
			if defaultAt >= 0 {
				v.add(key+".default", "true",
					fmt.Sprintf("upstream[%d] is already the default; at most one upstream may be", defaultAt), ErrDuplicate, nil)
			} else {
				defaultAt = i
			}
		}
		out = append(out, o)
	}
	return out, idx
}

// transport validates and defaults a transport key.
// preemptive checks an upstream's preemptive mode; empty means "all"
// (registrations and every other request to a configured trunk carry
// credentials from the last accepted challenge: the default).
func (v *validator) preemptive(key, m string) string {
	switch m {
	case "":
		return "all"
	case "off", "registrations", "all":
		return m
	}
	v.add(key+".preemptive", strconv.Quote(m), `must be "off", "registrations" or "all"`, ErrInvalid, nil)
	return m
}

func (v *validator) transport(key, t string) string {
	switch lt := strings.ToLower(t); lt {
	case "":
		return "udp"
	case "udp", "tcp", "tls":
		return lt
	}
	v.add(key+".transport", strconv.Quote(t), `must be "udp", "tcp" or "tls"`, ErrInvalid, nil)
	return t
}

// ha1Keys lists the HA1 keys with their algorithm and hex length: MD5 is
// 128 bits, SHA-256 and SHA-512/256 are 256 bits (RFC 7616 §3.2).
var ha1Keys = []struct {
	key, alg string
	hexLen   int
}{
	{"ha1", credentials.MD5, 32},
	{"ha1_sha256", credentials.SHA256, 64},
	{"ha1_sha512_256", credentials.SHA512256, 64},
}

func (v *validator) buildCredentials(cs []fileCredential, idx upstreamIndex) []credentials.Entry {
	out := make([]credentials.Entry, 0, len(cs))
	type scope struct{ server, realm, user string }
	scopeAt := map[scope]int{}
	for i, c := range cs {
		key := fmt.Sprintf("credential[%d]", i)
		e := credentials.Entry{Username: c.Username, Realm: c.Realm, User: c.User}

		switch {
		case c.Username == "":
			v.add(key+".username", "", "is required", ErrRequired, nil)
		case hasControl(c.Username):
			v.add(key+".username", strconv.Quote(c.Username), "must not contain control characters", ErrInvalid, nil)
		}
		for _, f := range []struct{ name, val string }{{"realm", c.Realm}, {"user", c.User}} {
			if hasControl(f.val) {
				v.add(key+"."+f.name, strconv.Quote(f.val), "must not contain control characters", ErrInvalid, nil)
			}
		}

		v.loadSecret(key, c, &e)

		server, ok := v.resolveServer(key, c.Server, idx)
		e.Server = server
		if ok {
			s := scope{server, c.Realm, c.User}
			if j, dup := scopeAt[s]; dup {
				v.add(key, fmt.Sprintf("server=%q realm=%q user=%q", server, c.Realm, c.User),
					fmt.Sprintf("duplicates credential[%d]: same server, realm and user", j), ErrDuplicate, nil)
			} else {
				scopeAt[s] = i
			}
		}
		out = append(out, e)
	}
	return out
}

// loadSecret checks that exactly one secret source is set and loads it
// into e. No error it records contains the secret.
func (v *validator) loadSecret(key string, c fileCredential, e *credentials.Entry) {
	var sources []string // groups: the ha1 keys count as one source
	if c.Password != nil {
		sources = append(sources, "password")
	}
	if c.PasswordEnv != nil {
		sources = append(sources, "password_env")
	}
	if c.PasswordFile != nil {
		sources = append(sources, "password_file")
	}
	var ha1Set []string
	for _, h := range ha1Keys {
		if c.ha1(h.key) != nil {
			ha1Set = append(ha1Set, h.key)
		}
	}
	if len(ha1Set) > 0 {
		sources = append(sources, strings.Join(ha1Set, "+"))
	}
	switch len(sources) {
	case 0:
		for _, k := range []string{"password", "password_env", "password_file", "ha1", "ha1_sha256", "ha1_sha512_256"} {
			if v.bad[key+"."+k] {
				return // set, but of the wrong type: already reported
			}
		}
		v.add(key, "", "needs a secret: set one of password, password_env, password_file, "+
			"or ha1 (with or instead of ha1_sha256, ha1_sha512_256)", ErrRequired, nil)
		return
	case 1:
	default:
		v.add(key, strings.Join(sources, ", "), "sets more than one secret source; set exactly one", ErrInvalid, nil)
		return
	}

	switch {
	case c.Password != nil:
		if *c.Password == "" {
			v.add(key+".password", redacted, "must not be empty", ErrRequired, nil)
			return
		}
		e.Password = credentials.NewSecret(*c.Password)
	case c.PasswordEnv != nil:
		name := *c.PasswordEnv
		val, set := v.opts.lookupEnv(name)
		switch {
		case name == "":
			v.add(key+".password_env", `""`, "must name an environment variable", ErrRequired, nil)
		case !set:
			v.add(key+".password_env", strconv.Quote(name), "environment variable is not set", ErrRequired, nil)
		case val == "":
			v.add(key+".password_env", strconv.Quote(name), "environment variable is empty", ErrRequired, nil)
		default:
			e.Password = credentials.NewSecret(val)
		}
	case c.PasswordFile != nil:
		if *c.PasswordFile == "" {
			v.add(key+".password_file", `""`, "must name a file", ErrRequired, nil)
			return
		}
		pw, rule, err := readPasswordFile(v.opts.baseDir, *c.PasswordFile)
		if rule != "" {
			v.add(key+".password_file", strconv.Quote(*c.PasswordFile), rule, ErrInvalid, err)
			return
		}
		e.Password = credentials.NewSecret(pw)
	default:
		e.HA1 = map[string]credentials.Secret{}
		for _, h := range ha1Keys {
			p := c.ha1(h.key)
			if p == nil {
				continue
			}
			if len(*p) != h.hexLen || !isHex(*p) {
				v.add(key+"."+h.key, redacted,
					fmt.Sprintf("must be %d hex digits (the %s HA1)", h.hexLen, h.alg), ErrInvalid, nil)
				continue
			}
			// RFC 7616 §3.4.2 computes with lowercase hex.
			e.HA1[h.alg] = credentials.NewSecret(lowerASCII(*p))
		}
	}
}

func (c fileCredential) ha1(key string) *string {
	switch key {
	case "ha1":
		return c.HA1
	case "ha1_sha256":
		return c.HA1SHA256
	case "ha1_sha512_256":
		return c.HA1SHA512256
	}
	return nil
}

// readPasswordFile reads a password file, resolved against baseDir when
// relative, and trims one trailing newline (editors and `echo` add one).
// On failure it returns a rule and possibly the os error; neither contains
// the file's content.
func readPasswordFile(baseDir, path string) (string, string, error) {
	if !filepath.IsAbs(path) && baseDir != "" {
		path = filepath.Join(baseDir, path)
	}
	// A FIFO or device would block or never end; secrets mounted by
	// Docker and Kubernetes are regular files (through symlinks).
	fi, err := os.Stat(path)
	if err != nil {
		return "", "cannot read", err
	}
	if !fi.Mode().IsRegular() {
		return "", "is not a regular file", nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", "cannot read", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPasswordFile+1))
	if err != nil {
		return "", "cannot read", err
	}
	if len(data) > maxPasswordFile {
		return "", fmt.Sprintf("is larger than %d bytes; it should hold one password", maxPasswordFile), nil
	}
	s := string(data)
	if strings.HasSuffix(s, "\r\n") {
		s = s[:len(s)-2]
	} else if strings.HasSuffix(s, "\n") {
		s = s[:len(s)-1]
	}
	if s == "" {
		return "", "is empty", nil
	}
	return s, "", nil
}

// resolveServer turns a credential's server into the scope the credential
// store matches on. An upstream name becomes that upstream's normalised
// address; otherwise the value must be the host or host:port of a
// configured upstream and is kept with its host lowercased. ok is false
// when an error was recorded.
func (v *validator) resolveServer(key, s string, idx upstreamIndex) (string, bool) {
	if s == "" {
		return "", true
	}
	if addr, named := idx.byName[s]; named {
		return addr, true
	}
	if h, p, err := net.SplitHostPort(s); err == nil {
		port, perr := strconv.Atoi(p)
		if perr == nil && port >= 1 && port <= 65535 {
			hp := net.JoinHostPort(lowerASCII(h), strconv.Itoa(port))
			if idx.hostPorts[hp] {
				return hp, true
			}
		}
	} else if host := lowerASCII(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); idx.hosts[host] {
		return host, true
	}
	if len(idx.names) == 0 && len(idx.hosts) == 0 {
		return s, false // no usable upstream: already reported there
	}
	names := make([]string, len(idx.names))
	for i, n := range idx.names {
		names[i] = strconv.Quote(n)
	}
	v.add(key+".server", strconv.Quote(s), fmt.Sprintf(
		"names no configured upstream: use an upstream name (%s) or an upstream's host or host:port",
		strings.Join(names, ", ")), ErrInvalid, nil)
	return s, false
}

// parseAddress parses "host:port", "[ipv6]:port" and, when defaultPort is
// not 0, also "host", "[ipv6]" and a bare IPv6 literal. The host is
// lowercased; an empty host is allowed only with an explicit port (":5060",
// a listener on every interface). rule is "" on success.
func parseAddress(s string, defaultPort int) (host string, port int, rule string) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		if defaultPort == 0 {
			return "", 0, `must be "host:port" (IPv6 as "[::1]:5060")`
		}
		h = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
		p = strconv.Itoa(defaultPort)
		if h == "" || !validHost(h) {
			return "", 0, `must be "host:port" or "host" (IPv6 as "[::1]:5060")`
		}
	}
	host = lowerASCII(h)
	if host != "" && !validHost(host) {
		return "", 0, fmt.Sprintf("host %q is not a hostname or IP address", h)
	}
	minPort := 1
	if defaultPort == 0 {
		minPort = 0 // a listener may ask for any free port
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < minPort || port > 65535 {
		return "", 0, fmt.Sprintf("port %q must be a number from %d to 65535", p, minPort)
	}
	return host, port, ""
}

// validHost accepts an IP address (IPv6 without brackets, zone allowed)
// or a DNS name of letters, digits, '-' and '_' labels.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := range len(label) {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// unspecified reports whether host binds every interface: empty, 0.0.0.0
// or ::.
func unspecified(host string) bool {
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsUnspecified()
}

// lowerASCII lowercases ASCII letters only, as the credential store does:
// hosts are ASCII, and Unicode folding could make two hosts equal.
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func hasControl(s string) bool {
	for i := range len(s) {
		if c := s[i]; c < ' ' || c == 0x7f {
			return true
		}
	}
	return false
}

func isHex(s string) bool {
	for i := range len(s) {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// defaultPort is the RFC 3261 §19.1.2 default port of a transport.
func defaultPort(transport string) int {
	if transport == "tls" {
		return 5061
	}
	return defaultSIPPort
}

// existingFile resolves path against the configuration's directory and
// checks that it is a readable regular file; what names it is in rule.
func (v *validator) existingFile(key, path, what string) string {
	if path == "" {
		v.add(key, "", "is required: "+what, ErrRequired, nil)
		return ""
	}
	if !filepath.IsAbs(path) && v.opts.baseDir != "" {
		path = filepath.Join(v.opts.baseDir, path)
	}
	f, err := os.Open(path)
	if err != nil {
		v.add(key, strconv.Quote(path), "must be a readable file ("+what+")", ErrInvalid, err)
		return path
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		v.add(key, strconv.Quote(path), "must be a regular file ("+what+")", ErrInvalid, err)
	}
	return path
}
