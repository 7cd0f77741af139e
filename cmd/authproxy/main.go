// Command authproxy runs the credential-injecting SIP proxy.
//
//	authproxy                      run on the embedded config.example.toml (a demo; warns)
//	authproxy -config F            run on F
//	authproxy -check -config F     validate F, print the errors or a summary
//	authproxy -check -skip-secrets -config F   the same without reading secrets (CI)
//	authproxy -version             print the version, commit and Go version
//	authproxy -healthcheck URL     GET URL, exit 0 on a 2xx (container HEALTHCHECK)
//
// Signals: SIGINT/SIGTERM drain and stop (a second one exits at once);
// SIGHUP reloads the configuration file. Under systemd (Type=notify) it
// reports READY=1, RELOADING=1 and STOPPING=1 on $NOTIFY_SOCKET.
// authproxy -help says all of it (usageText).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/lmittmann/tint"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/resolve"
	"github.com/authproxy/authproxy/proxy/tcpguard"
	"github.com/authproxy/authproxy/proxy/wsgate"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	// Caught from the start, on one channel, so that no signal is lost
	// between the first and the second (stopping one registration to make
	// another would drop one arriving in between).
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go onSignals(sigs, cancel, os.Exit)
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// onSignals stops the program on the first signal from sigs (cancel: the
// proxy drains), and exits with status 1 on the second, grace or not.
func onSignals(sigs <-chan os.Signal, cancel context.CancelFunc, exit func(code int)) {
	<-sigs
	cancel()
	<-sigs
	exit(1)
}

// run is the whole program; it returns the exit code (see usageText).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("authproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // -help prints usageText to stdout, below
	configPath := fs.String("config", "", "TOML configuration `file` (default: the embedded config.example.toml, a demo)")
	check := fs.Bool("check", false, "validate the configuration, print a summary or every error, and exit")
	skipSecrets := fs.Bool("skip-secrets", false, "with -check: validate without reading password_env variables, password_file files or TLS key files (for CI)")
	allowSamples := fs.Bool("allow-sample-secrets", false, "run a -config file that uses config.example.toml's sample passwords (a demo)")
	showVersion := fs.Bool("version", false, "print the version, commit and Go version, and exit")
	healthURL := fs.String("healthcheck", "", "GET `URL` (e.g. http://127.0.0.1:9060/healthz) and exit 0 on a 2xx answer, 1 otherwise: a HEALTHCHECK for images without curl")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, fs)
			return 0
		}
		fmt.Fprintln(stderr, "try: authproxy -help")
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "authproxy: unexpected argument %q\ntry: authproxy -help\n", fs.Arg(0))
		return 2
	}
	if *skipSecrets && !*check {
		fmt.Fprintln(stderr, "authproxy: -skip-secrets applies only to -check: a running proxy needs its secrets\ntry: authproxy -help")
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "authproxy", currentVersion())
		return 0
	}
	if *healthURL != "" {
		return probe(ctx, *healthURL, stdout, stderr)
	}

	var opts []config.Option
	if *skipSecrets {
		opts = append(opts, config.SkipSecrets())
	}
	source := *configPath
	var cfg *config.Config
	var err error
	if source == "" {
		source = embeddedSource
		cfg, err = parseExample(opts...)
	} else {
		cfg, err = config.Load(source, opts...)
	}
	if err != nil {
		printReport(stderr, "invalid configuration", source, err)
		return 1
	}
	store, err := credentials.NewStore(cfg.Credentials)
	if err != nil {
		printReport(stderr, "invalid credentials", source, err)
		return 1
	}
	if *configPath != "" && !*allowSamples {
		if err := sampleSecrets(cfg); err != nil {
			printReport(stderr, "sample secrets refused", source, err)
			return 1
		}
	}
	if *check {
		if *configPath == "" {
			fmt.Fprintln(stderr, "authproxy: warning:", embeddedWarning)
		}
		if w := permissionWarning(*configPath); w != "" {
			fmt.Fprintln(stderr, "authproxy: warning:", w)
		}
		for _, w := range cfg.Warnings() {
			fmt.Fprintln(stderr, "authproxy: warning:", w)
		}
		for _, w := range resolutionWarnings(ctx, cfg) {
			fmt.Fprintln(stderr, "authproxy: warning:", w)
		}
		fmt.Fprintf(stdout, "%s: ok: %s\n", source, cfg.Summary())
		return 0
	}

	level := new(slog.LevelVar)
	level.Set(cfg.Log.Level)
	log := newLogger(stderr, cfg.Log, level)
	// The process-wide settings of the SIP stack (sipgo's package
	// globals: UDP MTU, Timers J, L and M; see proxy.TuneSIPStack), set
	// here, before anything serves, and nowhere else.
	proxy.TuneSIPStack()
	sip.SetDefaultLogger(proxy.SipgoLogger(log.With("component", "sipgo")))
	// Anything else logging through slog's or the log package's default
	// logger writes authproxy's lines too.
	slog.SetDefault(log)
	if cfg.Log.SIPTrace {
		sip.SIPDebugTracer(proxy.Tracer{Log: log.With("component", "trace")})
		sip.SIPDebug = true
	}
	bv := currentVersion()
	log.Info("starting", "version", bv.Version, "commit", bv.Commit, "modified", bv.Modified, "config", source, "summary", cfg.Summary())
	if *configPath == "" {
		log.Warn(embeddedWarning)
	}
	log.Info("go runtime", applyRuntime(cfg.Runtime)...)
	if w := permissionWarning(*configPath); w != "" {
		log.Warn(w, "config", source)
	}
	for _, w := range cfg.Warnings() {
		log.Warn(w, "config", source)
	}

	d := &daemon{path: *configPath, source: source, log: log, level: level, boot: cfg, started: time.Now(),
		allowSamples: *allowSamples, notify: newNotifier(os.Getenv("NOTIFY_SOCKET"), log)}
	d.cur.Store(cfg)
	return d.serve(ctx, store)
}

// newLogger builds the process logger: tint on a terminal (unless NO_COLOR
// asks otherwise), JSON lines elsewhere, or what the configuration forces.
// level is the minimum level; a reload changes it.
func newLogger(w io.Writer, c config.Log, level slog.Leveler) *slog.Logger {
	format := c.Format
	if format == "auto" || format == "" {
		format = "json"
		if isTerminal(w) {
			format = "tint"
		}
	}
	var h slog.Handler
	switch format {
	case "tint":
		_, noColor := os.LookupEnv("NO_COLOR")
		h = tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly, NoColor: noColor, ReplaceAttr: replaceLogAttr})
	case "text":
		h = slog.NewTextHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: replaceLogAttr})
	default:
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: replaceLogAttr})
	}
	return slog.New(h)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// proxyConfig turns a validated configuration into the proxy's plain
// configuration (without the process-wide parts: logger, ready hook). It
// reads the TLS certificates, keys and CA bundles the configuration names.
func proxyConfig(cfg *config.Config, store *credentials.Store) (proxy.Config, error) {
	pcfg := proxy.Config{
		Credentials:       store,
		MaxChallenges:     cfg.Proxy.MaxChallenges,
		ShutdownGrace:     cfg.Proxy.ShutdownGrace,
		SIPTrace:          cfg.Log.SIPTrace,
		TimerC:            cfg.Proxy.TimerC,
		DialogIdleTimeout: cfg.Proxy.DialogIdleTimeout,
		FailoverTimeout:   cfg.Proxy.FailoverTimeout,
		DNS: resolve.Config{
			Servers: cfg.DNS.Servers, MinTTL: cfg.DNS.MinTTL, MaxTTL: cfg.DNS.MaxTTL, Timeout: cfg.DNS.Timeout,
		},
		Health: proxy.HealthCheck{
			Interval: cfg.Health.OptionsInterval, DownAfter: cfg.Health.DownAfter, UpAfter: cfg.Health.UpAfter,
		},
		Limits: proxy.Limits{
			Rate: cfg.Limits.Rate, Burst: cfg.Limits.Burst,
			MaxPerSource: cfg.Limits.MaxPerSource, MaxTotal: cfg.Limits.MaxTotal,
			AuthFailures: cfg.Limits.AuthFailures, BlockFor: cfg.Limits.BlockFor,
			MaxSources: cfg.Limits.MaxSources, Drop: cfg.Limits.Drop,
			UserAuthFailures: cfg.Limits.UserAuthFailures, UserBlockFor: cfg.Limits.UserBlockFor,
			Exempt: cfg.Limits.ExemptNetworks, Shared: cfg.Limits.Shared,
		},
		TCP: tcpguard.Limits{
			MaxConns: cfg.TCP.MaxConnections, MaxConnsPerSource: cfg.TCP.MaxConnectionsPerSource,
			IdleTimeout: cfg.TCP.IdleTimeout, MessageTimeout: cfg.TCP.MessageTimeout,
			HandshakeTimeout: cfg.TCP.HandshakeTimeout, MaxMessageSize: cfg.TCP.MaxMessageSize,
		},
		WebSocket: wsgate.Limits{
			MaxConns: cfg.WebSocket.MaxConnections, MaxConnsPerSource: cfg.WebSocket.MaxConnectionsPerSource,
			HandshakeTimeout: cfg.WebSocket.HandshakeTimeout, IdleTimeout: cfg.WebSocket.IdleTimeout,
			PingInterval: cfg.WebSocket.PingInterval, MaxMessageSize: cfg.WebSocket.MaxMessageSize,
		},
		Capture: proxy.Capture{
			HEP: cfg.Capture.HEP, AgentID: cfg.Capture.AgentID, AuthKey: cfg.Capture.AuthKey,
			KeepCredentials: !cfg.Capture.Redact,
		},
	}
	for i, l := range cfg.Listen {
		pl := proxy.Listener{Transport: l.Transport, Address: l.Address, Advertise: l.Advertise,
			WebSocket: proxy.WebSocketListener{Path: l.Path, Origins: l.Origins, TokenSecret: l.TokenSecret}}
		if l.Transport == "tls" || l.Transport == "wss" {
			cert, err := tls.LoadX509KeyPair(l.CertFile, l.KeyFile)
			if err != nil {
				return proxy.Config{}, fmt.Errorf("listen[%d]: load certificate %s: %w", i, l.CertFile, err)
			}
			pl.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		pcfg.Listeners = append(pcfg.Listeners, pl)
	}
	for _, r := range cfg.Registrations {
		pcfg.Registrations = append(pcfg.Registrations, proxy.Registration{
			Upstream: r.Upstream, AOR: r.AOR, ContactUser: r.ContactUser, Expires: r.Expires, Target: r.Target,
		})
	}
	for i, u := range cfg.Upstreams {
		pu := proxy.Upstream{
			Name: u.Name, Address: u.Address, Transport: u.Transport, Domains: u.Domains, Default: u.Default,
			ServerName: u.ServerName, RegisterMode: u.RegisterMode, AcceptFrom: u.AcceptFrom,
		}
		pm, err := proxy.ParsePreemptive(u.Preemptive)
		if err != nil {
			return proxy.Config{}, fmt.Errorf("upstream[%d]: %w", i, err) // config validated it: a wiring bug
		}
		pu.Preemptive = pm
		if u.CAFile != "" {
			pem, err := os.ReadFile(u.CAFile)
			if err != nil {
				return proxy.Config{}, fmt.Errorf("upstream[%d].ca_file: %w", i, err)
			}
			pu.RootCAs = x509.NewCertPool()
			if !pu.RootCAs.AppendCertsFromPEM(pem) {
				return proxy.Config{}, fmt.Errorf("upstream[%d].ca_file %s: no PEM certificate in it", i, u.CAFile)
			}
		}
		pcfg.Upstreams = append(pcfg.Upstreams, pu)
	}
	for _, g := range cfg.Groups {
		pcfg.Groups = append(pcfg.Groups, proxy.UpstreamGroup{
			Name: g.Name, Upstreams: g.Upstreams, Domains: g.Domains, Default: g.Default, FailoverOn: g.FailoverOn,
		})
	}
	for _, c := range cfg.Clients {
		pcfg.Clients = append(pcfg.Clients, proxy.ClientGroup{
			Name: c.Name, Networks: c.Networks, Upstreams: c.Upstreams, Users: c.Users, Realm: c.Realm, Trusted: c.Trusted,
		})
	}
	return pcfg, nil
}

// permissionWarning returns a warning when the configuration file, which
// may hold trunk passwords, can be read or written by users other than its
// owner; "" when it cannot (or when there is no file).
func permissionWarning(path string) string {
	if path == "" {
		return ""
	}
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Sprintf("configuration file %s has mode %04o: group and others can access it; it may hold passwords (chmod 600)", path, perm)
	}
	return ""
}
