package bench

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestSoak runs challenged MESSAGEs through authproxy (preemptive all) at
// a steady rate for AUTHPROXY_BENCH_SOAK (e.g. 5m) and reports goroutines
// and heap in use from its /metrics every 30 s: they must not grow.
//
//	AUTHPROXY_BENCH_SOAK=5m go test ./bench -run TestSoak -v -timeout 30m
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("AUTHPROXY_BENCH_SOAK"))
	if err != nil || d <= 0 {
		t.Skip("set AUTHPROXY_BENCH_SOAK=5m to run the soak")
	}
	peers.Require(t, "kamailio", "sipp")
	const rate = 500 // a third of the lowest maximum measured: a steady load, not a saturating one
	upstream := startUpstream(t, "127.0.0.4:9")
	admin := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	addr, proc := startAuthproxyAdmin(t, authproxyBinary(t), upstream, "all", admin)
	defer proc.Stop()
	done := make(chan peers.SippResult, 1)
	go func() {
		done <- peers.RunSipp(t, peers.SippRun{Scenario: scenario("message.xml"), Remote: addr, Domain: domain, Service: benchUser,
			Rate: rate, Calls: rate * int(d/time.Second), Timeout: d + time.Minute, Extra: []string{"-l", strconv.Itoa(rate * 4)}})
	}()
	var b strings.Builder
	b.WriteString("\n| elapsed | go_goroutines | heap in use after a forced GC | RSS |\n|---|---|---|---|\n")
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	start := time.Now()
	gcDump := filepath.Join(t.TempDir(), "heap.pprof")
	sample := func() {
		// heap?gc=1 runs a GC first: heap in use then is what is live,
		// not what the last GC left behind.
		if err := savePprof(admin, "heap?gc=1", gcDump); err != nil {
			t.Log(err)
		}
		g, h := scrape(t, admin, "go_goroutines"), scrape(t, admin, "go_memstats_heap_inuse_bytes")
		fmt.Fprintf(&b, "| %v | %.0f | %.1f MB | %.1f MB |\n", time.Since(start).Round(time.Second), g, h/(1<<20), rssMB(proc.Pid()))
	}
	sample()
	var res peers.SippResult
loop:
	for {
		select {
		case <-tick.C:
			sample()
		case res = <-done:
			break loop
		}
	}
	// After the load: the last transactions time out (Timer J, 5 s).
	time.Sleep(10 * time.Second)
	sample()
	t.Logf("soak: %d/s for %v: %d ok, %d failed%s", rate, d, res.Successful, res.Failed, b.String())
}

// TestDialogs establishes AUTHPROXY_BENCH_DIALOGS calls (e.g. 10000)
// through authproxy at AUTHPROXY_BENCH_DIALOGS_RATE a second (default
// 250), holds them, and reports authproxy's
// RSS, heap in use and goroutines once every call is up and the setup's
// transactions have ended (Timer L/M, 32 s), then hangs them all up:
//
//	AUTHPROXY_BENCH_DIALOGS=10000 go test ./bench -run TestDialogs -v -timeout 30m
func TestDialogs(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_DIALOGS"))
	if err != nil || n <= 0 {
		t.Skip("set AUTHPROXY_BENCH_DIALOGS=10000 to measure authproxy's memory with that many calls established")
	}
	peers.Require(t, "kamailio", "sipp")
	rate := 250
	if v := os.Getenv("AUTHPROXY_BENCH_DIALOGS_RATE"); v != "" {
		if rate, err = strconv.Atoi(v); err != nil || rate <= 0 {
			t.Fatalf("AUTHPROXY_BENCH_DIALOGS_RATE=%q: want calls a second", v)
		}
	}
	setup := time.Duration(n/rate+1) * time.Second
	settle := 45 * time.Second // Timer L and M (32 s) end the INVITE transactions
	hold := setup + settle + 50*time.Second
	uas := callee(t, 2*n+100_000)
	upstream := startUpstream(t, uas.Addr())
	admin := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	addr, proc := startAuthproxyAdmin(t, authproxyBinary(t), upstream, "all", admin)
	defer proc.Stop()
	sc := heldCallScenario(t, hold)
	done := make(chan peers.SippResult, 1)
	go func() {
		done <- peers.RunSipp(t, peers.SippRun{Scenario: sc, Remote: addr, Domain: domain, Service: "1002", Keys: map[string]string{"caller": benchUser},
			Rate: rate, Calls: n, Timeout: setup + hold + time.Minute, Extra: []string{"-l", strconv.Itoa(2 * n)}})
	}()
	var b strings.Builder
	b.WriteString("\n| elapsed | dialogs | go_goroutines | heap allocated | heap in use | heap idle, not released | stacks | RSS |\n|---|---|---|---|---|---|---|---|\n")
	start := time.Now()
	sample := func() (dialogs, rss float64) {
		dialogs = scrape(t, admin, "authproxy_dialogs")
		rss = rssMB(proc.Pid())
		fmt.Fprintf(&b, "| %v | %.0f | %.0f | %.1f MB | %.1f MB | %.1f MB | %.1f MB | %.1f MB |\n", time.Since(start).Round(time.Second), dialogs,
			scrape(t, admin, "go_goroutines"), scrape(t, admin, "go_memstats_heap_alloc_bytes")/(1<<20),
			scrape(t, admin, "go_memstats_heap_inuse_bytes")/(1<<20),
			(scrape(t, admin, "go_memstats_heap_idle_bytes")-scrape(t, admin, "go_memstats_heap_released_bytes"))/(1<<20),
			scrape(t, admin, "go_memstats_stack_inuse_bytes")/(1<<20), rss)
		return dialogs, rss
	}
	profileDir := cmp.Or(os.Getenv("AUTHPROXY_BENCH_PROFILE_DIR"), t.TempDir())
	if err := os.MkdirAll(profileDir, 0o755); err != nil {
		t.Fatal(err)
	}
	setupProfile := filepath.Join(profileDir, "dialogs-setup-heap.pprof")
	for time.Since(start) < setup+settle {
		time.Sleep(10 * time.Second)
		sample()
		if setupProfile != "" && time.Since(start) >= setup {
			// What is live at the setup's end, transactions still up: the
			// collector's high-water mark is twice that.
			if err := savePprof(admin, "heap?gc=1", setupProfile); err != nil {
				t.Error(err)
			}
			setupProfile = ""
			sample()
		}
	}
	// A forced GC (the heap profile's gc=1) frees the setup's garbage that
	// an idle process would only collect at the next periodic GC (2 min);
	// the profile shows what the dialogs hold. Then the scavenger returns
	// the freed pages to the OS over some seconds.
	profile := filepath.Join(profileDir, "dialogs-heap.pprof")
	if err := savePprof(admin, "heap?gc=1", profile); err != nil {
		t.Error(err)
	}
	sample()
	var dialogs, rss float64
	for range 4 {
		time.Sleep(10 * time.Second)
		dialogs, rss = sample()
	}
	res := <-done
	t.Logf("dialogs: %d calls at %d/s, held %v: %d ok, %d failed; with %.0f dialogs established: RSS %.1f MB (peak %.1f MB); heap profile %s%s\n%s",
		n, rate, hold, res.Successful, res.Failed, dialogs, rss, peakRSSMB(proc.Pid()), profile, b.String(),
		nonZero(grepMetrics(t, admin, "authproxy_messages_discarded_total", "authproxy_requests_refused_total", "authproxy_request_outcomes_total")))
	if res.Failed > 0 {
		t.Errorf("%d calls failed", res.Failed)
	}
}

// callee is the benchmarks' SIPp callee (uas.xml) on 127.0.0.4. It keeps
// each call 4 s after its 200 to the BYE instead of 200 ms, so that it
// answers the BYE again when the upstream retransmits it (T1, then 1 s,
// 2 s: RFC 3261 §17.1.2.2) because that 200 was lost: SIPp drops a
// message for a call it has ended, and one lost datagram would otherwise
// leave the caller waiting. At hundreds of calls a second on two shared
// cores a burst can overflow a socket buffer. maxCalls bounds the calls
// it holds at once (SIPp's -l).
func callee(t *testing.T, maxCalls int) *peers.SippServer {
	t.Helper()
	b, err := os.ReadFile(scenario("uas.xml"))
	if err != nil {
		t.Fatal(err)
	}
	const linger = `<pause milliseconds="200"/>`
	if !bytes.Contains(b, []byte(linger)) {
		t.Fatalf("uas.xml has no %s", linger)
	}
	b = bytes.Replace(b, []byte(linger), []byte(`<pause milliseconds="4000"/>`), 1)
	p := filepath.Join(t.TempDir(), "uas_linger.xml")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return peers.StartSipp(t, peers.SippRun{Scenario: p, Local: "127.0.0.4", Calls: 100_000_000, Rate: 10_000, Timeout: time.Hour,
		Extra: []string{"-bind_local", "-l", strconv.Itoa(maxCalls)}})
}

// heldCallScenario is call.xml with the talk lasting hold.
func heldCallScenario(t *testing.T, hold time.Duration) string {
	t.Helper()
	b, err := os.ReadFile(scenario("call.xml"))
	if err != nil {
		t.Fatal(err)
	}
	const talk = `<pause milliseconds="300"/>`
	if !bytes.Contains(b, []byte(talk)) {
		t.Fatalf("call.xml has no %s", talk)
	}
	b = bytes.Replace(b, []byte(talk), fmt.Appendf(nil, `<pause milliseconds="%d"/>`, hold.Milliseconds()), 1)
	p := filepath.Join(t.TempDir(), "held_call.xml")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProfile runs challenged MESSAGEs (or, with
// AUTHPROXY_BENCH_PROFILE_KIND=call, INVITE-ACK-BYE calls to a SIPp callee)
// through authproxy (preemptive AUTHPROXY_BENCH_PREEMPTIVE, default all) at
// AUTHPROXY_BENCH_PROFILE requests or calls a second for 40 s and saves
// authproxy's CPU profile (20 s from the 10th second), its heap and
// allocation profiles and a mutex and block profile into
// AUTHPROXY_BENCH_PROFILE_DIR (default a temporary directory, logged):
//
//	AUTHPROXY_BENCH_PROFILE=3000 AUTHPROXY_BENCH_PROFILE_DIR=/tmp/prof go test ./bench -run TestProfile -v
//	AUTHPROXY_BENCH_PROFILE=300 AUTHPROXY_BENCH_PROFILE_KIND=call AUTHPROXY_BENCH_PROFILE_DIR=/tmp/prof-call go test ./bench -run TestProfile -v
//	go tool pprof -top /tmp/prof/cpu.pprof
func TestProfile(t *testing.T) {
	rate, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_PROFILE"))
	if err != nil || rate <= 0 {
		t.Skip("set AUTHPROXY_BENCH_PROFILE=<requests a second> to profile a load run")
	}
	peers.Require(t, "kamailio", "sipp")
	dir := os.Getenv("AUTHPROXY_BENCH_PROFILE_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	preemptive := cmp.Or(os.Getenv("AUTHPROXY_BENCH_PREEMPTIVE"), "all")
	const seconds = 40
	run := peers.SippRun{Scenario: scenario("message.xml"), Domain: domain, Service: benchUser,
		Rate: rate, Calls: rate * seconds, Timeout: 2 * seconds * time.Second, Extra: []string{"-l", strconv.Itoa(rate * 4)}}
	relayTo := "127.0.0.4:9"
	switch kind := cmp.Or(os.Getenv("AUTHPROXY_BENCH_PROFILE_KIND"), "message"); kind {
	case "message":
	case "call":
		uas := callee(t, 100_000)
		relayTo = uas.Addr()
		defer func() {
			if os.Getenv("DEBUGLOG") != "" {
				r := uas.Stop()
				t.Logf("callee errors:\n%s", firstLines(r.Errors, 40))
			}
		}()
		run.Scenario, run.Service, run.Keys = scenario("call.xml"), "1002", map[string]string{"caller": benchUser}
	default:
		t.Fatalf("AUTHPROXY_BENCH_PROFILE_KIND=%q: want message or call", kind)
	}
	upstream := startUpstream(t, relayTo)
	admin := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	addr, proc := startAuthproxyAdmin(t, authproxyBinary(t), upstream, preemptive, admin)
	defer proc.Stop()
	if cores := proxyCPUBudget(t); cores > 0 {
		limitCPU(t, proc, cores)
	}
	run.Remote = addr
	done := make(chan peers.SippResult, 1)
	go func() {
		done <- peers.RunSipp(t, run)
	}()
	save := func(name, query string) {
		if err := savePprof(admin, query, filepath.Join(dir, name)); err != nil {
			t.Error(err)
		}
	}
	time.Sleep(10 * time.Second)
	st0, _ := readStat(proc.Pid())
	save("cpu.pprof", "profile?seconds=20")
	st1, _ := readStat(proc.Pid())
	u1, s1 := st1.user-st0.user, st1.system-st0.system
	cpu := u1 + s1
	save("heap.pprof", "heap")
	save("allocs.pprof", "allocs")
	save("mutex.pprof", "mutex")
	save("block.pprof", "block")
	save("goroutine.txt", "goroutine?debug=1")
	save("trace.out", "trace?seconds=2")
	res := <-done
	if os.Getenv("DEBUGLOG") != "" {
		t.Log(proc.Output())
	}
	counters := grepMetrics(t, admin, "authproxy_challenges_answered_total", "authproxy_preemptive_auth_total", "authproxy_stale_retries_total") +
		nonZero(grepMetrics(t, admin, "authproxy_messages_discarded_total", "authproxy_requests_refused_total", "authproxy_request_outcomes_total"))
	t.Logf("profile: %d/s for %ds: %d ok, %d failed in %v; authproxy CPU %v (user %v, system %v) over the 20 s profiled (%.0f%% of a core); peak RSS %.0f MB; profiles in %s\n%s",
		rate, seconds, res.Successful, res.Failed, res.Duration.Round(time.Millisecond), cpu, u1, s1, 100*cpu.Seconds()/20, peakRSSMB(proc.Pid()), dir, counters)
}

// savePprof writes authproxy's /debug/pprof/<query> to path.
func savePprof(admin, query, path string) error {
	resp, err := http.Get("http://" + admin + "/debug/pprof/" + query)
	if err != nil {
		return fmt.Errorf("profile %s: %w", query, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("profile %s: %w", query, err)
	}
	return os.WriteFile(path, b, 0o644)
}

// metricLines returns the lines of authproxy's admin /metrics.
func metricLines(admin string) ([]string, error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return strings.Split(string(body), "\n"), err
}

// grepMetrics returns the lines of the admin /metrics that start with one
// of the names.
func grepMetrics(t *testing.T, admin string, names ...string) string {
	t.Helper()
	lines, err := metricLines(admin)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, l := range lines {
		for _, n := range names {
			if strings.HasPrefix(l, n) {
				out = append(out, l)
			}
		}
	}
	return strings.Join(out, "\n")
}

// nonZero keeps the lines of a /metrics excerpt whose value is not 0.
func nonZero(lines string) string {
	var out []string
	for _, l := range strings.Split(lines, "\n") {
		if l != "" && !strings.HasSuffix(l, " 0") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// scrape reads one unlabelled metric from the admin /metrics.
func scrape(t *testing.T, admin, name string) float64 {
	t.Helper()
	lines, err := metricLines(admin)
	if err != nil {
		t.Logf("scrape: %v", err)
		return 0
	}
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}
