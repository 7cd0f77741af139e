package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/knadh/koanf/providers/file"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/admin"
	"github.com/authproxy/authproxy/internal/metrics"
	"github.com/authproxy/authproxy/proxy"
)

// Timing of the configuration file watcher.
const (
	// watchDebounce is how long the file must stay quiet before a change is
	// reloaded: editors and config management write a file in several
	// steps (truncate, write, rename, chmod), and Kubernetes swaps a
	// ConfigMap's symlinks in a burst; one reload must see the end result.
	watchDebounce = 500 * time.Millisecond
	// watchRetry is how often a watch that stopped (the file was removed)
	// is re-armed.
	watchRetry = 2 * time.Second
)

// daemon is the running authproxy: the proxy, its metrics and admin
// listener, and the configuration they were built from.
type daemon struct {
	path   string // configuration file; "" runs the embedded example
	source string // how logs name the configuration
	log    *slog.Logger
	level  *slog.LevelVar // swapped by reloads
	// boot is the configuration the process started with: what changes
	// that need a restart are compared with, until there is one.
	boot *config.Config
	// cur is the configuration applied last (at start or by a reload).
	cur       atomic.Pointer[config.Config]
	started   time.Time
	proxy     *proxy.Proxy
	metrics   *metrics.Metrics
	debounce  time.Duration
	restartOn []string // keys changed since start that only a restart applies
	// allowSamples accepts config.example.toml's sample passwords in a
	// -config file (-allow-sample-secrets).
	allowSamples bool
	notify       *notifier // systemd's; nil when not run by it
}

// load reads and validates the configuration the daemon runs on.
func (d *daemon) load() (*config.Config, error) {
	if d.path == "" {
		return parseExample()
	}
	cfg, err := config.Load(d.path)
	if err == nil && !d.allowSamples {
		err = sampleSecrets(cfg)
	}
	return cfg, err
}

// serve runs the proxy, the admin listener and the reload triggers until
// ctx ends, then stops them in order: the proxy drains (the admin listener
// keeps answering, /readyz with 503), then the admin listener closes. It
// returns the exit code.
func (d *daemon) serve(ctx context.Context, store *credentials.Store) int {
	cfg := d.cur.Load()
	m := metrics.New(versionString())
	m.Prime(knownLabels(cfg))
	d.metrics = m
	pcfg, err := proxyConfig(cfg, store)
	if err != nil {
		d.log.Error("cannot start", "error", err)
		return 1
	}
	st, err := openStore(cfg.State, d.log)
	if err != nil {
		d.log.Error("cannot start", "error", err)
		return 1
	}
	defer func() {
		if err := st.Close(); err != nil {
			d.log.Warn("state store close", "error", err)
		}
	}()
	pcfg.State, pcfg.StateBackend = st, cfg.State.Backend
	pcfg.Instance, pcfg.LeaseTTL, pcfg.StateReadiness = cfg.State.Instance, cfg.State.LeaseTTL, cfg.State.Readiness
	pcfg.Logger = d.log
	pcfg.Observer = m
	pcfg.Ready = func() {
		d.log.Info("ready")
		d.notify.ready("serving")
	}
	p, err := proxy.New(pcfg)
	if err != nil {
		d.log.Error("cannot start", "error", err)
		return 1
	}
	d.proxy = p
	m.Attach(p)

	// The admin listener is bound before the proxy starts, so that a port
	// in use fails the start instead of the first scrape.
	adminCtx, stopAdmin := context.WithCancel(context.Background())
	defer stopAdmin()
	var adminDone chan error
	if cfg.Admin.Address != "" {
		ln, err := net.Listen("tcp", cfg.Admin.Address)
		if err != nil {
			d.log.Error("cannot start", "error", fmt.Errorf("admin listener: %w", err))
			return 1
		}
		d.log.Info("admin listening", "address", ln.Addr().String())
		srv := admin.New(admin.Config{
			Metrics: m.Handler(),
			Ready:   p.Readiness,
			Status:  d.status,
			Logger:  d.log.With("component", "admin"),
			Pprof:   cfg.Admin.Pprof,
		})
		adminDone = make(chan error, 1)
		go func() { adminDone <- srv.Serve(adminCtx, ln) }()
	}

	// SIGHUP is caught from here on; before, it would end the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloadCtx, stopReloads := context.WithCancel(ctx)
	defer stopReloads()
	reloadsDone := make(chan struct{})
	go func() {
		defer close(reloadsDone)
		d.reloadLoop(reloadCtx, hup)
	}()

	// STOPPING=1 as soon as the drain begins, not once it is over.
	ran, notified := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(notified)
		select {
		case <-ctx.Done():
		case <-ran:
			if ctx.Err() == nil {
				return // stopped by an error, not asked to
			}
		}
		d.notify.stopping()
	}()
	runErr := p.Run(ctx)
	close(ran)
	<-notified
	stopReloads()
	<-reloadsDone
	stopAdmin()
	if adminDone != nil {
		if err := <-adminDone; err != nil {
			d.log.Warn("admin listener stopped with error", "error", err)
		}
	}
	if runErr != nil {
		d.log.Error("stopped with error", "error", runErr)
		return 1
	}
	return 0
}

// reloadLoop reloads on SIGHUP and, with reload.watch, when the file
// changes, one reload at a time, until ctx ends.
func (d *daemon) reloadLoop(ctx context.Context, hup <-chan os.Signal) {
	var changed <-chan struct{}
	if d.boot.Reload.Watch {
		if d.path == "" {
			d.log.Warn("reload.watch is set, but the embedded example has no file to watch")
		} else {
			w := newFileWatcher(d.path, d.debounce, d.log)
			go w.run(ctx)
			defer func() { <-w.done }()
			changed = w.changed
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			d.reload("SIGHUP")
		case <-changed:
			d.reload("file changed")
		}
	}
}

// reload loads the configuration again and applies it: credentials,
// upstreams, routes, client groups, limits, health checks, the challenge
// budget and the log level, for requests that start from now on. An
// invalid configuration is rejected whole and the running one kept. Changes
// only a restart applies (listeners, admin address, log format, SIP trace,
// shutdown grace, file watching) are reported, not applied.
func (d *daemon) reload(trigger string) {
	d.notify.reloading()
	outcome := "serving; last reload rejected"
	defer func() { d.notify.ready(outcome) }()
	cfg, err := d.load()
	var store *credentials.Store
	if err == nil {
		store, err = credentials.NewStore(cfg.Credentials)
		if err != nil {
			err = fmt.Errorf("credentials: %w", err)
		}
	}
	restartNeeded := false
	var pcfg proxy.Config
	if err == nil {
		pcfg, err = proxyConfig(cfg, store)
	}
	if err == nil {
		err = d.proxy.Reload(pcfg)
		if errors.Is(err, proxy.ErrRestartRequired) {
			restartNeeded, err = true, nil
		}
	}
	// Each outcome is counted before it is logged: whoever reads the line
	// finds the metric already moved.
	if err != nil {
		d.metrics.ConfigReloaded(metrics.ReloadRejected)
		d.log.Error("configuration reload rejected; the running configuration stays",
			"trigger", trigger, "config", d.source, "errors", errorList(err))
		return
	}
	outcome = "serving"
	old := d.cur.Swap(cfg)
	d.level.Set(cfg.Log.Level)
	d.metrics.Prime(knownLabels(cfg))

	restart := restartKeys(d.boot, cfg)
	if restartNeeded && len(restart) == 0 {
		// The proxy saw a listener change the comparison above did not.
		restart = []string{"listen"}
	}
	changes := describeChanges(old, cfg)
	summary := "none"
	if len(changes) > 0 {
		summary = strings.Join(changes, "; ")
	}
	if len(restart) > 0 {
		d.metrics.ConfigReloaded(metrics.ReloadRestartRequired)
		d.log.Warn("configuration reloaded; some changes need a restart to take effect",
			"trigger", trigger, "changes", summary, "restart_needed", restart)
		return
	}
	d.metrics.ConfigReloaded(metrics.ReloadOK)
	d.log.Info("configuration reloaded", "trigger", trigger, "changes", summary)
}

// errorList returns the messages of every error joined in err, one each,
// also through a wrapper around a join ("load FILE: " + all the problems;
// the file is logged beside them).
func errorList(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		if _, leaf := e.(*config.FieldError); leaf {
			// Unwraps to its sentinel and cause, but reads whole.
			out = append(out, e.Error())
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if inner := errors.Unwrap(e); inner != nil {
			if _, ok := inner.(interface{ Unwrap() []error }); ok {
				walk(inner)
				return
			}
		}
		out = append(out, e.Error())
	}
	walk(err)
	return out
}

// restartKeys lists the keys whose new value differs from what the
// process started with and that only a restart applies.
func restartKeys(boot, cfg *config.Config) []string {
	var out []string
	if !reflect.DeepEqual(boot.Listen, cfg.Listen) {
		out = append(out, "listen")
	}
	if boot.Admin.Address != cfg.Admin.Address {
		out = append(out, "admin.address")
	}
	if boot.Admin.Pprof != cfg.Admin.Pprof {
		out = append(out, "admin.pprof")
	}
	if boot.Log.Format != cfg.Log.Format {
		out = append(out, "log.format")
	}
	if boot.Log.SIPTrace != cfg.Log.SIPTrace {
		// sipgo's trace switch is a package global its transports read
		// unsynchronised: flipping it while serving would be a data race.
		out = append(out, "log.sip_trace")
	}
	if boot.Proxy.ShutdownGrace != cfg.Proxy.ShutdownGrace {
		out = append(out, "proxy.shutdown_grace")
	}
	if boot.Proxy.FailoverTimeout != cfg.Proxy.FailoverTimeout {
		out = append(out, "proxy.failover_timeout")
	}
	if !reflect.DeepEqual(boot.DNS, cfg.DNS) {
		out = append(out, "dns")
	}
	if boot.Reload != cfg.Reload {
		out = append(out, "reload.watch")
	}
	if boot.Runtime != cfg.Runtime {
		out = append(out, "runtime")
	}
	if boot.TCP != cfg.TCP {
		out = append(out, "tcp")
	}
	if boot.WebSocket != cfg.WebSocket {
		out = append(out, "websocket")
	}
	if !reflect.DeepEqual(boot.State, cfg.State) {
		out = append(out, "state")
	}
	if boot.Capture != cfg.Capture {
		// The capture's socket is opened once, when the proxy starts.
		out = append(out, "capture")
	}
	return out
}

// describeChanges lists what a reload changed that it applies, for the
// one-line summary. It names keys, upstreams and counts, never a secret
// or a username.
func describeChanges(old, cfg *config.Config) []string {
	var out []string
	if old.Log.Level != cfg.Log.Level {
		out = append(out, fmt.Sprintf("log.level %s -> %s", strings.ToLower(old.Log.Level.String()), strings.ToLower(cfg.Log.Level.String())))
	}
	if old.Proxy.MaxChallenges != cfg.Proxy.MaxChallenges {
		out = append(out, fmt.Sprintf("proxy.max_challenges %d -> %d", old.Proxy.MaxChallenges, cfg.Proxy.MaxChallenges))
	}
	if old.Health != cfg.Health {
		out = append(out, fmt.Sprintf("health options_interval=%s down_after=%d up_after=%d -> options_interval=%s down_after=%d up_after=%d",
			old.Health.OptionsInterval, old.Health.DownAfter, old.Health.UpAfter,
			cfg.Health.OptionsInterval, cfg.Health.DownAfter, cfg.Health.UpAfter))
	}
	if s := diffUpstreams(old.Upstreams, cfg.Upstreams); s != "" {
		out = append(out, s)
	}
	if s := diffCredentials(old.Credentials, cfg.Credentials); s != "" {
		out = append(out, s)
	}
	if !reflect.DeepEqual(old.Groups, cfg.Groups) {
		out = append(out, fmt.Sprintf("groups changed (%d -> %d)", len(old.Groups), len(cfg.Groups)))
	}
	if !reflect.DeepEqual(old.Clients, cfg.Clients) {
		out = append(out, fmt.Sprintf("client groups changed (%d -> %d)", len(old.Clients), len(cfg.Clients)))
	}
	if !reflect.DeepEqual(old.Limits, cfg.Limits) {
		out = append(out, "limits changed")
	}
	return out
}

// diffUpstreams describes added (+), removed (-) and changed (~)
// upstreams by name.
func diffUpstreams(old, cur []config.Upstream) string {
	byName := map[string]config.Upstream{}
	for _, u := range old {
		byName[u.Name] = u
	}
	var parts []string
	seen := map[string]bool{}
	for _, u := range cur {
		seen[u.Name] = true
		o, ok := byName[u.Name]
		switch {
		case !ok:
			parts = append(parts, "+"+u.Name)
		case !reflect.DeepEqual(o, u):
			parts = append(parts, "~"+u.Name)
		}
	}
	for _, u := range old {
		if !seen[u.Name] {
			parts = append(parts, "-"+u.Name)
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "upstreams " + strings.Join(parts, " ")
}

// diffCredentials counts credentials added, removed and changed, matched
// by their scope (server, realm, user). A changed secret counts as changed;
// which one is not said.
func diffCredentials(old, cur []credentials.Entry) string {
	type scope struct{ server, realm, user string }
	byScope := map[scope]credentials.Entry{}
	for _, e := range old {
		byScope[scope{e.Server, e.Realm, e.User}] = e
	}
	var added, changed, removed int
	seen := map[scope]bool{}
	for _, e := range cur {
		k := scope{e.Server, e.Realm, e.User}
		seen[k] = true
		o, ok := byScope[k]
		switch {
		case !ok:
			added++
		case !reflect.DeepEqual(o, e): // compares secrets by content, never prints them
			changed++
		}
	}
	for k := range byScope {
		if !seen[k] {
			removed++
		}
	}
	if added+changed+removed == 0 {
		return ""
	}
	return fmt.Sprintf("credentials %d added, %d changed, %d removed", added, changed, removed)
}

// status builds the /status document.
func (d *daemon) status() admin.Status {
	p := d.proxy
	st := admin.Status{
		Version:      versionString(),
		StartedAt:    d.started,
		InFlight:     p.InFlight(),
		Dialogs:      p.DialogCount(),
		HealthChecks: d.cur.Load().Health.OptionsInterval > 0,
	}
	for _, u := range p.UpstreamHealth() {
		au := admin.Upstream{
			Name: u.Name, Address: u.Address, Transport: u.Transport, State: string(u.State),
			LastStatus: u.LastStatus, LastError: u.LastError, Pings: u.Pings, Failures: u.Failures,
			Since: timeOrNil(u.Since), LastPing: timeOrNil(u.LastPing), LastRTTMillis: millisOrNil(u.LastRTT),
			ResolvedAt: timeOrNil(u.Resolved), ResolveExpires: timeOrNil(u.Expires), ResolveError: u.ResolveError,
		}
		for _, t := range u.Targets {
			au.Targets = append(au.Targets, admin.Target{
				Transport: t.Transport, Address: t.Address, Name: t.Name, Priority: t.Priority, Weight: t.Weight,
				State: string(t.State), Since: timeOrNil(t.Since), LastPing: timeOrNil(t.LastPing),
				LastRTTMillis: millisOrNil(t.LastRTT), LastStatus: t.LastStatus, LastError: t.LastError,
				Pings: t.Pings, Failures: t.Failures, AvoidUntil: timeOrNil(t.AvoidUntil), LastFailure: t.LastFailure,
			})
		}
		st.Upstreams = append(st.Upstreams, au)
	}
	for _, r := range p.Registrations() {
		st.TrunkRegistrations = append(st.TrunkRegistrations, admin.TrunkRegistration{Name: r.AOR, Upstream: r.Upstream, State: r.State, Holder: r.Holder})
	}
	st.State = stateStatus(p)
	st.Listeners, st.ListenersStopped, st.TCP = listenerStatus(p)
	return st
}

// timeOrNil is t for JSON, nil (left out) when zero.
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// millisOrNil is d in milliseconds for JSON, nil (left out) when zero.
func millisOrNil(d time.Duration) *float64 {
	if d <= 0 {
		return nil
	}
	ms := float64(d.Microseconds()) / 1000
	return &ms
}

// listenerStatus is the listeners' and TCP connections' part of /status.
func listenerStatus(p *proxy.Proxy) ([]admin.Listener, int, admin.TCPConnections) {
	var ls []admin.Listener
	stopped := 0
	for _, l := range p.Listeners() {
		ls = append(ls, admin.Listener{Transport: l.Transport, Address: l.Address, Serving: l.Serving, Error: l.Error})
		if !l.Serving {
			stopped++
		}
	}
	s := p.TCPStats()
	return ls, stopped, admin.TCPConnections{Open: s.Open, Accepted: s.Accepted, Refused: s.Refused, Closed: s.Closed, AcceptErrors: s.AcceptErrors}
}

// fileWatcher turns changes of the configuration file into debounced
// signals on changed, using koanf's file provider (which watches the
// directory, so that editors' rename-over and Kubernetes' symlink swaps are
// seen too).
type fileWatcher struct {
	path     string
	debounce time.Duration
	log      *slog.Logger
	changed  chan struct{} // capacity 1
	done     chan struct{} // closed when run returns
}

func newFileWatcher(path string, debounce time.Duration, log *slog.Logger) *fileWatcher {
	if debounce <= 0 {
		debounce = watchDebounce
	}
	return &fileWatcher{path: path, debounce: debounce, log: log, changed: make(chan struct{}, 1), done: make(chan struct{})}
}

// run watches until ctx ends.
func (w *fileWatcher) run(ctx context.Context) {
	defer close(w.done)
	events := make(chan struct{}, 1)
	errs := make(chan error, 1)
	var fp *file.File
	// arm starts a fresh watch: a provider whose watch ended cannot be
	// restarted reliably, so each arming gets a new one.
	arm := func() error {
		fp = file.Provider(w.path)
		err := fp.Watch(func(_ any, err error) {
			// Runs on the provider's goroutine: never block it.
			if err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
			select {
			case events <- struct{}{}:
			default:
			}
		})
		if err != nil {
			fp = nil
		}
		return err
	}
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer quiet.Stop()
	defer retry.Stop()
	if err := arm(); err != nil {
		w.log.Warn("cannot watch the configuration file; SIGHUP still reloads", "path", w.path, "error", err)
		retry.Reset(watchRetry)
	} else {
		w.log.Info("watching the configuration file", "path", w.path)
	}
	for {
		select {
		case <-ctx.Done():
			if fp != nil {
				_ = fp.Unwatch()
			}
			return
		case <-events:
			quiet.Reset(w.debounce)
		case <-quiet.C:
			select {
			case w.changed <- struct{}{}:
			default:
			}
		case err := <-errs:
			w.log.Warn("configuration file watch stopped; re-arming", "path", w.path, "error", err)
			if fp != nil {
				_ = fp.Unwatch()
				fp = nil
			}
			retry.Reset(watchRetry)
		case <-retry.C:
			if err := arm(); err != nil {
				retry.Reset(watchRetry)
				continue
			}
			// The file may have been written while nothing watched it.
			quiet.Reset(w.debounce)
		}
	}
}
