package bench

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestLatency measures, with microsecond clocks, what authproxy adds to a
// request's response time on each path of AUTHPROXY_BENCH_LATENCY_PATHS:
// a Go client sends MESSAGEs at the path's rate (AUTHPROXY_BENCH_LATENCY a
// second unless the path names its own, e.g. half the maximum rate
// TestBench found for it) for 20 s, once straight to the upstream (the
// path's baseline) and once through authproxy, and reports the
// response-time percentiles of both and their difference. SIPp's own
// timer ticks in milliseconds, too coarse for this.
//
//	AUTHPROXY_BENCH_LATENCY=3500 go test ./bench -run TestLatency -v
//	AUTHPROXY_BENCH_LATENCY=3500 AUTHPROXY_BENCH_LATENCY_PATHS=all,off:1750,tcp go test ./bench -run TestLatency -v -timeout 30m
//
// AUTHPROXY_BENCH_LATENCY=half, with TestBench run first in the same
// command, measures each path at half the request maximum TestBench found
// on it (the package doc has the command).
//
// The paths (comma-separated, each key optionally ":rate"; default all):
//   - all: authproxy with preemptive all, the client over UDP without
//     credentials. Baseline: the client with its own valid
//     Proxy-Authorization, one round trip, as preemptive answers make it.
//   - off: authproxy with preemptive off, every request challenged.
//     Baseline: the client answering every 407 itself, two round trips
//     (request, 407, request with credentials, 200), as authproxy does.
//   - tcp, off-tcp: all and off with the client on one TCP connection to
//     authproxy (the upstream leg stays UDP). Baseline: all's and off's,
//     over UDP (the upstream listens on UDP only), so what the client's
//     TCP leg costs counts as added by authproxy.
//
// The summary after the runs gives each path's p99 added against the
// goal (≤ 2 ms at half authproxy's own maximum on that path): a
// figure to read, not an assertion.
//
// AUTHPROXY_BENCH_OUTPUT=1 logs authproxy's output after the table;
// AUTHPROXY_BENCH_PROFILE_DIR=dir saves its heap, CPU profile and an
// execution trace from the middle of the first path's first run;
// AUTHPROXY_BENCH_FLOOR=1 adds, with the all path, a run through udprelay
// (a Go process that passes datagrams on and does nothing else) with the
// client's own credentials: what one Go hop costs on this machine before
// any SIP work (AUTHPROXY_BENCH_FLOOR_FLAGS, e.g. "-parse -handoff", adds
// some of authproxy's; see udprelay's doc); AUTHPROXY_BENCH_AUTHPROXY_ENV
// sets authproxy's runtime environment (e.g. "GOMAXPROCS=1");
// AUTHPROXY_BENCH_LATENCY_RUNS=N repeats the measurement N times and
// reports the median p99 added.
func TestLatency(t *testing.T) {
	v := os.Getenv("AUTHPROXY_BENCH_LATENCY")
	rate, err := strconv.Atoi(v)
	if v != "half" && (err != nil || rate <= 0) {
		t.Skip("set AUTHPROXY_BENCH_LATENCY=<requests a second> (or half, after TestBench) to measure authproxy's added latency")
	}
	peers.Require(t, "kamailio")
	const seconds, warmup = 20, 2
	paths := latencyPaths(t, rate)
	if len(paths) == 0 {
		t.Skip("no path to measure: TestBench found no maximum for them")
	}
	upstream := startUpstream(t, "127.0.0.4:9")
	bin := authproxyBinary(t)
	proxies := map[string]*latencyProxy{}
	for i, lp := range paths {
		if proxies[lp.preemptive] == nil {
			admin := ""
			if i == 0 && os.Getenv("AUTHPROXY_BENCH_PROFILE_DIR") != "" {
				admin = fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
			}
			addr, proc := startAuthproxyAdmin(t, bin, upstream, lp.preemptive, admin)
			defer proc.Stop()
			proxies[lp.preemptive] = &latencyProxy{addr: addr, admin: admin, proc: proc}
		}
	}
	relay := ""
	if os.Getenv("AUTHPROXY_BENCH_FLOOR") != "" {
		relay = startUDPRelay(t, upstream)
	}
	runs := 1
	if n, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_LATENCY_RUNS")); err == nil && n > 1 {
		runs = n
	}
	added := make([][]time.Duration, len(paths))
	var floorP99 []time.Duration
	for run := 1; run <= runs; run++ {
		for i, lp := range paths {
			r := latencyRound(t, lp, seconds, warmup, upstream, relay, proxies[lp.preemptive], run == 1 && i == 0)
			added[i] = append(added[i], r.through)
			if r.floor != 0 {
				floorP99 = append(floorP99, r.floor)
			}
		}
	}
	var b strings.Builder
	b.WriteString("\np99 added by authproxy (goal: ≤ 2 ms at half authproxy's own maximum on every path; a figure of this run, not a test verdict):\n\n")
	b.WriteString("| path | rate | p99 added, each run | median | ≤ 2 ms |\n|---|---|---|---|---|\n")
	for i, lp := range paths {
		r := fmt.Sprintf("%d/s", lp.rate)
		if lp.of != "" {
			r += " (half of " + lp.of + ")"
		}
		m := median(added[i])
		verdict := "pass"
		if m > 2*time.Millisecond {
			verdict = "fail"
		}
		fmt.Fprintf(&b, "| %s | %s | %v | %v | %s |\n", lp.name, r, added[i], m, verdict)
	}
	if len(floorP99) > 0 {
		fmt.Fprintf(&b, "\np99 added by udprelay over %d runs: %v (median %v)\n", len(floorP99), floorP99, median(floorP99))
	}
	t.Log(b.String())
}

// latencyPath is one way through authproxy TestLatency measures, with its
// baseline straight to the upstream.
type latencyPath struct {
	key, name  string
	preemptive string // authproxy's setting
	client     latencyClient
	baseline   latencyClient // straight to the upstream, over UDP
	baseName   string
	benchPath  string // TestBench's path of the same way
	rate       int
	of         string // the maximum rate is half of, with AUTHPROXY_BENCH_LATENCY=half
}

// latencyProxy is a running authproxy (UDP and TCP on one address).
type latencyProxy struct {
	addr, admin string
	proc        *peers.Process
}

// latencyPaths returns the paths AUTHPROXY_BENCH_LATENCY_PATHS names
// ("key" or "key:rate"; default all), at rate unless they name theirs;
// rate 0 (AUTHPROXY_BENCH_LATENCY=half) is half the request maximum
// TestBench found on the path in this process. A path whose maximum is
// under TestBench's first step is left out.
func latencyPaths(t *testing.T, rate int) []latencyPath {
	t.Helper()
	oneTrip := latencyClient{mode: ownNonce}
	twoTrips := latencyClient{mode: answerEach}
	const oneName = "client → upstream (client sends its own credentials: one round trip)"
	const twoName = "client → upstream (client answers every 407 itself: two round trips)"
	known := map[string]latencyPath{
		"all":     {benchPath: "all", name: "authproxy, preemptive all, UDP", preemptive: "all", client: latencyClient{mode: bare}, baseline: oneTrip, baseName: oneName},
		"off":     {benchPath: "off", name: "authproxy, preemptive off, UDP", preemptive: "off", client: latencyClient{mode: bare}, baseline: twoTrips, baseName: twoName},
		"tcp":     {benchPath: "all-tcp", name: "authproxy, preemptive all, client over TCP", preemptive: "all", client: latencyClient{tcp: true, mode: bare}, baseline: oneTrip, baseName: oneName},
		"off-tcp": {benchPath: "off-tcp", name: "authproxy, preemptive off, client over TCP", preemptive: "off", client: latencyClient{tcp: true, mode: bare}, baseline: twoTrips, baseName: twoName},
	}
	spec := cmp.Or(os.Getenv("AUTHPROXY_BENCH_LATENCY_PATHS"), "all")
	var out []latencyPath
	for _, f := range strings.Split(spec, ",") {
		key, r, hasRate := strings.Cut(strings.TrimSpace(f), ":")
		lp, ok := known[key]
		if !ok {
			t.Fatalf("AUTHPROXY_BENCH_LATENCY_PATHS=%q: unknown path %q (all, off, tcp, off-tcp)", spec, key)
		}
		lp.key, lp.rate = key, rate
		if hasRate {
			n, err := strconv.Atoi(r)
			if err != nil || n <= 0 {
				t.Fatalf("AUTHPROXY_BENCH_LATENCY_PATHS=%q: %q: want path:rate", spec, f)
			}
			lp.rate = n
		}
		if lp.rate == 0 {
			m, ok := benchMaxima[lp.benchPath]
			if !ok {
				t.Fatalf("AUTHPROXY_BENCH_LATENCY=half: TestBench did not run path %s in this command (AUTHPROXY_BENCH_PATHS)", lp.benchPath)
			}
			if m.rate == 0 {
				t.Logf("path %s left out: its maximum is under TestBench's first step", key)
				continue
			}
			lp.rate, lp.of = m.rate/2, fmt.Sprintf("%d/s", m.rate)
			if m.top {
				lp.of = "≥ " + lp.of
			}
		}
		out = append(out, lp)
	}
	return out
}

// median returns the middle value (the upper one of two) of ds.
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// roundResult is what one latencyRound returns: the p99 authproxy added
// over the path's baseline, and udprelay over the one-round-trip baseline
// (0 without a relay run).
type roundResult struct {
	through, floor time.Duration
}

// latencyRound measures path lp once straight to the upstream (its
// baseline), through udprelay when relay is set and the baseline is one
// round trip, and through authproxy, and logs the table. profile saves
// authproxy's profiles from this round when AUTHPROXY_BENCH_PROFILE_DIR is
// set.
func latencyRound(t *testing.T, lp latencyPath, seconds, warmup int, upstream, relay string, ap *latencyProxy, profile bool) roundResult {
	t.Helper()
	rate := lp.rate
	kernel0 := kdamondCPU()
	direct := runLatency(t, upstream, lp.baseline, rate, seconds, warmup, lp.baseName)
	var floor *latencyResult
	if relay != "" && lp.key == "all" {
		r := runLatency(t, relay, lp.baseline, rate, seconds, warmup, "client → udprelay → upstream (client sends its own credentials)")
		floor = &r
	}
	profiled := make(chan struct{})
	if dir := os.Getenv("AUTHPROXY_BENCH_PROFILE_DIR"); dir == "" || !profile || ap.admin == "" {
		close(profiled)
	} else {
		// From the middle of the run through authproxy: the live heap
		// (after a GC), 5 s of CPU profile and a 3 s execution trace (go
		// tool trace -pprof=sched shows where requests wait; goroutines
		// overlapping a GC mark phase are the slow ones).
		go func() {
			defer close(profiled)
			time.Sleep(8 * time.Second)
			for _, f := range []struct{ query, file string }{
				{"heap?gc=1", "latency-heap.pb.gz"}, {"profile?seconds=5", "latency-cpu.pb.gz"}, {"trace?seconds=3", "latency-trace.out"},
			} {
				if err := savePprof(ap.admin, f.query, filepath.Join(dir, f.file)); err != nil {
					t.Log(err)
				}
			}
		}()
	}
	cpu0, _ := readStat(ap.proc.Pid())
	through := runLatency(t, ap.addr, lp.client, rate, seconds, warmup, "client → "+lp.name+" → upstream (client has no credentials)")
	cpu1, _ := readStat(ap.proc.Pid())
	<-profiled
	kernel := kdamondCPU() - kernel0
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s; path %s: %d MESSAGE/s for %d s (first %d s not counted), loopback\n\n", machine(), lp.key, rate, seconds, warmup)
	b.WriteString("| path | requests | lost | p50 | p90 | p99 | p99.9 |\n|---|---|---|---|---|---|---|\n")
	results := []latencyResult{direct, through}
	if floor != nil {
		results = []latencyResult{direct, *floor, through}
	}
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %d | %d | %v | %v | %v | %v |\n", r.name, r.n, r.lost, r.p(0.5), r.p(0.9), r.p(0.99), r.p(0.999))
	}
	added := func(name string, r latencyResult) time.Duration {
		fmt.Fprintf(&b, "| added by %s | | | %v | %v | %v | %v |\n", name,
			r.p(0.5)-direct.p(0.5), r.p(0.9)-direct.p(0.9), r.p(0.99)-direct.p(0.99), r.p(0.999)-direct.p(0.999))
		return r.p(0.99) - direct.p(0.99)
	}
	var res roundResult
	res.through = added("authproxy", through)
	if floor != nil {
		res.floor = added("udprelay", *floor)
	}
	b.WriteString("\nResponse time = from just before the request's send to the response's arrival at the client's socket (kernel\n" +
		"timestamp; over TCP, of the last segment of the read that brought it). The same to when the client's goroutine\n" +
		"read it, which adds the load generator's own waits for a CPU:\n\n" +
		"| path | p50 | p90 | p99 | p99.9 |\n|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s, read | %v | %v | %v | %v |\n", r.name, percentile(r.readRtts, 0.5), percentile(r.readRtts, 0.9), percentile(r.readRtts, 0.99), percentile(r.readRtts, 0.999))
	}
	if n := rate * seconds; cpu1.user+cpu1.system > 0 {
		// What authproxy spent per request is what the tail follows
		// (docs/performance.md): the kernel's part includes sending on
		// loopback, which runs the receiver's side of the stack too.
		per := func(d time.Duration) time.Duration { return (d / time.Duration(n)).Round(100 * time.Nanosecond) }
		user, system := cpu1.user-cpu0.user, cpu1.system-cpu0.system
		fmt.Fprintf(&b, "\nauthproxy used %v of CPU per request through it (user %v, system %v; clock ticks of 10 ms over %d requests).\n",
			per(user+system), per(user), per(system), n)
	}
	if kernel > 0 {
		// The machine's kernel runs DAMON (memory access sampling for
		// reclaim): every 512 ms it takes a CPU for milliseconds and walks
		// the processes' page tables, stalling whatever runs then.
		fmt.Fprintf(&b, "\nkdamond (the kernel's DAMON) used %v of CPU during both runs.\n", kernel.Round(time.Millisecond))
	}
	t.Log(b.String())
	if os.Getenv("AUTHPROXY_BENCH_OUTPUT") != "" {
		// What authproxy printed, e.g. the GC's own account of each cycle
		// with GODEBUG=gctrace=1 (the environment reaches authproxy).
		t.Log(ap.proc.Output())
	}
	if through.lost*1000 > through.n || direct.lost*1000 > direct.n {
		t.Errorf("more than 0.1%% lost: direct %d of %d, through authproxy %d of %d", direct.lost, direct.n, through.lost, through.n)
	}
	return res
}

// kdamondCPU is the CPU time the kernel's DAMON threads have used so far
// (0 where there are none).
func kdamondCPU() time.Duration {
	var total time.Duration
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || !strings.HasPrefix(string(comm), "kdamond") {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "schedstat"))
		if f := strings.Fields(string(stat)); err == nil && len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			total += time.Duration(ns)
		}
	}
	return total
}

// startUDPRelay builds and runs udprelay in front of upstream and returns
// its address.
func startUDPRelay(t *testing.T, upstream string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "udprelay")
	if out, err := exec.Command("go", "build", "-o", bin, "./udprelay").CombinedOutput(); err != nil {
		t.Fatalf("go build udprelay: %v\n%s", err, out)
	}
	addr := fmt.Sprintf("127.0.0.6:%d", peers.FreePort(t, "127.0.0.6"))
	args := append([]string{"-listen", addr, "-upstream", upstream}, strings.Fields(os.Getenv("AUTHPROXY_BENCH_FLOOR_FLAGS"))...)
	p := peers.StartProcess(t, peers.ProcessConfig{Name: "udprelay", Path: bin, Args: args})
	peers.WaitSIP(t, addr, p)
	return addr
}
