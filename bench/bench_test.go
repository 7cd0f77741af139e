// Package bench measures authproxy under load against a real upstream:
// Kamailio on loopback challenging every out-of-dialog request with a 407
// (peers.KamailioLoadTrunk), SIPp as the load generator and as the callee.
// It is not part of go test ./...: the test skips unless AUTHPROXY_BENCH=1.
//
// One command runs the rate search on every path and prints the table and
// the ratios of its maxima against authproxy's goals (results and the
// commands behind them: bench/RESULTS.md):
//
//	AUTHPROXY_BENCH=1 AUTHPROXY_BENCH_MAX_P99=100ms go test ./bench -run 'TestBench$' -v -timeout 120m
//
// AUTHPROXY_BENCH_STEP sets the seconds per rate step (default 30);
// AUTHPROXY_BENCH_MAX_P99 (e.g. 100ms) fails a step whose p99 response
// time (calls: less the callee's 100 ms of ringing) is above it, besides one with ≥ 0.1 % failed or overrunning its time;
// AUTHPROXY_BENCH_OPTIONS_RATES, _MESSAGE_RATES and _CALL_RATES the steps
// (requests or calls a second, comma-separated). AUTHPROXY_BENCH_PATHS
// (direct, off, all, kamailio; and all-tcp and off-tcp, which only run
// when named: SIPp to authproxy over TCP) and AUTHPROXY_BENCH_KINDS
// (options, call; and message, which only runs when named),
// comma-separated, pick a part of the table; the ratios whose paths and
// kinds ran are printed.
//
// TestLatency (AUTHPROXY_BENCH_LATENCY, AUTHPROXY_BENCH_LATENCY_PATHS)
// measures the latency authproxy adds on each path. Run after TestBench in
// the same command with AUTHPROXY_BENCH_LATENCY=half, it does so at half
// the maximum TestBench found on that path; everything at once:
//
//	AUTHPROXY_BENCH=1 AUTHPROXY_BENCH_MAX_P99=100ms \
//	AUTHPROXY_BENCH_PATHS=direct,off,all,kamailio,all-tcp,off-tcp \
//	AUTHPROXY_BENCH_LATENCY=half AUTHPROXY_BENCH_LATENCY_PATHS=all,off,tcp,off-tcp \
//	go test ./bench -run 'TestBench$|TestLatency$' -v -timeout 180m
//
// TestSoak (AUTHPROXY_BENCH_SOAK=5m) runs a steady load and reports
// goroutines and heap from authproxy's /metrics.
package bench

import (
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

const (
	benchUser  = "bench"
	benchPass  = "bench-Pw-0f3a"
	benchRealm = "asterisk"
	domain     = "pbx.bench"
)

// The rate steps of the search, per second: each runs for the step
// duration; the highest with < 0.1 % failed is reported. The search stops
// at the first failing step, which bounds the total time. They reach well
// past the maxima measured on the reference machine (bench/RESULTS.md) so
// that both terms of a ratio are found, not cut off at the last step.
var (
	messageRates = []int{1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 11000, 12000, 14000}
	callRates    = []int{100, 200, 400, 600, 800, 1000, 1200, 1400, 1600, 2000}
)

// rates is the comma-separated list of rates in the environment variable
// env (AUTHPROXY_BENCH_OPTIONS_RATES, AUTHPROXY_BENCH_MESSAGE_RATES,
// AUTHPROXY_BENCH_CALL_RATES), or def.
func rates(t *testing.T, env string, def []int) []int {
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			t.Fatalf("%s=%q: want rates a second, comma-separated", env, v)
		}
		out = append(out, n)
	}
	return out
}

func stepDuration() time.Duration {
	if s, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_STEP")); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 30 * time.Second
}

// path is the way the load goes to the upstream.
type path struct {
	key   string // for AUTHPROXY_BENCH_PATHS
	name  string
	start func(t *testing.T) (addr string, proc *peers.Process) // nil: SIPp straight to the upstream
	// sippTransport is SIPp's transport toward the path ("" for UDP, "t1"
	// for one TCP connection).
	sippTransport string
	optIn         bool // runs only when AUTHPROXY_BENCH_PATHS names it
}

type result struct {
	rate     int
	p50, p99 time.Duration // response time at that rate: request to its 200 (INVITE to 200 for calls), challenge included
	cpuPer1k time.Duration // CPU time of the proxy per 1,000 requests or calls at that rate
	rssMB    float64       // the proxy's peak RSS over all steps
	top      bool          // every step passed: rate is a lower bound of the maximum
}

// TestBench prints a table: for each path, the highest rate of challenged
// OPTIONS (or MESSAGEs) and of INVITE-ACK-BYE calls sustained with < 0.1 %
// failures, and the proxy's CPU time per 1,000 and peak RSS; then the
// ratios of those maxima that authproxy has goals for (writeRatios),
// each with its verdict. The verdicts are figures to read, not
// assertions: the test fails only when the benchmark cannot run.
func TestBench(t *testing.T) {
	if os.Getenv("AUTHPROXY_BENCH") != "1" {
		t.Skip("set AUTHPROXY_BENCH=1 to run the load benchmark (minutes)")
	}
	peers.Require(t, "kamailio", "sipp")
	step := stepDuration()
	uas := callee(t, 100_000)
	upstream := startUpstream(t, uas.Addr())
	bin := authproxyBinary(t)

	paths := []path{
		{key: "direct", name: "SIPp → upstream (no proxy; SIPp answers the 407)"},
		{key: "off", name: "authproxy, preemptive off", start: func(t *testing.T) (string, *peers.Process) {
			return startAuthproxy(t, bin, upstream, "off")
		}},
		{key: "all", name: "authproxy, preemptive all", start: func(t *testing.T) (string, *peers.Process) {
			return startAuthproxy(t, bin, upstream, "all")
		}},
		{key: "kamailio", name: "Kamailio uac_auth proxy", start: func(t *testing.T) (string, *peers.Process) {
			return startKamailioProxy(t, upstream)
		}},
		// Not in the default run: the comparison above is over UDP. The
		// client side over TCP (one connection, SIPp's t1), the upstream
		// leg UDP as in the others.
		{key: "all-tcp", name: "authproxy, preemptive all, client over TCP", sippTransport: "t1", optIn: true, start: func(t *testing.T) (string, *peers.Process) {
			return startAuthproxy(t, bin, upstream, "all")
		}},
		{key: "off-tcp", name: "authproxy, preemptive off, client over TCP", sippTransport: "t1", optIn: true, start: func(t *testing.T) (string, *peers.Process) {
			return startAuthproxy(t, bin, upstream, "off")
		}},
	}
	paths = slices.DeleteFunc(paths, func(p path) bool {
		if os.Getenv("AUTHPROXY_BENCH_PATHS") == "" {
			return p.optIn
		}
		return !selected("AUTHPROXY_BENCH_PATHS", p.key)
	})
	kinds := slices.DeleteFunc(benchKinds(t), func(k kind) bool { return !selectedKind(k) })
	res := map[string]map[string]result{}
	for _, p := range paths {
		res[p.key] = map[string]result{}
		for _, k := range kinds {
			res[p.key][k.key] = runKind(t, p, k, upstream, step)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s; %v steps;", machine(), step)
	for _, k := range kinds {
		fmt.Fprintf(&b, " %s steps %v/s;", strings.TrimPrefix(k.label, "challenged "), k.rates)
	}
	b.WriteString(" loopback, UDP unless the path says TCP\n\n")
	writeTable(&b, paths, kinds, res)
	writeRatios(&b, kinds, res)
	recordMaxima(paths, kinds, res)
	t.Log(b.String())
}

// selected reports whether the comma-separated list in the environment
// variable env names key; an unset variable selects everything.
func selected(env, key string) bool {
	v := os.Getenv(env)
	return v == "" || slices.Contains(strings.Split(v, ","), key)
}

// rssMB is the VmRSS of pid, in MB.
func rssMB(pid int) float64 { return statusMB(pid, "VmRSS:") }

// peakRSSMB is the VmHWM of pid, in MB.
func peakRSSMB(pid int) float64 { return statusMB(pid, "VmHWM:") }

// statusMB reads a kB field of /proc/<pid>/status, in MB.
func statusMB(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb) / 1024
		}
	}
	return 0
}

// search runs the rate steps in order until one fails.
// ring is the part of the response time the callee takes on purpose (its
// ringing before the 200), not counted against AUTHPROXY_BENCH_MAX_P99.
func search(t *testing.T, name string, rates []int, step, ring time.Duration, proc *peers.Process, mk func(rate int) peers.SippRun) result {
	t.Helper()
	maxP99 := maxP99(t)
	var r result
	for i, rate := range rates {
		run := mk(rate)
		run.Rate, run.Calls, run.Timeout = rate, rate*int(step/time.Second), step+20*time.Second
		// -recv_timeout: a call that waits 5 s for a message lost a
		// datagram its scenario cannot recover (SIPp answers no
		// retransmitted BYE once its callee has ended the call) and fails,
		// instead of holding the whole step open; -fd 1: a statistics row
		// a second, for the time the step's calls had ended by.
		run.Extra = append(run.Extra, "-l", strconv.Itoa(rate*4), "-trace_rtt", "-rtt_freq", "100", "-recv_timeout", "5000", "-fd", "1")
		cpu0 := treeCPU(proc)
		busy0, all0 := machineCPU()
		res := peers.RunSipp(t, run)
		cpu := treeCPU(proc) - cpu0
		busy1, all1 := machineCPU()
		total := res.Successful + res.Failed
		ended, endedOK := res.EndedBy(run.Calls - run.Calls/1000)
		ok := sustained(run.Calls, res.Successful, res.Failed, ended, endedOK, step)
		endedBy := "never"
		if endedOK {
			endedBy = ended.Round(time.Millisecond).String()
		}
		t.Logf("%s: %d/s for %v: %d ok, %d failed, 99.9%% ended by %s, all in %v, exit %d, proxy cpu %v, machine %.0f%% busy", name, rate, step, res.Successful, res.Failed,
			endedBy, res.Duration.Round(time.Millisecond), res.ExitCode, cpu, 100*(busy1-busy0)/max(all1-all0, 1))
		if !ok {
			t.Logf("unexpected messages (first lines):\n%s\noutput (last lines):\n%s", firstLines(res.Errors, 12), lastLines(res.Output, 8))
			break
		}
		p50, p99 := percentiles(res)
		t.Logf("%s: %d/s: response time p50 %v, p99 %v", name, rate, p50, p99)
		if maxP99 > 0 && p99-ring > maxP99 {
			t.Logf("%s: %d/s: p99 over AUTHPROXY_BENCH_MAX_P99 (%v, besides the callee's %v of ringing): not clean", name, rate, maxP99, ring)
			break
		}
		r.rate, r.p50, r.p99 = rate, p50, p99
		if total > 0 {
			r.cpuPer1k = cpu * 1000 / time.Duration(total)
		}
		r.top = i == len(rates)-1
	}
	if proc != nil {
		r.rssMB = peakRSSMB(proc.Pid())
	}
	return r
}

// sustained reports whether a step of calls ran clean: every call ended,
// under 0.1 % of them failed, and 99.9 % had ended (endedBy, from SIPp's
// statistics rows) within the step's time +10 % +1 s. SIPp falls behind
// the rate rather than failing when it or the path saturates, so a late
// end is a backlog; the last 0.1 % may be calls that lost a datagram and
// end failed at SIPp's receive timeout, counted against the same 0.1 %.
func sustained(calls, successful, failed int, endedBy time.Duration, endedOK bool, step time.Duration) bool {
	total := successful + failed
	return total >= calls && failed*1000 < total && endedOK && endedBy <= step+step/10+time.Second
}

// maxP99 is AUTHPROXY_BENCH_MAX_P99 (e.g. 100ms): a step whose p99
// response time (for calls, INVITE to 200 less the callee's ringing) is
// above it does not pass either, so that a maximum is a
// rate the path carries without a queue building up, not only without
// losses. 0 (unset): no bound.
func maxP99(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv("AUTHPROXY_BENCH_MAX_P99")
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("AUTHPROXY_BENCH_MAX_P99=%q: want a duration such as 100ms", v)
	}
	return d
}

// timedScenario is scenario(name) with SIPp's response-time measure 1
// stopped at the final 200 (of the INVITE, for calls): it starts with the
// call, so it spans the challenge round when there is one.
func timedScenario(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(scenario(name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, old := range []string{`<recv response="200"/>`, `<recv response="200" rrs="true"/>`} {
		if strings.Count(s, old) == 1 {
			s = strings.Replace(s, old, strings.Replace(old, "/>", ` rtd="true"/>`, 1), 1)
		}
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// percentiles reads the response times SIPp wrote with -trace_rtt (in the
// directory of its other trace files) and returns their 50th and 99th
// percentiles.
func percentiles(res peers.SippResult) (p50, p99 time.Duration) {
	dir := ""
	for i, a := range res.Args {
		if a == "-message_file" && i+1 < len(res.Args) {
			dir = filepath.Dir(res.Args[i+1])
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*_rtt.csv"))
	var ms []float64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			fs := strings.Split(l, ";")
			if len(fs) < 2 {
				continue
			}
			if v, err := strconv.ParseFloat(fs[1], 64); err == nil {
				ms = append(ms, v)
			}
		}
	}
	if len(ms) == 0 {
		return 0, 0
	}
	slices.Sort(ms)
	at := func(q float64) time.Duration {
		return time.Duration(ms[min(len(ms)-1, int(q*float64(len(ms))))] * float64(time.Millisecond))
	}
	return at(0.50), at(0.99)
}

func scenario(name string) string {
	p, err := filepath.Abs(filepath.Join("..", "e2e", "testdata", "sipp", name))
	if err != nil {
		panic(err)
	}
	return p
}

// authproxyBinary returns AUTHPROXY_BENCH_BIN when set (a binary built
// elsewhere, e.g. from another commit, to compare two builds on the same
// machine), or else ./cmd/authproxy built by peers.BuildAuthproxy.
func authproxyBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("AUTHPROXY_BENCH_BIN"); bin != "" {
		return bin
	}
	return peers.BuildAuthproxy(t)
}

// Kamailio's settings for the load tests: memory enough for thousands of
// requests a second.
const (
	kamailioChildren  = 2
	kamailioSharedMB  = 256
	kamailioPrivateMB = 16
	upstreamHost      = "127.0.0.2"
	kamailioProxyHost = "127.0.0.3"
)

// startUpstream runs the benchmark's upstream (peers.KamailioLoadTrunk) on
// upstreamHost, relaying INVITEs to relayTo, and returns its address.
func startUpstream(t *testing.T, relayTo string) string {
	t.Helper()
	return peers.StartKamailio(t, peers.KamailioConfig{Mode: peers.KamailioLoadTrunk, Host: upstreamHost,
		Realm: benchRealm, Users: map[string]string{benchUser: benchPass}, RelayTo: relayTo,
		Children: kamailioChildren, SharedMemoryMB: kamailioSharedMB, PrivateMemoryMB: kamailioPrivateMB}).Addr()
}

// startKamailioProxy runs Kamailio as the uac_auth proxy
// (peers.KamailioUACProxy) in front of upstream.
func startKamailioProxy(t *testing.T, upstream string) (string, *peers.Process) {
	t.Helper()
	k := peers.StartKamailio(t, peers.KamailioConfig{Mode: peers.KamailioUACProxy, Host: kamailioProxyHost,
		Realm: benchRealm, Users: map[string]string{benchUser: benchPass}, RelayTo: upstream,
		Children: kamailioChildren, SharedMemoryMB: kamailioSharedMB, PrivateMemoryMB: kamailioPrivateMB})
	return k.Addr(), k.Process()
}

// startAuthproxy runs the binary between SIPp and the upstream and returns
// its UDP address.
func startAuthproxy(t *testing.T, bin, upstream, preemptive string) (string, *peers.Process) {
	return startAuthproxyAdmin(t, bin, upstream, preemptive, "")
}

// startAuthproxyAdmin is startAuthproxy with the admin listener at admin
// ("" for none); extra is appended to the configuration (more tables).
func startAuthproxyAdmin(t *testing.T, bin, upstream, preemptive, admin string, extra ...string) (string, *peers.Process) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	conf := fmt.Sprintf(`[admin]
address = %q
pprof = %v

[log]
level = "warn"
format = "json"

[proxy]
shutdown_grace = "1s"

[limits]
rate = 100000
burst = 100000
max_per_source = 100000
max_total = 100000

[[listen]]
transport = "udp"
address = %q

[[listen]]
transport = "tcp"
address = %q

[[upstream]]
name = "pbx"
address = %q
domains = [%q]
preemptive = %q

[[credential]]
username = %q
password = %q
server = "pbx"

[[client]]
name = "loopback"
networks = ["127.0.0.0/8"]
upstreams = ["*"]
`, admin, admin != "", addr, addr, upstream, domain, preemptive, benchUser, benchPass) + strings.Join(extra, "\n")
	// Runtime settings for authproxy alone (e.g. "GOMAXPROCS=1 GOGC=200"),
	// not for the load generator in this process.
	env := strings.Fields(os.Getenv("AUTHPROXY_BENCH_AUTHPROXY_ENV"))
	// Logging at warn, authproxy does not log "ready": an answer on the
	// UDP listener tells instead.
	a := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: conf, Bin: bin, Env: env, ReadySIP: addr})
	return addr, a.Process()
}

// treeCPU is the user+system CPU time so far of p and its child processes
// (Kamailio forks its workers), 0 for nil.
func treeCPU(p *peers.Process) time.Duration {
	if p == nil {
		return 0
	}
	var total time.Duration
	for _, pid := range treePIDs(p) {
		if st, ok := readStat(pid); ok {
			total += st.user + st.system
		}
	}
	return total
}

type procStat struct {
	ppid         int
	user, system time.Duration
}

// readStat reads /proc/<pid>/stat: the fields after the ")" that ends the
// command name, from field 3 (state) on: ppid is field 4, utime 14, stime
// 15 (proc(5)), in clock ticks of 10 ms.
func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return procStat{ppid: ppid, user: time.Duration(ut) * 10 * time.Millisecond, system: time.Duration(st) * 10 * time.Millisecond}, true
}

// machineCPU returns the busy and total jiffies of all CPUs so far
// (/proc/stat): their ratio over an interval is how saturated the machine
// the proxy shares with SIPp and the upstream was.
func machineCPU() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		n, _ := strconv.ParseFloat(v, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	out, _ := exec.Command("nproc").Output()
	return fmt.Sprintf("%s, %s cores, %s", cpu, strings.TrimSpace(string(out)), time.Now().UTC().Format("2006-01-02"))
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
