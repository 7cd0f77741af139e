package proxy

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/credentials"
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

// newStoreProxy is a proxy on st, not running (no sockets).
func newStoreProxy(t *testing.T, st state.Store) *Proxy {
	t.Helper()
	return newStoreProxyWith(t, st, Limits{})
}

// newStoreProxyWith is newStoreProxy with limits l.
func newStoreProxyWith(t *testing.T, st state.Store, l Limits) *Proxy {
	t.Helper()
	store, err := credentials.NewStore(nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{
		Listeners:   []Listener{{Transport: "udp", Address: "127.0.0.1:0"}},
		Upstreams:   []Upstream{{Name: "pbx", Address: "127.0.0.2:5060"}},
		Credentials: store,
		Logger:      slog.New(slog.DiscardHandler),
		State:       st,
		Instance:    "a",
		Limits:      l,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStateRestored: what one proxy wrote to a store it owns (the file
// backend's case) is what the next one on the same store starts with:
// live bindings by contact and alias, REGISTER CSeq offsets; expired and
// removed bindings are not restored.
func TestStateRestored(t *testing.T) {
	st := state.NewMemory()
	p1 := newStoreProxy(t, st)
	now := time.Now()
	contact := func(s string) sip.Uri {
		var u sip.Uri
		if err := sip.ParseUri(s, &u); err != nil {
			t.Fatal(err)
		}
		return u
	}
	live := &binding{aor: "1001@pbx", contact: contact("sip:1001@10.0.0.5:5062"), alias: "ap-1", upstream: "pbx",
		transport: "UDP", addr: "192.0.2.1:40000", expires: now.Add(time.Hour)}
	live.ckey = contactKey(live.contact)
	gone := &binding{aor: "1002@pbx", contact: contact("sip:1002@10.0.0.6"), upstream: "pbx", transport: "UDP", addr: "192.0.2.2:5060", expires: now.Add(time.Hour)}
	gone.ckey = contactKey(gone.contact)
	for _, b := range []*binding{live, gone} {
		p1.bindings.put(b, now)
		p1.saveBinding(b)
	}
	p1.bindings.remove(gone.aor, gone.ckey)
	p1.forgetBinding(gone.aor, gone.ckey, "")
	k := cseqKey{callID: "reg-1", fromTag: "t1"}
	p1.cseq.add(k, 2, now, time.Hour)
	p1.saveRegisterOffset(k, time.Hour)

	p2 := newStoreProxy(t, st)
	if n := p2.loadBindings(t.Context()); n != 1 {
		t.Fatalf("restored %d bindings, want 1", n)
	}
	if n := p2.loadOffsets(t.Context()); n != 1 {
		t.Fatalf("restored %d offsets, want 1", n)
	}
	b := p2.bindings.lookup(contact("sip:1001@10.0.0.5:5062"), false, now)
	if b == nil || b.addr != live.addr || b.upstream != "pbx" || !b.expires.Equal(live.expires) {
		t.Fatalf("binding by contact = %+v, want %+v", b, live)
	}
	if b := p2.bindings.lookup(contact("sip:ap-1@127.0.0.1"), true, now); b == nil || b.aor != live.aor {
		t.Fatalf("binding by alias = %+v", b)
	}
	if b := p2.bindings.lookup(contact("sip:1002@10.0.0.6"), false, now); b != nil {
		t.Fatalf("a removed binding came back: %+v", b)
	}
	if got := p2.cseq.offset(k); got != 2 {
		t.Fatalf("CSeq offset = %d, want 2", got)
	}
}

// sharedMemory is an in-memory store that says it is shared: proxies on it
// act as a cluster on Redis would.
type sharedMemory struct{ *state.Memory }

func (sharedMemory) Shared() bool { return true }

// TestSharedRateLimit: with Limits.Shared, three instances that each
// admitted a source's burst (within their own limits) together passed
// the cluster's Rate+Burst in one second: each instance that adds its
// count and sees the total refuses the source until that second ends, even
// with tokens left in its own bucket; the next second admits it again.
func TestSharedRateLimit(t *testing.T) {
	st := sharedMemory{state.NewMemory()}
	l := Limits{Rate: 10, Burst: 10, Shared: true}
	ps := []*Proxy{newStoreProxyWith(t, st, l), newStoreProxyWith(t, st, l), newStoreProxyWith(t, st, l)}
	src := netip.MustParseAddr("192.0.2.7")
	now := time.Unix(1000, 0)
	for i, p := range ps {
		for range 10 {
			if v := p.limiter.enter(src, now); v != limitOK {
				t.Fatalf("instance %d: %v within its own burst", i, v)
			}
			p.limiter.leave(src)
		}
	}
	for _, p := range ps {
		p.syncSharedRate(t.Context(), now)
	}
	later := now.Add(500 * time.Millisecond) // 5 tokens back in every bucket
	if v := ps[2].limiter.enter(src, later); v != limitRate {
		t.Fatalf("the instance that saw 30 > 20 admitted the source: %v", v)
	}
	if v := ps[0].limiter.enter(src, later); v != limitOK {
		t.Fatalf("an instance that has not seen the total yet: %v, want admitted by its own bucket", v)
	}
	ps[0].limiter.leave(src)
	ps[0].syncSharedRate(t.Context(), later)
	if v := ps[0].limiter.enter(src, later.Add(time.Millisecond)); v != limitRate {
		t.Fatalf("after adding its count to the total: %v, want rate-limited", v)
	}
	next := time.Unix(1001, int64(100*time.Millisecond))
	if v := ps[2].limiter.enter(src, next); v != limitOK {
		t.Fatalf("the next second: %v, want admitted", v)
	}
	ps[2].limiter.leave(src)
	// Without Shared, the counts are not kept and nothing is blocked.
	solo := newStoreProxyWith(t, st, Limits{Rate: 10, Burst: 10})
	for range 10 {
		solo.limiter.enter(src, now)
		solo.limiter.leave(src)
	}
	solo.syncSharedRate(t.Context(), now)
	if v := solo.limiter.enter(src, later); v != limitOK {
		t.Fatalf("without Shared: %v", v)
	}
}
