package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/authproxy/authproxy"
	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/internal/admin"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/state"
)

// openStore opens the state store [state] configures. A Redis server that
// is down at start is not an error: the proxy serves from its own memory
// and writes its state once the server answers.
func openStore(c config.State, log *slog.Logger) (state.Store, error) {
	switch c.Backend {
	case config.BackendMemory:
		return state.NewMemory(), nil
	case config.BackendFile:
		f, err := state.OpenFile(c.Dir, log.With("component", "state"))
		if err != nil {
			return nil, fmt.Errorf("state: %w (set [state] dir to a writable directory, or backend = \"memory\")", err)
		}
		log.Info("state store", "backend", c.Backend, "path", f.Path())
		return f, nil
	case config.BackendRedis:
		rc := state.RedisConfig{Address: c.Redis.Address, Username: c.Redis.Username, Password: c.Redis.Password.Reveal(),
			DB: c.Redis.DB, Prefix: c.Redis.Prefix, Timeout: c.Redis.Timeout}
		if c.Redis.TLS {
			tc, err := redisTLS(c.Redis)
			if err != nil {
				return nil, err
			}
			rc.TLS = tc
		}
		r, err := state.OpenRedis(rc)
		if err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := r.Ping(ctx); err != nil {
			log.Warn("state store not answering at start; serving from local state until it does", "backend", c.Backend, "address", c.Redis.Address, "error", err)
		} else {
			log.Info("state store", "backend", c.Backend, "address", c.Redis.Address, "prefix", c.Redis.Prefix)
		}
		return r, nil
	}
	return nil, fmt.Errorf("state: unknown backend %q", c.Backend)
}

// parseExample parses the embedded config.example.toml for a run without
// -config (the demo). It keeps no state file: the example's relative
// [state] dir would land in whatever directory the demo was started from.
func parseExample(opts ...config.Option) (*config.Config, error) {
	cfg, err := config.Parse(authproxy.ExampleConfig, opts...)
	if err == nil && cfg.State.Backend == config.BackendFile {
		cfg.State.Backend, cfg.State.Dir = config.BackendMemory, ""
	}
	return cfg, err
}

// redisTLS is the TLS configuration of a Redis connection: verified with
// the CA file (else the system roots) for the server name (else the
// address host).
func redisTLS(c config.StateRedis) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if tc.ServerName == "" {
		host, _, err := net.SplitHostPort(c.Address)
		if err != nil {
			return nil, fmt.Errorf("state.redis.address: %w", err)
		}
		tc.ServerName = host
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("state.redis.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("state.redis.ca_file %s: no PEM certificate in it", c.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// stateStatus is the state store's part of /status.
func stateStatus(p *proxy.Proxy) *admin.State {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cs := p.Cluster(ctx)
	st := &admin.State{Backend: cs.Store.Backend, Instance: cs.Instance, Up: cs.Store.Up, Error: cs.Store.Error,
		Pending: cs.Store.Pending, Members: []admin.Member{}, TrunkHolders: cs.Holders}
	if !cs.Store.Up {
		st.Since = &cs.Store.Since
	}
	for _, m := range cs.Members {
		st.Members = append(st.Members, admin.Member{ID: m.ID, Advertise: m.Advertise, StartedAt: m.Started, SeenAt: m.Seen})
	}
	return st
}
