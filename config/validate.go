package config

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
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
		DNS:    v.buildDNS(fc.DNS),
		Reload: Reload{Watch: fc.Reload.Watch},
		Listen: v.buildListen(fc.Listen),
	}
	var idx upstreamIndex
	cfg.Upstreams, idx = v.buildUpstreams(fc.Upstream)
	cfg.Groups = v.buildGroups(fc.Group, &idx)
	cfg.Credentials = v.buildCredentials(fc.Credential, idx)
	cfg.Clients = v.buildClients(fc.Client, cfg.Upstreams, cfg.Groups)
	cfg.Limits = v.buildLimits(fc.Limits)
	cfg.TCP = v.buildTCP(fc.TCP)
	cfg.WebSocket = v.buildWebSocket(fc.WebSocket)
	cfg.Registrations = v.buildRegistrations(fc.Registration, idx)
	v.checkRegistrationCredentials(fc.Registration, cfg.Credentials, idx)
	v.checkNamesAsHosts(fc.Upstream, fc.Registration, cfg.Groups, idx)
	cfg.Runtime = v.buildRuntime(fc.Runtime)
	cfg.State = v.buildState(fc.State, fc.Limits.Shared)
	cfg.Capture = v.buildCapture(fc.Capture)
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

func (v *validator) buildLimits(l fileLimits) Limits {
	out := Limits{Rate: float64(l.Rate), Burst: l.Burst, MaxPerSource: l.MaxPerSource, MaxTotal: l.MaxTotal,
		AuthFailures: l.AuthFailures, MaxSources: l.MaxSources, UserAuthFailures: l.UserAuthFailures}
	for _, f := range []struct {
		key string
		val float64
	}{{"limits.rate", float64(l.Rate)}, {"limits.burst", float64(l.Burst)}, {"limits.max_per_source", float64(l.MaxPerSource)},
		{"limits.max_total", float64(l.MaxTotal)}, {"limits.auth_failures", float64(l.AuthFailures)}, {"limits.max_sources", float64(l.MaxSources)},
		{"limits.user_auth_failures", float64(l.UserAuthFailures)}} {
		if f.val < 0 {
			v.add(f.key, strconv.FormatFloat(f.val, 'g', -1, 64), "must not be negative (0 turns the limit off)", ErrInvalid, nil)
		}
	}
	d, err := time.ParseDuration(l.BlockFor)
	if err != nil || d < 0 {
		v.add("limits.block_for", strconv.Quote(l.BlockFor), `must be a duration such as "5m"`, ErrInvalid, nil)
	}
	out.BlockFor = d
	ud, err := time.ParseDuration(l.UserBlockFor)
	if err != nil || ud < 0 {
		v.add("limits.user_block_for", strconv.Quote(l.UserBlockFor), `must be a duration such as "5m"`, ErrInvalid, nil)
	}
	out.UserBlockFor = ud
	out.ExemptNetworks = v.prefixes("limits.exempt_networks", l.ExemptNetworks)
	out.Shared = l.Shared
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
	out.FailoverTimeout = v.durationIn("proxy.failover_timeout", p.FailoverTimeout, minFailoverTimeout, maxFailoverTimeout)
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
