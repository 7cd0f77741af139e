package credentials_test

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"testing"

	"github.com/authproxy/authproxy/credentials"
)

// benchEntries returns n entries cycling through seven scope shapes (no
// catch-all, so a miss falls through to anonymous). Entry i has shape i%7.
func benchEntries(n int) []credentials.Entry {
	entries := make([]credentials.Entry, n)
	for i := range entries {
		host := fmt.Sprintf("h%d.example.net", i)
		realm := fmt.Sprintf("realm%d", i)
		user := fmt.Sprintf("user%d", i)
		e := entry(fmt.Sprintf("auth%d", i), "", "", "")
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

// lookupCases are the asks of the Lookup benchmarks, each answered by an
// entry of benchEntries (of at least 7 entries) or by nothing.
var lookupCases = []struct {
	name string
	ask  ask
	want string
}{
	{"hit-hostport-realm-user", ask{"h0.example.net:5060", "realm0", "user0"}, "auth0"},
	{"hit-host", ask{"h3.example.net:5070", "realm-x", "user-x"}, "auth3"},
	{"hit-host-uppercase", ask{"H3.EXAMPLE.NET:5070", "realm-x", "user-x"}, "auth3"},
	{"hit-realm", ask{"other.example.net:5060", "realm5", "user-x"}, "auth5"},
	{"hit-user", ask{"other.example.net:5060", "realm-x", "user6"}, "auth6"},
	{"miss-anonymous", ask{"other.example.net:5060", "realm-x", "user-x"}, "anonymous"},
}

func BenchmarkLookup(b *testing.B) {
	cases := lookupCases
	for _, n := range []int{10, 100_000} {
		s, err := credentials.NewStore(benchEntries(n))
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range cases {
			b.Run(fmt.Sprintf("entries=%d/%s", n, c.name), func(b *testing.B) {
				if got := s.Lookup(c.ask.server, c.ask.realm, c.ask.user); got.Username != c.want {
					b.Fatalf("Lookup(%v) = %v, want %s", c.ask, got, c.want)
				}
				b.ReportAllocs()
				for b.Loop() {
					s.Lookup(c.ask.server, c.ask.realm, c.ask.user)
				}
			})
		}
	}
}

func BenchmarkNewStore100k(b *testing.B) {
	entries := benchEntries(100_000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := credentials.NewStore(entries); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	s := mustStore(t, benchEntries(1000)...)
	asks := map[string]ask{
		"hit on the first rung":         {"h0.example.net:5060", "realm0", "user0"},
		"hit on a host-only rung":       {"h3.example.net:5070", "r", "u"},
		"hit on an ipv6 literal":        {"[::1]:5060", "r", "u"},
		"miss to anonymous":             {"other.example.net:5060", "r", "u"},
		"malformed server to anonymous": {"other:port", "r", "u"},
		"host without port":             {"h3.example.net", "r", "u"},
	}
	for name, a := range asks {
		t.Run(name, func(t *testing.T) {
			if n := testing.AllocsPerRun(100, func() { s.Lookup(a.server, a.realm, a.user) }); n != 0 {
				t.Errorf("Lookup(%v) allocates %v times, want 0", a, n)
			}
		})
	}
}

// BenchmarkScaleStore measures stores of 1k and 1M credentials
// (benchEntries, each with a password of its own;
// AUTHPROXY_BENCH_SCALE=0.01 divides the sizes by 100). Its "build"
// builds the store with NewStore (ns/op is the build time) and reports
// heapB/entry and heapMB, the live heap the store holds once the entries
// it was built from are dropped (its strings and secrets included); its
// "lookup-*" run Lookup for each of lookupCases. Run it with
//
//	go test -run '^$' -bench ScaleStore -benchtime 3s ./credentials
func BenchmarkScaleStore(b *testing.B) {
	f := 1.0
	if v := os.Getenv("AUTHPROXY_BENCH_SCALE"); v != "" {
		var err error
		if f, err = strconv.ParseFloat(v, 64); err != nil || f <= 0 {
			b.Fatalf("AUTHPROXY_BENCH_SCALE=%q: want a positive number", v)
		}
	}
	for _, n := range []int{1000, 1_000_000} {
		n = max(7, int(math.Round(float64(n)*f)))
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) { benchScaleStore(b, n) })
	}
}

func benchScaleStore(b *testing.B, n int) {
	before := liveHeap()
	s, err := credentials.NewStore(scaleEntries(n))
	if err != nil {
		b.Fatal(err)
	}
	after := liveHeap() // the store and the strings it shares with its entries
	b.Run("build", func(b *testing.B) {
		entries := scaleEntries(n)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := credentials.NewStore(entries); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric((float64(after)-float64(before))/float64(n), "heapB/entry")
		b.ReportMetric((float64(after)-float64(before))/(1<<20), "heapMB")
	})
	for _, c := range lookupCases {
		b.Run("lookup-"+c.name, func(b *testing.B) {
			if got := s.Lookup(c.ask.server, c.ask.realm, c.ask.user); got.Username != c.want {
				b.Fatalf("Lookup(%v) = %v, want %s", c.ask, got, c.want)
			}
			b.ReportAllocs()
			for b.Loop() {
				s.Lookup(c.ask.server, c.ask.realm, c.ask.user)
			}
		})
	}
}

// scaleEntries is benchEntries(n) with a password of its own per entry,
// as a real configuration has.
func scaleEntries(n int) []credentials.Entry {
	entries := benchEntries(n)
	for i := range entries {
		entries[i].Password = credentials.NewSecret("pw-" + strconv.Itoa(i))
	}
	return entries
}

// liveHeap is the heap the program holds after two collections.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
