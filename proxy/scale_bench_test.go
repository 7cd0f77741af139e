package proxy

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/credentials"
)

// State-scale benchmarks: how a request's cost and the proxy's heap grow
// with the state it holds (established dialogs, registered bindings,
// credentials, upstreams). Every request goes through the real handler of
// a proxy with no sockets (scale_harness_test.go), parsed from bytes; the
// upstreams challenge every out-of-dialog request (preemptive off), so a
// MESSAGE, an INVITE and a REGISTER each cost two upstream transactions.
//
// Run at the sizes of bench/RESULTS.md ("State scale"):
//
//	go test -run '^$' -bench Scale -benchtime 3s -timeout 90m ./proxy
//
// and with a hundredth of the state, as a check (a few minutes still: each
// measurement first waits out the transaction timers, see settle):
//
//	AUTHPROXY_BENCH_SCALE=0.01 go test -run '^$' -bench Scale -benchtime 200x ./proxy
//
// AUTHPROXY_BENCH_HEAPPROFILE=dir also writes heap profiles of each
// table, full, before and after it settled.
//
// Custom metrics:
//   - heapB/dialog, heapB/binding: live heap (after GC) grown by filling
//     the table, per item, once what only lasts a transaction's timers
//     (5 s under TuneSIPStack) has ended (scaleProxy.settle).
//   - freshB/dialog, freshB/binding: the same right after the fill, those
//     timers still running (sipgo keeps a challenged request's client
//     transaction for Timer D, and an answered INVITE's for Timer M).
//   - heapMB: the settled heap the whole table adds.
//   - fill-ns/dialog, fill-ns/binding: the fill's wall time per item
//     (INVITE challenged and answered 200, then ACK; REGISTER challenged
//     and answered 200).
//   - liveB/op: live heap the requests leave behind once settled, per
//     request: state that outlives their transactions (a challenged
//     out-of-dialog request's CSeq offset, cseq.go), and the capacity
//     their transient entries left in maps (Go maps do not shrink).
//   - gc-ns/op: the garbage collector's CPU time per request, amortised
//     over the collections during the run (it reads 0 when the run
//     allocated too little to start one: give it time, -benchtime 3s).

// BenchmarkScaleDialogs fills the dialog table with 1k, 10k and 100k
// calls (INVITE, 407, INVITE with credentials, 200, ACK), each from a
// client address of its own, and measures with them up: an out-of-dialog
// challenged MESSAGE (message), an INFO in one of the dialogs (info), a
// whole call set up and hung up (call: INVITE challenged, ACK, BYE), and
// the periodic sweep of each of the proxy's tables (sweep-*).
func BenchmarkScaleDialogs(b *testing.B) {
	for _, n := range []int{scaled(b, 1000, 1), scaled(b, 10_000, 1), scaled(b, 100_000, 1)} {
		b.Run(fmt.Sprintf("dialogs=%d", n), func(b *testing.B) { benchDialogs(b, n) })
	}
}

func benchDialogs(b *testing.B, n int) {
	sp := newScaleProxy(b, scaleConfig(2, scaleStore(b)))
	before := liveHeap()
	start := time.Now()
	sp.fillDialogs(b, n)
	fill := time.Since(start)
	fresh := liveHeap()
	heapProfile(b, fmt.Sprintf("dialogs-%d-fresh", n))
	sp.settle()
	after := liveHeap()
	if got := sp.p.DialogCount(); got != n {
		b.Fatalf("%d dialogs after %d calls", got, n)
	}
	heapProfile(b, fmt.Sprintf("dialogs-%d", n))
	state := func(b *testing.B) {
		b.ReportMetric(perItem(before, after, n), "heapB/dialog")
		b.ReportMetric(perItem(before, fresh, n), "freshB/dialog")
		b.ReportMetric((float64(after)-float64(before))/(1<<20), "heapMB")
		b.ReportMetric(float64(fill.Nanoseconds())/float64(n), "fill-ns/dialog")
	}
	b.Run("message", func(b *testing.B) {
		sp.measure(b, func(k int) {
			sp.send(b, scaleMessage("dm"+strconv.Itoa(k), scatter(k, n), 0), scaleClientAddr(scatter(k, n)))
		})
		state(b)
	})
	b.Run("info", func(b *testing.B) {
		sp.measure(b, func(k int) {
			j := scatter(k, n)
			sp.send(b, scaleInDialog("INFO", strconv.Itoa(j), j, 0, 2, "di"+strconv.Itoa(k)), scaleClientAddr(j))
		})
		state(b)
	})
	b.Run("call", func(b *testing.B) {
		sp.measure(b, func(k int) {
			id, i := "op"+strconv.Itoa(k), scatter(k, n)
			sp.send(b, scaleInvite(id, i, 0), scaleClientAddr(i))
			sp.send(b, scaleInDialog("ACK", id, i, 0, 1, "a"+id), scaleClientAddr(i))
			sp.send(b, scaleInDialog("BYE", id, i, 0, 2, "b"+id), scaleClientAddr(i))
		})
		if got := sp.p.DialogCount(); got != n {
			b.Fatalf("%d dialogs after the calls hung up, want %d", got, n)
		}
		state(b)
	})
	sp.benchSweep(b, state)
}

// benchSweep measures, table by table, the sweeps the running proxy makes
// every 30 s (Proxy.Run): each holds its table's lock while it walks the
// whole table, so ns/op is about how long requests needing that table may
// wait for it. The metric entries is the table's size: the state filled
// in, and what the requests measured before left (a challenged
// out-of-dialog request's CSeq offset stays 5 minutes).
func (sp *scaleProxy) benchSweep(b *testing.B, state func(*testing.B)) {
	p := sp.p
	count := func(mu *sync.Mutex, n func() int) func() int {
		return func() int {
			mu.Lock()
			defer mu.Unlock()
			return n()
		}
	}
	for _, t := range []struct {
		name  string
		sweep func(time.Time)
		size  func() int
	}{
		{"cseq", p.cseq.sweep, count(&p.cseq.mu, func() int { return len(p.cseq.entries) })},
		{"dialogs", func(now time.Time) { p.dialogs.sweep(now, p.cfg.DialogIdleTimeout) }, p.dialogs.len},
		{"bindings", p.bindings.sweep, count(&p.bindings.mu, func() int { return len(p.bindings.byKey) })},
		{"pins", p.pins.sweep, p.pins.len},
		{"limiter", p.limiter.sweep, p.limiter.size},
		{"rest", func(now time.Time) {
			p.nonces.sweep(now)
			p.preempt.sweep(now)
			p.finals.sweep(now)
			p.accepted.sweep(now)
		}, func() int { return 0 }},
	} {
		b.Run("sweep-"+t.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				t.sweep(time.Now())
			}
			b.ReportMetric(float64(t.size()), "entries")
			state(b)
		})
	}
}

// fillDialogs sets up n calls through upstream pbx-0, call i from
// scaleClientAddr(i), and sweeps the limiter's idle sources every 10,000
// calls as the proxy's sweeper would (it holds 100,000 sources at most).
func (sp *scaleProxy) fillDialogs(b testing.TB, n int) {
	acks := sp.double.acks.Load()
	for i := range n {
		id := strconv.Itoa(i)
		sp.send(b, scaleInvite(id, i, 0), scaleClientAddr(i))
		sp.send(b, scaleInDialog("ACK", id, i, 0, 1, "a"+id), scaleClientAddr(i))
		if i%10_000 == 9999 {
			sp.p.limiter.sweep(time.Now())
		}
	}
	if got := sp.double.acks.Load() - acks; got != int64(n) {
		b.Fatalf("%d ACKs reached the upstream for %d calls", got, n)
	}
}

// measure runs op(0), op(1), ... for the benchmark's iterations, then
// reports the CPU time the garbage collector spent meanwhile (gc-ns/op)
// and the live heap they left behind once settled (liveB/op).
func (sp *scaleProxy) measure(b *testing.B, op func(k int)) {
	b.ReportAllocs()
	sp.settle()
	before := liveHeap()
	gc := gcCPU()
	k := 0
	for b.Loop() {
		op(k)
		k++
	}
	b.ReportMetric(float64((gcCPU()-gc).Nanoseconds())/float64(k), "gc-ns/op")
	sp.settle()
	b.ReportMetric(perItem(before, liveHeap(), k), "liveB/op")
}

// BenchmarkScaleBindings registers 1k and 100k contacts (the binding
// table's bound, maxBindings), each AOR u<i> from a client address of
// its own (REGISTER, 407, REGISTER with credentials, 200), and measures
// with them registered: a MESSAGE the upstream sends to one of the
// contacts (inbound), a client's refresh of its registration (refresh),
// a client removing all its bindings (REGISTER with "Contact: *" and
// Expires: 0, RFC 3261 §10.2.2) and registering again (unregister-all),
// and the periodic sweep of each of the proxy's tables (sweep-*).
func BenchmarkScaleBindings(b *testing.B) {
	for _, n := range []int{scaled(b, 1000, 1), scaled(b, maxBindings, 1)} {
		b.Run(fmt.Sprintf("bindings=%d", n), func(b *testing.B) { benchBindings(b, n) })
	}
}

func benchBindings(b *testing.B, n int) {
	sp := newScaleProxy(b, scaleConfig(2, scaleStore(b)))
	before := liveHeap()
	start := time.Now()
	sp.fillBindings(b, n)
	fill := time.Since(start)
	fresh := liveHeap()
	heapProfile(b, fmt.Sprintf("bindings-%d-fresh", n))
	sp.settle()
	after := liveHeap()
	if got := len(sp.p.Bindings()); got != n {
		b.Fatalf("%d bindings after %d registrations", got, n)
	}
	heapProfile(b, fmt.Sprintf("bindings-%d", n))
	state := func(b *testing.B) {
		b.ReportMetric(perItem(before, after, n), "heapB/binding")
		b.ReportMetric(perItem(before, fresh, n), "freshB/binding")
		b.ReportMetric((float64(after)-float64(before))/(1<<20), "heapMB")
		b.ReportMetric(float64(fill.Nanoseconds())/float64(n), "fill-ns/binding")
	}
	b.Run("inbound", func(b *testing.B) {
		sp.measure(b, func(k int) {
			sp.send(b, scaleInbound(strconv.Itoa(k), scatter(k, n)), scaleUpstreamAddr(0))
		})
		state(b)
	})
	b.Run("refresh", func(b *testing.B) {
		sp.measure(b, func(k int) {
			i := scatter(k, n)
			sp.send(b, scaleRegister("rf"+strconv.Itoa(k), i, 2+k), scaleClientAddr(i))
		})
		if got := len(sp.p.Bindings()); got != n {
			b.Fatalf("%d bindings after the refreshes, want %d", got, n)
		}
		state(b)
	})
	b.Run("unregister-all", func(b *testing.B) {
		sp.measure(b, func(k int) {
			i := scatter(k, n)
			sp.send(b, scaleUnregisterAll("ua"+strconv.Itoa(k), i, 2+k), scaleClientAddr(i))
			sp.send(b, scaleRegister("ra"+strconv.Itoa(k), i, 2+k), scaleClientAddr(i))
		})
		if got := len(sp.p.Bindings()); got != n {
			b.Fatalf("%d bindings after unregistering and registering again, want %d", got, n)
		}
		state(b)
	})
	sp.benchSweep(b, state)
}

// fillBindings registers u0..u(n-1), u<i> from scaleClientAddr(i),
// sweeping the limiter as fillDialogs does.
func (sp *scaleProxy) fillBindings(b testing.TB, n int) {
	for i := range n {
		sp.send(b, scaleRegister("f"+strconv.Itoa(i), i, 1), scaleClientAddr(i))
		if i%10_000 == 9999 {
			sp.p.limiter.sweep(time.Now())
		}
	}
}

// BenchmarkScaleCredentials measures a challenged MESSAGE through the
// handler when the store holds 1 credential and when it holds 1M
// (scaleEntries: the answering one among others of every scope shape).
// The store's own heap per entry, build time and Lookup are measured by
// credentials.BenchmarkScaleStore.
func BenchmarkScaleCredentials(b *testing.B) {
	for _, n := range []int{1, scaled(b, 1_000_000, 2)} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			store, err := credentials.NewStore(scaleEntries(n))
			if err != nil {
				b.Fatal(err)
			}
			sp := newScaleProxy(b, scaleConfig(2, store))
			b.Run("message", func(b *testing.B) {
				sp.measure(b, func(k int) {
					sp.send(b, scaleMessage("cm"+strconv.Itoa(k), k%1000, 0), scaleClientAddr(k%1000))
				})
			})
		})
	}
}

// scaleEntries is n credentials: the one that answers pbx-0 (scoped to
// its address), then n-1 that answer nothing the benchmarks send, cycling
// through the scope shapes of credentials' benchEntries.
func scaleEntries(n int) []credentials.Entry {
	entries := make([]credentials.Entry, n)
	entries[0] = credentials.Entry{Username: "scale", Password: credentials.NewSecret("pw"), Server: scaleUpstreamAddr(0)}
	for i := 1; i < n; i++ {
		s := strconv.Itoa(i)
		e := credentials.Entry{Username: "auth" + s, Password: credentials.NewSecret("pw" + s)}
		host, realm, user := "h"+s+".example.net", "realm"+s, "user"+s
		switch i % 7 {
		case 0:
			e.Server, e.Realm, e.User = host+":5060", realm, user
		case 1:
			e.Server = host + ":5060"
		case 2:
			e.Server, e.Realm = host, realm
		case 3:
			e.Server = host
		case 4:
			e.Realm, e.User = realm, user
		case 5:
			e.Realm = realm
		case 6:
			e.User = user
		}
		entries[i] = e
	}
	return entries
}

// BenchmarkScaleUpstreams configures 2 and 500 upstreams, each serving
// one domain, and measures a challenged MESSAGE routed by domain to the
// first upstream and to the last (message-*), the routing decision alone
// (route-*: routing.matchRoute), and building the configuration: New
// (validation, routing, source index) and Reload of the same
// configuration on a proxy that is not running.
func BenchmarkScaleUpstreams(b *testing.B) {
	for _, n := range []int{2, scaled(b, 500, 3)} {
		b.Run(fmt.Sprintf("upstreams=%d", n), func(b *testing.B) {
			cfg := scaleConfig(n, scaleStore(b))
			sp := newScaleProxy(b, cfg)
			for _, c := range []struct {
				name string
				up   int
			}{{"first", 0}, {"last", n - 1}} {
				b.Run("message-"+c.name, func(b *testing.B) {
					sp.measure(b, func(k int) {
						sp.send(b, scaleMessage("um"+strconv.Itoa(k), k%1000, c.up), scaleClientAddr(k%1000))
					})
				})
				b.Run("route-"+c.name, func(b *testing.B) {
					u := sip.Uri{Scheme: "sip", User: "1002", Host: "pbx" + strconv.Itoa(c.up) + ".example.com"}
					want := "pbx-" + strconv.Itoa(c.up)
					rt := sp.p.rt.Load()
					b.ReportAllocs()
					for b.Loop() {
						if up, _ := rt.matchRoute(u); up == nil || up.Name != want {
							b.Fatalf("%s routed to %v", u.Host, up)
						}
					}
				})
			}
			b.Run("new", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := New(cfg); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("reload", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := sp.p.Reload(cfg); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
