package resolve

import (
	"math/rand/v2"
	"testing"

	"github.com/authproxy/authproxy/internal/dnstest"
)

// BenchmarkLookupCached is the request path: a Lookup of a resolved name.
func BenchmarkLookupCached(b *testing.B) {
	srv := dnstest.New(b)
	setZone(srv, 3600, "127.0.0.2")
	r := newTestResolver(b, srv, Config{})
	r.lookup(b, udpQuery)
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Lookup(ctx, udpQuery); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOrder draws the order of two SRV priorities, three hosts with
// one or two addresses each.
func BenchmarkOrder(b *testing.B) {
	res := Result{Targets: []Target{
		target(UDP, "127.0.0.2:5060", "a.test", 10, 60),
		target(UDP, "[::2]:5060", "a.test", 10, 60),
		target(UDP, "127.0.0.3:5060", "b.test", 10, 30),
		target(UDP, "127.0.0.4:5060", "c.test", 10, 0),
		target(UDP, "127.0.0.5:5060", "d.test", 20, 50),
		target(UDP, "[::5]:5060", "d.test", 20, 50),
	}}
	rnd := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for b.Loop() {
		res.Order(rnd)
	}
}
