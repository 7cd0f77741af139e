package config_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

func TestState(t *testing.T) {
	st := func(body string) string { return string(withClient(baseOK + body + "\n")) }
	t.Run("DefaultIsFileBesideTheConfiguration", func(t *testing.T) {
		dir := t.TempDir()
		cfg := mustParse(t, st(""), config.WithBaseDir(dir))
		if got, want := cfg.State, (config.State{Backend: "file", Dir: filepath.Join(dir, "state"), LeaseTTL: 15 * time.Second}); got != want {
			t.Fatalf("State = %+v, want %+v", got, want)
		}
	})
	t.Run("Redis", func(t *testing.T) {
		cfg := mustParse(t, st("[state]\nbackend = \"redis\"\ninstance = \"a\"\nlease = \"6s\"\n[state.redis]\naddress = \"10.0.0.9:6379\"\npassword_env = \"RP\"\nprefix = \"ap1:\"\ndb = 2"),
			env(map[string]string{"RP": "s3cret"}))
		r := cfg.State.Redis
		if cfg.State.Backend != "redis" || cfg.State.Instance != "a" || cfg.State.LeaseTTL != 6*time.Second ||
			r.Address != "10.0.0.9:6379" || r.Prefix != "ap1:" || r.DB != 2 || r.Timeout != 500*time.Millisecond {
			t.Fatalf("State = %+v", cfg.State)
		}
		if r.Password.Reveal() != "s3cret" {
			t.Fatal("password_env not read")
		}
	})
	for _, tc := range []struct {
		name, toml, key string
		err             error
	}{
		{"UnknownBackend", "[state]\nbackend = \"etcd\"", "state.backend", config.ErrInvalid},
		{"EmptyDir", "[state]\ndir = \"\"", "state.dir", config.ErrRequired},
		{"ShortLease", "[state]\nlease = \"1s\"", "state.lease", config.ErrInvalid},
		{"RedisWithoutAddress", "[state]\nbackend = \"redis\"", "state.redis.address", config.ErrRequired},
		{"RedisBadAddress", "[state]\nbackend = \"redis\"\n[state.redis]\naddress = \"redis\"", "state.redis.address", config.ErrInvalid},
		{"RedisAddressWithoutRedis", "[state.redis]\naddress = \"127.0.0.1:6379\"", "state.redis.address", config.ErrInvalid},
		{"RedisUnsetPasswordEnv", "[state]\nbackend = \"redis\"\n[state.redis]\naddress = \"127.0.0.1:6379\"\npassword_env = \"NOPE\"", "state.redis.password_env", config.ErrRequired},
		{"RedisTwoPasswords", "[state]\nbackend = \"redis\"\n[state.redis]\naddress = \"127.0.0.1:6379\"\npassword = \"x\"\npassword_env = \"NOPE\"", "state.redis", config.ErrInvalid},
		{"RedisCAWithoutTLS", "[state]\nbackend = \"redis\"\n[state.redis]\naddress = \"127.0.0.1:6379\"\nca_file = \"ca.pem\"", "state.redis.ca_file", config.ErrInvalid},
		{"RedisTimeout", "[state]\nbackend = \"redis\"\n[state.redis]\naddress = \"127.0.0.1:6379\"\ntimeout = \"1m\"", "state.redis.timeout", config.ErrInvalid},
		{"UnknownKey", "[state]\nbakend = \"file\"", "state.bakend", config.ErrUnknownKey},
		{"SharedLimitsWithoutRedis", "[limits]\nshared = true", "limits.shared", config.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse([]byte(st(tc.toml)), env(nil))
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			errs := fieldErrors(t, err)
			if len(errs) != 1 || errs[0].Key != tc.key {
				t.Fatalf("errors %v, want one at %s", err, tc.key)
			}
		})
	}
	t.Run("PasswordRedacted", func(t *testing.T) {
		_, err := config.Parse([]byte(st("[state]\nbackend = \"redis\"\n[state.redis]\naddress = \"redis\"\npassword = \"hunter2\"")), env(nil))
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("err = %v: want an error without the password", err)
		}
	})
}
