package bench

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestDNSDownLatency measures whether a DNS server that never answers
// slows requests to an upstream addressed by IP: authproxy has that
// upstream (Kamailio at 127.0.0.2) and a second one addressed by a domain
// (NAPTR, SRV, A/AAAA; RFC 3263) that nothing sends to. A Go client sends
// MESSAGEs at AUTHPROXY_BENCH_DNSDOWN a second for 20 s (as TestLatency)
// to the IP upstream, once with [dns] servers = a healthy dnsmasq serving
// the domain (records with a 1 s TTL, refreshed in the background every
// second), once with [dns] servers = a UDP socket that reads every query
// and never answers, and reports the response-time percentiles and
// authproxy's CPU per request of both, after a run straight to the
// upstream (the client with its own credentials) that shows how noisy the
// machine is.
//
//	AUTHPROXY_BENCH_DNSDOWN=1000 AUTHPROXY_BENCH_DNSDOWN_RUNS=4 go test ./bench -run TestDNSDownLatency -v
//
// _RUNS=N runs the two N times, alternating which goes first, and
// reports the median p99 of each.
func TestDNSDownLatency(t *testing.T) {
	rate, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_DNSDOWN"))
	if err != nil || rate <= 0 {
		t.Skip("set AUTHPROXY_BENCH_DNSDOWN=<requests a second> to measure latency with the DNS server down")
	}
	peers.Require(t, "kamailio", "dnsmasq")
	const seconds, warmup = 20, 2
	runs := 1
	if n, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_DNSDOWN_RUNS")); err == nil && n > 1 {
		runs = n
	}
	upstream := startUpstream(t, "127.0.0.4:9")
	healthy := peers.StartDnsmasq(t, peers.DnsmasqConfig{
		Host:  "127.0.0.11",
		Hosts: []peers.DnsmasqHost{{Name: "t1.carrier.test", IPv4: "127.0.0.3"}},
		SRV:   []peers.DnsmasqSRV{{Name: "_sip._udp.carrier.test", Target: "t1.carrier.test", Port: 5060, Priority: 10, Weight: 10}},
		NAPTR: []peers.DnsmasqNAPTR{{Name: "carrier.test", Order: 10, Preference: 10, Flags: "s", Service: "SIP+D2U", Replacement: "_sip._udp.carrier.test"}},
		TTL:   time.Second,
	}).Addr()
	blackhole, queries := startBlackhole(t, "127.0.0.12")
	bin := authproxyBinary(t)

	var p99s [2][]time.Duration
	var direct []time.Duration
	for run := 1; run <= runs; run++ {
		// Alternate which goes first: a run starts while Kamailio still
		// holds the previous run's transactions (tm's wait timer), which
		// would otherwise always weigh on the same one.
		d := runLatency(t, upstream, latencyClient{mode: ownNonce}, rate, seconds, warmup, "client → upstream")
		direct = append(direct, d.p(0.99))
		t.Logf("run %d, straight to the upstream (the machine's own noise): p50 %v, p90 %v, p99 %v, p99.9 %v",
			run, d.p(0.5), d.p(0.9), d.p(0.99), d.p(0.999))
		order := []int{0, 1}
		if run%2 == 0 {
			order = []int{1, 0}
		}
		for _, i := range order {
			dnsServer := [2]string{healthy, blackhole}[i]
			name := [2]string{"DNS answering", "DNS never answering"}[i]
			extra := fmt.Sprintf(`
[dns]
servers = [%q]
min_ttl = "1s"
max_ttl = "1s"

[[upstream]]
name = "named"
address = "carrier.test"
transport = "udp"
domains = ["carrier.example"]
`, dnsServer)
			q0 := queries()
			addr, proc := startAuthproxyAdmin(t, bin, upstream, "all", "", extra)
			cpu0, _ := readStat(proc.Pid())
			r := runLatency(t, addr, latencyClient{mode: bare}, rate, seconds, warmup, "client → authproxy → IP upstream, "+name)
			cpu1, _ := readStat(proc.Pid())
			q := queries() - q0
			_ = proc.Stop()
			p99s[i] = append(p99s[i], r.p(0.99))
			cpu := (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / time.Duration(rate*seconds)
			t.Logf("run %d, %s: %d requests, %d lost, p50 %v, p90 %v, p99 %v, p99.9 %v; authproxy's CPU per request %v (blackhole received %d queries)",
				run, name, r.n, r.lost, r.p(0.5), r.p(0.9), r.p(0.99), r.p(0.999), cpu.Round(time.Microsecond), q)
			if r.lost*1000 > r.n {
				t.Errorf("%s: more than 0.1%% lost: %d of %d", name, r.lost, r.n)
			}
			if i == 1 && q == 0 {
				t.Errorf("the blackholed DNS server received no query: the run proves nothing")
			}
		}
	}
	t.Logf("\n%s; %d MESSAGE/s for %d s (first %d s not counted), UDP on loopback, to an upstream addressed by IP\n\n"+
		"| path | p99, %d runs | median |\n|---|---|---|\n| straight to the upstream, client with credentials | %v | %v |\n"+
		"| through authproxy, [dns] servers = dnsmasq answering | %v | %v |\n| through authproxy, [dns] servers = a socket that never answers | %v | %v |\n",
		machine(), rate, seconds, warmup, runs, direct, median(direct), p99s[0], median(p99s[0]), p99s[1], median(p99s[1]))
}

// startBlackhole listens for UDP on host and reads every datagram without
// ever answering: a DNS server that is down without refusing (no ICMP
// port unreachable). queries counts what it received.
func startBlackhole(t *testing.T, host string) (addr string, queries func() int) {
	t.Helper()
	conn, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	n := make(chan int, 1)
	n <- 0
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, _, err := conn.ReadFrom(buf); err != nil {
				return
			}
			n <- <-n + 1
		}
	}()
	return conn.LocalAddr().String(), func() int { v := <-n; n <- v; return v }
}
