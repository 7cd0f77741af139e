package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authproxy/authproxy/internal/dnstest"
	"github.com/authproxy/authproxy/internal/testutil"
)

var udpQuery = Query{Host: "example.test", Transport: UDP}

// setZone gives srv one SRV record for udpQuery and sip1's address, both
// with the given TTL (seconds).
func setZone(srv *dnstest.Server, ttl int, addr string) {
	srv.Set(fmt.Sprintf("_sip._udp.example.test. %d IN SRV 10 50 5060 sip1.example.test.", ttl))
	srv.Set(fmt.Sprintf("sip1.example.test. %d IN A %s", ttl, addr))
}

// TestLookup_TTLClamped: a result lives for the smallest TTL of the
// records used, clamped to [MinTTL, MaxTTL].
func TestLookup_TTLClamped(t *testing.T) {
	tests := []struct {
		name         string
		cfg          Config
		srvTTL, aTTL int
		want         time.Duration
	}{
		{"ZeroIsMinTTL", Config{}, 0, 0, DefaultMinTTL},
		{"DayIsMaxTTL", Config{}, 86400, 86400, DefaultMaxTTL},
		{"SmallestOfChain", Config{}, 300, 20, 20 * time.Second},
		{"SRVSmallest", Config{}, 30, 300, 30 * time.Second},
		{"OwnBounds", Config{MinTTL: time.Second, MaxTTL: 30 * time.Second}, 45, 45, 30 * time.Second},
		{"OwnFloor", Config{MinTTL: 2 * time.Minute}, 60, 60, 2 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := dnstest.New(t)
			srv.Set(fmt.Sprintf("_sip._udp.example.test. %d IN SRV 10 50 5060 sip1.example.test.", tc.srvTTL))
			srv.Set(fmt.Sprintf("sip1.example.test. %d IN A 127.0.0.2", tc.aTTL))
			r := newTestResolver(t, srv, tc.cfg)
			res := r.lookup(t, udpQuery)
			if got := res.Expires.Sub(res.Updated); got != tc.want {
				t.Fatalf("lifetime %v, want %v", got, tc.want)
			}
			if !res.Updated.Equal(r.clock.Now()) {
				t.Fatalf("Updated %v, want the clock's now %v", res.Updated, r.clock.Now())
			}
		})
	}
}

// TestLookup_TruncatedRetriesOverTCP: a truncated UDP answer is asked again
// over TCP.
func TestLookup_TruncatedRetriesOverTCP(t *testing.T) {
	srv := dnstest.New(t)
	setZone(srv, 60, "127.0.0.2")
	srv.Truncate(true)
	r := newTestResolver(t, srv, Config{})
	res := r.lookup(t, udpQuery)
	if want := []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50)}; !slices.Equal(res.Targets, want) {
		t.Fatalf("Targets = %v, want %v", res.Targets, want)
	}
}

// TestLookup_ServersInOrder: the first server that answers decides; one
// that fails (SERVFAIL, REFUSED) or says nothing passes the question on.
func TestLookup_ServersInOrder(t *testing.T) {
	for _, rcode := range []int{dns.RcodeServerFailure, dns.RcodeRefused} {
		t.Run(dns.RcodeToString[rcode], func(t *testing.T) {
			bad, good := dnstest.New(t), dnstest.New(t)
			bad.Rcode(rcode)
			setZone(good, 60, "127.0.0.2")
			r := newTestResolver(t, nil, Config{Servers: []string{bad.Addr(), good.Addr()}})
			r.lookup(t, udpQuery)
			if bad.Queries("_sip._udp.example.test", dns.TypeSRV) != 1 {
				t.Fatal("the first server was not asked first")
			}
		})
	}
	t.Run("FirstAnswers", func(t *testing.T) {
		first, second := dnstest.New(t), dnstest.New(t)
		setZone(first, 60, "127.0.0.2")
		r := newTestResolver(t, nil, Config{Servers: []string{first.Addr(), second.Addr()}})
		r.lookup(t, udpQuery)
		if n := second.Queries("_sip._udp.example.test", dns.TypeSRV); n != 0 {
			t.Fatalf("second server asked %d times while the first answered", n)
		}
	})
	t.Run("Unreachable", func(t *testing.T) {
		// A port nothing listens on: the ICMP error moves on at once.
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := pc.LocalAddr().String()
		pc.Close()
		good := dnstest.New(t)
		setZone(good, 60, "127.0.0.2")
		r := newTestResolver(t, nil, Config{Servers: []string{dead, good.Addr()}})
		r.lookup(t, udpQuery)
	})
}

// TestLookup_Errors: a name never resolved fails, and the error tells a
// name that does not exist from a server that does not answer.
func TestLookup_Errors(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(*dnstest.Server)
		timeout   time.Duration
		noTargets bool
		text      string
	}{
		{"NXDOMAIN", func(*dnstest.Server) {}, 0, true, "NXDOMAIN"},
		// The server never answers: a short timeout ends the wait.
		{"Timeout", func(s *dnstest.Server) { s.Blackhole(true) }, 50 * time.Millisecond, false, "timeout"},
		{"SERVFAIL", func(s *dnstest.Server) { s.Rcode(dns.RcodeServerFailure) }, 0, false, "SERVFAIL from 127.0.0.1:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := dnstest.New(t)
			tc.setup(srv)
			r := newTestResolver(t, srv, Config{Timeout: tc.timeout})
			res, err := r.Lookup(t.Context(), udpQuery)
			if err == nil || len(res.Targets) != 0 {
				t.Fatalf("Lookup = %v, %v; want an error", res.Targets, err)
			}
			if errors.Is(err, ErrNoTargets) != tc.noTargets || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %q: want ErrNoTargets %v and %q", err, tc.noTargets, tc.text)
			}
			if !errors.Is(res.Err, err) {
				t.Fatalf("Result.Err = %v, want the returned error", res.Err)
			}
			// The failure is cached: the next Lookup answers at once.
			before := srv.Queries("_sip._udp.example.test", dns.TypeSRV)
			if _, err2 := r.Lookup(t.Context(), udpQuery); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("second Lookup: %v, want %v", err2, err)
			}
			if srv.Queries("_sip._udp.example.test", dns.TypeSRV) != before {
				t.Fatal("a cached failure asked DNS again before its retry time")
			}
		})
	}
}

// TestLookup_InvalidQuery: a query that cannot be resolved is refused
// without DNS.
func TestLookup_InvalidQuery(t *testing.T) {
	srv := dnstest.New(t)
	r := newTestResolver(t, srv, Config{})
	for _, q := range []Query{
		{Host: "example.test", Transport: "SCTP"},
		{Host: ""},
		{Host: "example.test", Port: 70000},
		{Host: "bad name..test"},
	} {
		if res, err := r.Lookup(t.Context(), q); err == nil {
			t.Errorf("Lookup(%+v) = %v, want an error", q, res.Targets)
		}
	}
}

// TestLookup_CachedAsksNothing: a cached name is answered without DNS, even
// from a dead server; once expired it is still answered at once, and the
// refresh runs in the background.
func TestLookup_CachedAsksNothing(t *testing.T) {
	srv := dnstest.New(t)
	setZone(srv, 60, "127.0.0.2")
	// An exchange with the dead server would hang for an hour: a Lookup that
	// waited for DNS would never return.
	r := newTestResolver(t, srv, Config{Timeout: time.Hour})
	first := r.lookup(t, udpQuery)
	srv.Blackhole(true)
	asked := func() int {
		return srv.Queries("_sip._udp.example.test", dns.TypeSRV) + srv.Queries("sip1.example.test", dns.TypeA) +
			srv.Queries("sip1.example.test", dns.TypeAAAA)
	}
	before := asked()

	if got := r.lookup(t, udpQuery); !slices.Equal(got.Targets, first.Targets) {
		t.Fatalf("cached Lookup = %v, want %v", got.Targets, first.Targets)
	}
	if asked() != before {
		t.Fatal("a cached, unexpired name was asked about")
	}

	r.clock.Advance(time.Minute) // expired
	if _, ok := r.Cached(udpQuery); !ok {
		t.Fatal("Cached lost an expired result")
	}
	if e, _ := r.entryState(udpQuery); e.inflight != nil {
		t.Fatal("Cached started a refresh")
	}
	got, err := r.Lookup(t.Context(), udpQuery)
	if err != nil || !slices.Equal(got.Targets, first.Targets) {
		t.Fatalf("expired Lookup = %v, %v; want the stale %v at once", got.Targets, err, first.Targets)
	}
	testutil.Eventually(t, "the background refresh to ask DNS", func() bool { return asked() > before })
}

// TestLookup_Coalesces: concurrent first lookups of one query share one
// DNS exchange.
func TestLookup_Coalesces(t *testing.T) {
	const n = 8
	srv := dnstest.New(t)
	setZone(srv, 60, "127.0.0.2")
	release := srv.Hold()
	r := newTestResolver(t, srv, Config{})
	q := Query{Host: "example.test"} // NAPTR first

	results := make([]Result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = r.lookup(t, q) })
	}
	testutil.Eventually(t, "every lookup waiting", func() bool {
		e, ok := r.entryState(q)
		return ok && e.waiters == n
	})
	release()
	wg.Wait()
	if got := srv.Queries("example.test", dns.TypeNAPTR); got != 1 {
		t.Fatalf("%d NAPTR queries for %d concurrent lookups, want 1", got, n)
	}
	for _, res := range results[1:] {
		if !slices.Equal(res.Targets, results[0].Targets) || len(res.Targets) == 0 {
			t.Fatalf("results differ: %v vs %v", res.Targets, results[0].Targets)
		}
	}
}

// TestLookup_FirstLookupBoundedByContext: a lookup that must wait for DNS
// gives up when its context ends.
func TestLookup_FirstLookupBoundedByContext(t *testing.T) {
	srv := dnstest.New(t)
	srv.Blackhole(true)
	r := newTestResolver(t, srv, Config{Timeout: time.Hour})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := r.Lookup(ctx, udpQuery)
		errc <- err
	}()
	testutil.Eventually(t, "the query to reach the server", func() bool {
		return srv.Queries("_sip._udp.example.test", dns.TypeSRV) > 0
	})
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Lookup = %v, want context.Canceled", err)
	}
}

// TestRun_ServesStaleWithBackoff: a failed refresh keeps the last good
// targets, retries after MinTTL, doubling up to MaxTTL, warns once, and
// a success ends it.
func TestRun_ServesStaleWithBackoff(t *testing.T) {
	srv := dnstest.New(t)
	setZone(srv, 60, "127.0.0.2")
	r := newTestResolver(t, srv, Config{MinTTL: 10 * time.Second, MaxTTL: time.Minute})
	ch := r.Changed()
	r.Watch([]Query{udpQuery})
	next(t, ch)
	good, _ := r.Cached(udpQuery)

	srv.Rcode(dns.RcodeServerFailure)
	ch = r.Changed()
	r.clock.Advance(time.Minute)
	next(t, ch) // the error is a change
	backoffs := []time.Duration{10, 20, 40, 60, 60}
	for i, backoff := range backoffs {
		backoff *= time.Second
		want := r.clock.Now().Add(backoff)
		testutil.Eventually(t, fmt.Sprintf("retry %d scheduled after %v", i+1, backoff), func() bool {
			res, _ := r.Cached(udpQuery)
			return res.Expires.Equal(want)
		})
		res, err := r.Lookup(t.Context(), udpQuery)
		if err != nil || !slices.Equal(res.Targets, good.Targets) || !res.Updated.Equal(good.Updated) {
			t.Fatalf("stale Lookup = %v, %v (updated %v); want %v from %v", res.Targets, err, res.Updated, good.Targets, good.Updated)
		}
		if res.Err == nil || !strings.Contains(res.Err.Error(), "SERVFAIL") {
			t.Fatalf("Result.Err = %v, want the SERVFAIL", res.Err)
		}
		if i < len(backoffs)-1 {
			r.clock.Advance(backoff)
		}
	}
	if n := strings.Count(r.log.String(), "upstream resolution failed"); n != 1 {
		t.Fatalf("failure logged %d times, want once:\n%s", n, r.log)
	}

	srv.Rcode(dns.RcodeSuccess)
	setZone(srv, 60, "127.0.0.3")
	r.clock.Advance(time.Minute) // the last retry
	testutil.Eventually(t, "the recovery", func() bool {
		res, _ := r.Cached(udpQuery)
		return res.Err == nil && len(res.Targets) == 1 && res.Targets[0].Addr.Addr().String() == "127.0.0.3"
	})
	if !strings.Contains(r.log.String(), "upstream resolution recovered") {
		t.Fatalf("recovery not logged:\n%s", r.log)
	}
}

// TestRun_RefreshPicksUpChange: Run refreshes a watched query shortly
// before it expires; a changed zone is signalled by Changed and logged.
func TestRun_RefreshPicksUpChange(t *testing.T) {
	srv := dnstest.New(t)
	setZone(srv, 60, "127.0.0.2")
	r := newTestResolver(t, srv, Config{})
	ch := r.Changed()
	r.Watch([]Query{udpQuery})
	next(t, ch)

	setZone(srv, 60, "127.0.0.3")
	ch = r.Changed()
	r.clock.Advance(55 * time.Second) // before expiry, past the refresh point
	next(t, ch)
	res, _ := r.Cached(udpQuery)
	if want := []Target{target(UDP, "127.0.0.3:5060", "sip1.example.test", 10, 50)}; !slices.Equal(res.Targets, want) {
		t.Fatalf("Targets = %v, want %v", res.Targets, want)
	}
	if !res.Updated.Equal(r.clock.Now()) {
		t.Fatalf("Updated %v, want %v", res.Updated, r.clock.Now())
	}
	if !strings.Contains(r.log.String(), `msg="upstream targets changed" address="example.test;transport=UDP" targets="UDP 127.0.0.3:5060 (sip1.example.test)"`) {
		t.Fatalf("change not logged with its targets:\n%s", r.log)
	}
}

// TestChanged_WatchedOnly: a refresh that changes nothing, or changes an
// unwatched query, does not signal Changed.
func TestChanged_WatchedOnly(t *testing.T) {
	srv := dnstest.New(t)
	setZone(srv, 60, "127.0.0.2")
	srv.Set("other.test. 60 IN A 127.0.0.4")
	r := newTestResolver(t, srv, Config{})
	ch := r.Changed()
	r.Watch([]Query{udpQuery})
	next(t, ch)

	ch = r.Changed()
	r.lookup(t, Query{Host: "other.test", Port: 5060}) // resolved and reported before it returns
	before, _ := r.Cached(udpQuery)
	r.clock.Advance(55 * time.Second)
	testutil.Eventually(t, "the refresh", func() bool {
		res, _ := r.Cached(udpQuery)
		return res.Updated.After(before.Updated)
	})
	select {
	case <-ch:
		t.Fatal("Changed signalled without a change of a watched result")
	default:
	}
}

// TestWatch_ReplacesSet: a query dropped from the watched set is no longer
// refreshed; a new one is resolved at once.
func TestWatch_ReplacesSet(t *testing.T) {
	srv := dnstest.New(t)
	setZone(srv, 60, "127.0.0.2")
	srv.Set("other.test. 60 IN A 127.0.0.4")
	other := Query{Host: "other.test", Port: 5060}
	r := newTestResolver(t, srv, Config{})
	ch := r.Changed()
	r.Watch([]Query{udpQuery})
	next(t, ch)
	dropped, _ := r.Cached(udpQuery)

	ch = r.Changed()
	r.Watch([]Query{other, {Host: "192.0.2.1"}})
	next(t, ch)
	if _, ok := r.Cached(other); !ok {
		t.Fatal("the new query was not resolved")
	}
	r.clock.Advance(55 * time.Second)
	testutil.Eventually(t, "the watched query's refresh", func() bool {
		res, _ := r.Cached(other)
		return res.Updated.Equal(r.clock.Now())
	})
	// Both were due at once: one pass of Run would have started both.
	e, _ := r.entryState(udpQuery)
	if e.watched || e.inflight != nil || !e.res.Updated.Equal(dropped.Updated) {
		t.Fatalf("the dropped query is still refreshed (watched %v, in flight %v)", e.watched, e.inflight != nil)
	}
}

// TestRun_StopsEverything: when Run's context ends, resolutions in flight
// end too (even one waiting an hour for a dead server), and nothing new
// starts.
func TestRun_StopsEverything(t *testing.T) {
	srv := dnstest.New(t)
	srv.Blackhole(true)
	r := newTestResolver(t, srv, Config{Timeout: time.Hour})
	r.Watch([]Query{udpQuery})
	testutil.Eventually(t, "the query to reach the server", func() bool {
		return srv.Queries("_sip._udp.example.test", dns.TypeSRV) > 0
	})
	r.stop() // returns once every goroutine has ended
	if _, err := r.Lookup(t.Context(), Query{Host: "other.test"}); !errors.Is(err, errStopped) {
		t.Fatalf("Lookup after Run = %v, want errStopped", err)
	}
	if res, ok := r.Cached(udpQuery); ok {
		t.Fatalf("a cancelled resolution was stored: %+v", res)
	}
}

// TestNew_Config: invalid settings are refused; empty Servers read the
// nameservers of resolv.conf.
func TestNew_Config(t *testing.T) {
	for _, cfg := range []Config{
		{MinTTL: time.Minute, MaxTTL: time.Second},
		{MinTTL: -time.Second},
		{Timeout: -time.Second},
		{Servers: []string{"dns.example.test"}},
		{Servers: []string{"dns.example.test:53"}},
		{Servers: []string{"127.0.0.1:0"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte("search example.test\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := systemServers(path)
	if want := []string{"192.0.2.53:53", "[2001:db8::53]:53"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("systemServers = %v, %v; want %v", got, err, want)
	}
	if _, err := systemServers(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("a missing resolv.conf gave servers")
	}
	r, err := New(Config{Servers: []string{"192.0.2.53", "[2001:db8::53]", "127.0.0.1:5353"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"192.0.2.53:53", "[2001:db8::53]:53", "127.0.0.1:5353"}; !slices.Equal(r.x.servers, want) {
		t.Fatalf("servers %v, want %v", r.x.servers, want)
	}
}
