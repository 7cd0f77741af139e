package state_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/state"
)

// contract runs the behaviour every Store promises.
func contract(t *testing.T, open func(t *testing.T) state.Store) {
	t.Run("PutGetDelete", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		if _, err := s.Get(ctx, "b/x"); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("Get of a missing key: %v, want ErrNotFound", err)
		}
		if err := s.Put(ctx, "b/x", []byte("one"), time.Hour); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Get(ctx, "b/x"); err != nil || string(got) != "one" {
			t.Fatalf("Get = %q, %v; want one", got, err)
		}
		if err := s.Delete(ctx, "b/x"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, "b/x"); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
		}
	})
	t.Run("Expiry", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		if err := s.Put(ctx, "b/short", []byte("v"), time.Millisecond); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := s.Get(ctx, "b/short"); errors.Is(err, state.ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("a key with a 1ms TTL is still there after 10s")
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	t.Run("Scan", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		for _, k := range []string{"b/1", "b/2", "c/1", "b*/3"} {
			if err := s.Put(ctx, k, []byte(k), time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		if err := s.Scan(ctx, "b/", func(k string, v []byte) error {
			if k != string(v) {
				t.Errorf("Scan: key %q with value %q", k, v)
			}
			got = append(got, k)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		sort.Strings(got)
		if len(got) != 2 || got[0] != "b/1" || got[1] != "b/2" {
			t.Fatalf("Scan(b/) = %q, want [b/1 b/2]", got)
		}
	})
	t.Run("Add", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		got, err := s.Add(ctx, map[string]int64{"r/a": 3, "r/b": 1}, time.Hour)
		if err != nil || got["r/a"] != 3 || got["r/b"] != 1 {
			t.Fatalf("Add = %v, %v; want a=3 b=1", got, err)
		}
		got, err = s.Add(ctx, map[string]int64{"r/a": 4}, time.Hour)
		if err != nil || got["r/a"] != 7 {
			t.Fatalf("second Add = %v, %v; want a=7", got, err)
		}
	})
	t.Run("LeaseOneHolder", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		a, err := s.Acquire(ctx, "trunk", "A", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Acquire(ctx, "trunk", "B", time.Hour); !errors.Is(err, state.ErrHeld) {
			t.Fatalf("second holder: %v, want ErrHeld", err)
		}
		if _, err := s.Renew(ctx, state.Lease{Name: "trunk", Holder: "B", Token: a.Token}, time.Hour); !errors.Is(err, state.ErrLost) {
			t.Fatalf("renew by a non-holder: %v, want ErrLost", err)
		}
		if _, err := s.Renew(ctx, a, time.Hour); err != nil {
			t.Fatalf("renew by the holder: %v", err)
		}
		ls, err := s.Leases(ctx)
		if err != nil || len(ls) != 1 || ls[0].Holder != "A" || ls[0].Name != "trunk" {
			t.Fatalf("Leases = %+v, %v", ls, err)
		}
		if err := s.Release(ctx, a); err != nil {
			t.Fatal(err)
		}
		b, err := s.Acquire(ctx, "trunk", "B", time.Hour)
		if err != nil {
			t.Fatalf("acquire after release: %v", err)
		}
		if b.Token <= a.Token {
			t.Fatalf("fencing token %d after %d: must grow", b.Token, a.Token)
		}
		if _, err := s.Renew(ctx, a, time.Hour); !errors.Is(err, state.ErrLost) {
			t.Fatalf("renew of a lease taken over: %v, want ErrLost", err)
		}
	})
	t.Run("LeaseExpires", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		if _, err := s.Acquire(ctx, "trunk", "A", 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := s.Acquire(ctx, "trunk", "B", time.Hour)
			if err == nil {
				break
			}
			if !errors.Is(err, state.ErrHeld) || time.Now().After(deadline) {
				t.Fatalf("taking over an expired lease: %v", err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

func TestMemory(t *testing.T) {
	contract(t, func(t *testing.T) state.Store {
		s := state.NewMemory()
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func TestFile(t *testing.T) {
	contract(t, func(t *testing.T) state.Store {
		s, err := state.OpenFile(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

// TestFile_SurvivesReopen: what was written before Close (and what a
// Flush committed) is there when the file is opened again; a second
// process cannot open it meanwhile.
func TestFile_SurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s, err := state.OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "b/kept", []byte("v"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "b/gone", []byte("v"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "b/gone"); err != nil {
		t.Fatal(err)
	}
	l, err := s.Acquire(ctx, "trunk", "A", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = state.OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.Get(ctx, "b/kept"); err != nil || string(v) != "v" {
		t.Fatalf("after reopen: %q, %v", v, err)
	}
	if _, err := s.Get(ctx, "b/gone"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("deleted key after reopen: %v", err)
	}
	if _, err := s.Renew(ctx, l, time.Hour); err != nil {
		t.Fatalf("lease after reopen: %v", err)
	}
}

func TestRedis(t *testing.T) {
	peers.Require(t, "redis-server")
	srv := peers.StartRedis(t, peers.RedisConfig{Password: "s3cret"})
	n := 0
	contract(t, func(t *testing.T) state.Store {
		n++
		s, err := state.OpenRedis(state.RedisConfig{Address: srv.Addr(), Password: "s3cret", Prefix: "t" + string(rune('a'+n)) + ":"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		if err := s.Ping(t.Context()); err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestRedis_WrongPassword: a refused AUTH is an error, never a silent
// empty store.
func TestRedis_WrongPassword(t *testing.T) {
	peers.Require(t, "redis-server")
	srv := peers.StartRedis(t, peers.RedisConfig{Password: "s3cret"})
	s, err := state.OpenRedis(state.RedisConfig{Address: srv.Addr(), Password: "wrong"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ping(context.Background()); err == nil {
		t.Fatal("Ping with a wrong password succeeded")
	}
}

// TestRedis_TLS: the store talks to a TLS-only server, verified with its
// certificate; a client that does not trust it gets an error.
func TestRedis_TLS(t *testing.T) {
	peers.Require(t, "redis-server")
	srv := peers.StartRedis(t, peers.RedisConfig{TLS: true})
	pemData, err := os.ReadFile(srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatal("no certificate in the CA file")
	}
	s, err := state.OpenRedis(state.RedisConfig{Address: srv.Addr(), TLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(t.Context(), "b/tls", []byte("v"), time.Minute); err != nil {
		t.Fatalf("Put over TLS: %v", err)
	}
	untrusted, err := state.OpenRedis(state.RedisConfig{Address: srv.Addr(), TLS: &tls.Config{ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer untrusted.Close()
	if err := untrusted.Ping(t.Context()); err == nil {
		t.Fatal("Ping to a server whose certificate is not trusted succeeded")
	}
}
