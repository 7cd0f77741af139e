// Package admin is authproxy's HTTP admin listener: Prometheus metrics,
// liveness, readiness and a JSON status of the upstreams.
//
//	GET /metrics   Prometheus exposition (Config.Metrics)
//	GET /healthz   200 "ok" while the process serves HTTP at all
//	GET /readyz    200 "ready", or 503 and the reason (Config.Ready)
//	GET /status    JSON: readiness, transactions, dialogs, upstream health,
//	               listeners, TCP connections, trunk registrations (Status)
//
// The endpoints carry no authentication and reveal no secret, username or
// Call-ID; bind the listener to loopback or a monitoring network.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"
)

// Status is the document GET /status returns.
type Status struct {
	// Version is authproxy's version.
	Version string `json:"version"`
	// StartedAt is when the process started.
	StartedAt time.Time `json:"started_at"`
	// Ready is what /readyz says; NotReadyReason why not.
	Ready          bool   `json:"ready"`
	NotReadyReason string `json:"not_ready_reason,omitempty"`
	// InFlight counts the requests being handled, Dialogs the dialogs
	// tracked.
	InFlight int `json:"in_flight"`
	Dialogs  int `json:"dialogs"`
	// HealthChecks tells whether upstreams are pinged with OPTIONS; when
	// not, every upstream's state is "unknown".
	HealthChecks bool `json:"health_checks"`
	// Upstreams are the configured upstreams, in configuration order.
	Upstreams []Upstream `json:"upstreams"`
	// Listeners are the SIP listeners, in configuration order, and
	// ListenersStopped counts those that stopped serving while authproxy
	// runs (each fails /readyz).
	Listeners        []Listener `json:"listeners"`
	ListenersStopped int        `json:"listeners_stopped"`
	// TCP counts the connections of the TCP and TLS listeners.
	TCP TCPConnections `json:"tcp"`
	// TrunkRegistrations lists the [[registration]] entries authproxy
	// keeps up upstream (never null).
	TrunkRegistrations []TrunkRegistration `json:"trunk_registrations"`
	// State is the state store and, on a shared one, the cluster.
	State *State `json:"state,omitempty"`
}

// State is the state store in Status (docs/state.md).
type State struct {
	// Backend is "memory", "file" or "redis"; Instance this instance's
	// name.
	Backend  string `json:"backend"`
	Instance string `json:"instance"`
	// Up is false while the store does not answer (since Since; Error
	// says why); Pending counts the writes waiting for it.
	Up      bool       `json:"up"`
	Since   *time.Time `json:"since,omitempty"`
	Error   string     `json:"error,omitempty"`
	Pending int        `json:"pending"`
	// Members are the live instances sharing the store (never null).
	Members []Member `json:"members"`
	// TrunkHolders maps each trunk registration ("upstream aor") to the
	// instance holding it.
	TrunkHolders map[string]string `json:"trunk_holders"`
}

// Member is one live instance of a cluster.
type Member struct {
	ID        string    `json:"id"`
	Advertise []string  `json:"advertise"`
	StartedAt time.Time `json:"started_at"`
	SeenAt    time.Time `json:"seen_at"`
}

// Upstream is one upstream in Status.
type Upstream struct {
	Name      string `json:"name"`
	Address   string `json:"address"`
	Transport string `json:"transport"`
	// State is "unknown", "up" or "down".
	State string `json:"state"`
	// Since is when State was entered (absent while unknown).
	Since *time.Time `json:"since,omitempty"`
	// LastPing is when the last OPTIONS ping ended.
	LastPing *time.Time `json:"last_ping,omitempty"`
	// LastRTTMillis is the round-trip time of the last answered ping.
	LastRTTMillis *float64 `json:"last_rtt_ms,omitempty"`
	// LastStatus is the status of the last answer (401/407 count as
	// alive); absent when the last ping failed.
	LastStatus int `json:"last_status,omitempty"`
	// LastError says why the last ping failed.
	LastError string `json:"last_error,omitempty"`
	// Pings and Failures count the pings sent and those that failed.
	Pings    uint64 `json:"pings"`
	Failures uint64 `json:"failures"`
	// ResolvedAt is when the upstream's name last resolved successfully
	// and ResolveExpires when it is refreshed (absent for an IP address);
	// ResolveError why the last resolution failed (the targets listed
	// are then the last good ones).
	ResolvedAt     *time.Time `json:"resolved_at,omitempty"`
	ResolveExpires *time.Time `json:"resolve_expires,omitempty"`
	ResolveError   string     `json:"resolve_error,omitempty"`
	// Targets are the addresses the upstream resolves to, in priority
	// order, each with its own health (never null).
	Targets []Target `json:"targets"`
}

// Target is one address an upstream resolves to, in Upstream.
type Target struct {
	Transport string `json:"transport"`
	Address   string `json:"address"`
	// Name is the host the address was found for (an SRV target).
	Name     string `json:"name"`
	Priority uint16 `json:"priority"`
	Weight   uint16 `json:"weight"`
	// State, Since, LastPing, LastRTTMillis, LastStatus, LastError, Pings
	// and Failures are as in Upstream, for this target.
	State         string     `json:"state"`
	Since         *time.Time `json:"since,omitempty"`
	LastPing      *time.Time `json:"last_ping,omitempty"`
	LastRTTMillis *float64   `json:"last_rtt_ms,omitempty"`
	LastStatus    int        `json:"last_status,omitempty"`
	LastError     string     `json:"last_error,omitempty"`
	Pings         uint64     `json:"pings"`
	Failures      uint64     `json:"failures"`
	// AvoidUntil is, after a transaction failed on the target, until when
	// requests try it only after the others; LastFailure how it failed
	// ("timeout", "transport-error", "503").
	AvoidUntil  *time.Time `json:"avoid_until,omitempty"`
	LastFailure string     `json:"last_failure,omitempty"`
}

// Listener is one SIP listener in Status.
type Listener struct {
	Transport string `json:"transport"`
	Address   string `json:"address"`
	// Serving is false once the listener stopped; Error says why.
	Serving bool   `json:"serving"`
	Error   string `json:"error,omitempty"`
}

// TCPConnections is what the guard of the TCP and TLS listeners counted.
type TCPConnections struct {
	// Open is the number of connections open now.
	Open int `json:"open"`
	// Accepted counts the connections admitted.
	Accepted uint64 `json:"accepted"`
	// Refused counts connections closed as soon as accepted, by reason.
	Refused map[string]uint64 `json:"refused"`
	// Closed counts connections closed later for a deadline, a message too
	// large or a fault, by reason.
	Closed map[string]uint64 `json:"closed"`
	// AcceptErrors counts failed accepts (each retried).
	AcceptErrors uint64 `json:"accept_errors"`
}

// TrunkRegistration is one [[registration]] authproxy keeps registered
// upstream: its AOR, its upstream and its state.
type TrunkRegistration struct {
	Name     string `json:"name"`
	Upstream string `json:"upstream"`
	State    string `json:"state"`
	// Holder is the instance holding it in a cluster.
	Holder string `json:"holder,omitempty"`
}

// Config is what the admin server serves.
type Config struct {
	// Metrics serves GET /metrics; nil answers 404.
	Metrics http.Handler
	// Ready decides /readyz: nil error means ready. nil Ready is always
	// ready.
	Ready func() error
	// Status builds the /status document; Ready and NotReadyReason are
	// filled in from Ready, and nil lists become empty ones. nil Status
	// serves a document with only those.
	Status func() Status
	// Logger receives the server's errors; nil discards.
	Logger *slog.Logger
	// Pprof serves Go's profiler under /debug/pprof/.
	Pprof bool
}

// Server is the admin HTTP server.
type Server struct {
	cfg Config
	mux *http.ServeMux
}

// Timeouts of the admin server: its clients are scrapers and probes on a
// local network, so anything slower is a stuck client, not a slow one.
const (
	readHeaderTimeout = 5 * time.Second
	writeTimeout      = 30 * time.Second // a scrape of every metric is well under a second
	idleTimeout       = 2 * time.Minute
	// shutdownTimeout bounds how long Serve waits for requests in progress
	// once its context ends.
	shutdownTimeout = 2 * time.Second
)

// New returns a server for cfg.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux()}
	if cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", cfg.Metrics)
	}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /status", s.status)
	if cfg.Pprof {
		// Contention is only recorded once asked for: one event in 100,
		// and blocking of 10 µs or more, cheap enough for a load run.
		runtime.SetMutexProfileFraction(100)
		runtime.SetBlockProfileRate(10_000)
		// Heap profiles sample one allocation per 64 kB instead of 512 kB,
		// fine enough to see what thousands of small dialogs hold. Set
		// before the listeners start, so every request's allocations count.
		runtime.MemProfileRate = 64 << 10
		s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		s.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return s
}

// Handler returns the server's routes, for tests and for embedding.
func (s *Server) Handler() http.Handler { return s.mux }

// Serve serves on ln until ctx ends, then shuts down, giving requests in
// progress a short grace, and closes ln. It returns nil after a clean stop.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: readHeaderTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := hs.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		_ = hs.Close()
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = fmt.Fprintln(w, "ok")
}

func (s *Server) readyErr() error {
	if s.cfg.Ready == nil {
		return nil
	}
	return s.cfg.Ready()
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.readyErr(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	_, _ = fmt.Fprintln(w, "ready")
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	var st Status
	if s.cfg.Status != nil {
		st = s.cfg.Status()
	}
	if err := s.readyErr(); err != nil {
		st.Ready, st.NotReadyReason = false, err.Error()
	} else {
		st.Ready, st.NotReadyReason = true, ""
	}
	if st.Upstreams == nil {
		st.Upstreams = []Upstream{}
	}
	for i := range st.Upstreams {
		if st.Upstreams[i].Targets == nil {
			st.Upstreams[i].Targets = []Target{}
		}
	}
	if st.TrunkRegistrations == nil {
		st.TrunkRegistrations = []TrunkRegistration{}
	}
	if st.Listeners == nil {
		st.Listeners = []Listener{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(st); err != nil {
		s.cfg.Logger.Warn("admin: cannot write /status", "error", err)
	}
}
