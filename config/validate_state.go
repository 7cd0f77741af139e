package config

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/authproxy/authproxy/credentials"
)

// State is the [state] table: where the state a restarted or second
// instance needs is kept (docs/state.md).
type State struct {
	// Backend is "file" (the default: a bbolt file in Dir, survives a
	// restart), "memory" (nothing kept) or "redis" (shared by a cluster).
	Backend string
	// Dir is the data directory of the file backend, resolved against the
	// configuration's directory (default "state" there).
	Dir string
	// Instance names this instance in a cluster; empty means the host
	// name and the process ID.
	Instance string
	// LeaseTTL is how long a trunk registration's lease lasts without
	// renewal (default 15s): a dead holder's trunk is taken over within it.
	LeaseTTL time.Duration
	// Readiness makes /readyz fail while the store does not answer
	// (default false: a store that is down is not an outage).
	Readiness bool
	// Redis is the [state.redis] table.
	Redis StateRedis
}

// StateRedis is the [state.redis] table.
type StateRedis struct {
	// Address is host:port.
	Address string
	// Username and Password authenticate (AUTH); Password comes from
	// password, password_env or password_file, like every secret. Empty:
	// no AUTH.
	Username string
	Password credentials.Secret
	// DB is the database number.
	DB int
	// TLS connects with TLS, verified with CAFile (default: the system
	// roots) for ServerName (default: the address host).
	TLS                bool
	CAFile, ServerName string
	// Prefix starts every key (default "authproxy:").
	Prefix string
	// Timeout bounds each command (default 500ms).
	Timeout time.Duration
}

// Bounds of [state].
const (
	// minLease: the holder renews every third of it, and a renewal must
	// fit between two with room for a slow store.
	minLease = 3 * time.Second
	// maxLease: a dead holder's trunk stays unregistered for up to this.
	maxLease = 10 * time.Minute
	// minRedisTimeout, maxRedisTimeout: below a millisecond a healthy
	// LAN store times out; above seconds the request path would wait on a
	// dead one.
	minRedisTimeout = time.Millisecond
	maxRedisTimeout = 10 * time.Second
	maxRedisDB      = 1 << 16
)

// buildState validates [state]; sharedLimits is [limits] shared, which
// needs a shared backend.
func (v *validator) buildState(s fileState, sharedLimits bool) State {
	out := State{Backend: s.Backend, Instance: s.Instance, Readiness: s.Readiness}
	switch s.Backend {
	case "file", "memory", "redis":
	default:
		v.add("state.backend", strconv.Quote(s.Backend), `must be "file", "memory" or "redis"`, ErrInvalid, nil)
	}
	out.LeaseTTL = v.durationIn("state.lease", s.Lease, minLease, maxLease)
	if s.Backend == "file" {
		if s.Dir == "" {
			v.add("state.dir", `""`, `is required with backend = "file": the data directory`, ErrRequired, nil)
		}
		out.Dir = s.Dir
		if out.Dir != "" && !filepath.IsAbs(out.Dir) && v.opts.baseDir != "" {
			out.Dir = filepath.Join(v.opts.baseDir, out.Dir)
		}
		if abs, err := filepath.Abs(out.Dir); err == nil && out.Dir != "" {
			out.Dir = abs
		}
	}
	r := s.Redis
	if s.Backend != "redis" {
		if sharedLimits {
			v.add("limits.shared", "true", `needs state.backend = "redis": a store the instances share`, ErrInvalid, nil)
		}
		if r.Address != "" {
			v.add("state.redis.address", strconv.Quote(r.Address), `is set but state.backend is not "redis"`, ErrInvalid, nil)
		}
		return out
	}
	out.Redis = v.buildStateRedis(r)
	return out
}

func (v *validator) buildStateRedis(r fileStateRedis) StateRedis {
	out := StateRedis{Username: r.Username, DB: r.DB, TLS: r.TLS, ServerName: r.ServerName, Prefix: r.Prefix}
	if r.Address == "" {
		v.add("state.redis.address", `""`, `is required with backend = "redis": host:port`, ErrRequired, nil)
	} else if host, port, err := net.SplitHostPort(r.Address); err != nil || host == "" {
		v.add("state.redis.address", strconv.Quote(r.Address), "must be host:port", ErrInvalid, err)
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		v.add("state.redis.address", strconv.Quote(r.Address), "port must be 1..65535", ErrInvalid, nil)
	} else {
		out.Address = r.Address
	}
	if r.DB < 0 || r.DB > maxRedisDB {
		v.add("state.redis.db", strconv.Itoa(r.DB), fmt.Sprintf("must be between 0 and %d", maxRedisDB), ErrInvalid, nil)
	}
	out.Timeout = v.durationIn("state.redis.timeout", r.Timeout, minRedisTimeout, maxRedisTimeout)
	if !r.TLS {
		if r.CAFile != "" {
			v.add("state.redis.ca_file", strconv.Quote(r.CAFile), "needs state.redis.tls = true", ErrInvalid, nil)
		}
		if r.ServerName != "" {
			v.add("state.redis.server_name", strconv.Quote(r.ServerName), "needs state.redis.tls = true", ErrInvalid, nil)
		}
	} else if r.CAFile != "" {
		out.CAFile = v.existingFile("state.redis.ca_file", r.CAFile, "PEM certificates verifying the Redis server")
	}
	if r.Password != nil || r.PasswordEnv != nil || r.PasswordFile != nil {
		var e credentials.Entry
		v.loadSecret("state.redis", fileCredential{Password: r.Password, PasswordEnv: r.PasswordEnv, PasswordFile: r.PasswordFile}, &e)
		out.Password = e.Password
	}
	return out
}

// State backends ([state] backend).
const (
	BackendFile   = "file"
	BackendMemory = "memory"
	BackendRedis  = "redis"
)
