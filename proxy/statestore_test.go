package proxy

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/state"
)

// TestStateSync_RedisOutage: writes made while Redis is down are queued,
// the store is marked down once, and once it answers again (empty, as a
// server without persistence restarts) the queued writes and the local
// state are written back.
func TestStateSync_RedisOutage(t *testing.T) {
	peers.Require(t, "redis-server")
	rd := peers.StartRedis(t, peers.RedisConfig{})
	st, err := state.OpenRedis(state.RedisConfig{Address: rd.Addr(), Prefix: "t:"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := newStateSync(st, "a", 3*time.Second, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	republished := make(chan struct{}, 1)
	s.republish = func(context.Context) {
		s.put("local/x", []byte("x"), time.Hour)
		select {
		case republished <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); s.run(ctx, func() Member { return Member{ID: "a"} }) }()
	defer func() { cancel(); <-done }()

	s.put("k/1", []byte("1"), time.Hour)
	if v, err := s.get("k/1"); err != nil || string(v) != "1" {
		t.Fatalf("get = %q, %v", v, err)
	}
	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	s.put("k/2", []byte("2"), time.Hour)
	if s.healthy() {
		t.Fatal("a failed write left the store marked up")
	}
	if _, err := s.get("k/2"); err != errStoreDown {
		t.Fatalf("get while down: %v, want errStoreDown", err)
	}
	rd.Start()
	testutil.Eventually(t, "the store up again", s.healthy)
	<-republished
	for _, k := range []string{"k/2", "local/x"} {
		if _, err := s.get(k); err != nil {
			t.Errorf("%s after the store returned: %v", k, err)
		}
	}
}
