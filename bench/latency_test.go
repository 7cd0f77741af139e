package bench

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/icholy/digest"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestLatency measures, with microsecond clocks, what authproxy adds to a
// request's response time: a Go client sends MESSAGEs at
// AUTHPROXY_BENCH_LATENCY a second (e.g. half the maximum rate TestBench
// found) for 20 s, once straight to the upstream with its own valid
// Proxy-Authorization (one round trip, as authproxy's preemptive answers
// make it), once through authproxy (preemptive all, the client without
// credentials), and reports the response-time percentiles of both and
// their difference. SIPp's own timer ticks in milliseconds, too coarse
// for this.
//
//	AUTHPROXY_BENCH_LATENCY=3500 go test ./bench -run TestLatency -v
//
// AUTHPROXY_BENCH_OUTPUT=1 logs authproxy's output after the table;
// AUTHPROXY_BENCH_PROFILE_DIR=dir saves its heap, CPU profile and an
// execution trace from the middle of the run; AUTHPROXY_BENCH_FLOOR=1 adds
// a run through udprelay (a Go process that passes datagrams on and does
// nothing else) with the client's own credentials: what one Go hop costs
// on this machine before any SIP work (AUTHPROXY_BENCH_FLOOR_FLAGS, e.g.
// "-parse -handoff", adds some of authproxy's; see udprelay's doc);
// AUTHPROXY_BENCH_AUTHPROXY_ENV sets authproxy's runtime environment (e.g.
// "GOMAXPROCS=1"); AUTHPROXY_BENCH_LATENCY_RUNS=N repeats the measurement N
// times and reports the median p99 added.
func TestLatency(t *testing.T) {
	rate, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_LATENCY"))
	if err != nil || rate <= 0 {
		t.Skip("set AUTHPROXY_BENCH_LATENCY=<requests a second> to measure authproxy's added latency")
	}
	peers.Require(t, "kamailio")
	const seconds, warmup = 20, 2
	upstream := startUpstream(t, "127.0.0.4:9")
	admin := ""
	if os.Getenv("AUTHPROXY_BENCH_PROFILE_DIR") != "" {
		admin = fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	}
	addr, proc := startAuthproxyAdmin(t, authproxyBinary(t), upstream, "all", admin)
	defer proc.Stop()

	relay := ""
	if os.Getenv("AUTHPROXY_BENCH_FLOOR") != "" {
		relay = startUDPRelay(t, upstream)
	}
	runs := 1
	if n, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_LATENCY_RUNS")); err == nil && n > 1 {
		runs = n
	}
	var addedP99, floorP99 []time.Duration
	for run := 1; run <= runs; run++ {
		through, floor := latencyRound(t, rate, seconds, warmup, upstream, relay, addr, admin, proc, run == 1)
		addedP99 = append(addedP99, through)
		if floor != 0 {
			floorP99 = append(floorP99, floor)
		}
	}
	if runs > 1 {
		// Run to run the tail moves by half its size on this shared
		// machine: compare medians, not single runs.
		t.Logf("p99 added by authproxy over %d runs: %v (median %v)", runs, addedP99, median(addedP99))
		if len(floorP99) > 0 {
			t.Logf("p99 added by udprelay over %d runs: %v (median %v)", runs, floorP99, median(floorP99))
		}
	}
}

// median returns the middle value (the upper one of two) of ds.
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// latencyRound measures once straight to the upstream, through udprelay
// when relay is set, and through authproxy, logs the table and returns the
// p99 authproxy and udprelay added (0 without relay). profile saves
// authproxy's profiles from this round when AUTHPROXY_BENCH_PROFILE_DIR is
// set.
func latencyRound(t *testing.T, rate, seconds, warmup int, upstream, relay, addr, admin string, proc *peers.Process, profile bool) (throughAdded, floorAdded time.Duration) {
	t.Helper()
	kernel0 := kdamondCPU()
	direct := runLatency(t, upstream, rate, seconds, warmup, true, "client → upstream (client sends its own credentials)")
	var floor *latencyResult
	if relay != "" {
		r := runLatency(t, relay, rate, seconds, warmup, true, "client → udprelay → upstream (client sends its own credentials)")
		floor = &r
	}
	profiled := make(chan struct{})
	if dir := os.Getenv("AUTHPROXY_BENCH_PROFILE_DIR"); dir == "" || !profile {
		close(profiled)
	} else {
		// From the middle of the run through authproxy: the live heap
		// (after a GC), 5 s of CPU profile and a 3 s execution trace (go
		// tool trace -pprof=sched shows where requests wait; goroutines
		// overlapping a GC mark phase are the slow ones).
		go func() {
			defer close(profiled)
			time.Sleep(8 * time.Second)
			if err := savePprof(admin, "heap?gc=1", filepath.Join(dir, "latency-heap.pb.gz")); err != nil {
				t.Log(err)
			}
			if err := savePprof(admin, "profile?seconds=5", filepath.Join(dir, "latency-cpu.pb.gz")); err != nil {
				t.Log(err)
			}
			if err := savePprof(admin, "trace?seconds=3", filepath.Join(dir, "latency-trace.out")); err != nil {
				t.Log(err)
			}
		}()
	}
	cpu0, _ := readStat(proc.Pid())
	through := runLatency(t, addr, rate, seconds, warmup, false, "client → authproxy → upstream (client has no credentials)")
	cpu1, _ := readStat(proc.Pid())
	<-profiled
	kernel := kdamondCPU() - kernel0
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s; %d MESSAGE/s for %d s (first %d s not counted), UDP on loopback\n\n", machine(), rate, seconds, warmup)
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
	throughAdded = added("authproxy", through)
	if floor != nil {
		floorAdded = added("udprelay", *floor)
	}
	b.WriteString("\nResponse time = from just before the request's send to the response's arrival at the client's socket (kernel\n" +
		"timestamp). The same to when the client's goroutine read it, which adds the load generator's own waits for a CPU:\n\n" +
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
		t.Log(proc.Output())
	}
	if through.lost*1000 > through.n || direct.lost*1000 > direct.n {
		t.Errorf("more than 0.1%% lost: direct %d of %d, through authproxy %d of %d", direct.lost, direct.n, through.lost, through.n)
	}
	return throughAdded, floorAdded
}

type latencyResult struct {
	name    string
	n, lost int
	// rtts are the response times to the response's arrival at the
	// client's socket; readRtts to the client's reading it. Both sorted.
	rtts, readRtts []time.Duration
}

func (r latencyResult) p(q float64) time.Duration { return percentile(r.rtts, q) }

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))].Round(time.Microsecond)
}

// runLatency sends rate MESSAGEs a second to dst for seconds and returns
// the response times of those sent after warmup. With auth, the client
// answers the upstream's first challenge itself and sends every request
// with credentials for that nonce (nc counting up).
func runLatency(t *testing.T, dst string, rate, seconds, warmup int, auth bool, name string) latencyResult {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.5:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.UDPConn).SetReadBuffer(4 << 20)
	raddr, err := net.ResolveUDPAddr("udp", dst)
	if err != nil {
		t.Fatal(err)
	}
	local := conn.LocalAddr().String()
	uri := fmt.Sprintf("sip:%s@%s", benchUser, domain)
	msg := func(i int, authz string) []byte {
		var h string
		if authz != "" {
			h = "Proxy-Authorization: " + authz + "\r\n"
		}
		body := "latency probe"
		return fmt.Appendf(nil, "MESSAGE %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-lat%d;rport\r\nMax-Forwards: 70\r\n"+
			"From: <%s>;tag=lat%d\r\nTo: <%s>\r\nCall-ID: lat-%d@bench\r\nCSeq: 1 MESSAGE\r\n%sContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
			uri, local, i, uri, i, uri, i, h, len(body), body)
	}
	buf := make([]byte, 65535)
	var chal *digest.Challenge
	if auth {
		if _, err := conn.WriteTo(msg(-1, ""), raddr); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no challenge from %s: %v", dst, err)
		}
		for _, l := range strings.Split(string(buf[:n]), "\r\n") {
			if v, ok := strings.CutPrefix(l, "Proxy-Authenticate: "); ok {
				if chal, err = digest.ParseChallenge(v); err != nil {
					t.Fatalf("challenge %q: %v", v, err)
				}
			}
		}
		if chal == nil {
			t.Fatalf("%s answered without a challenge:\n%s", dst, buf[:n])
		}
	}
	total := rate * seconds
	sent := make([]time.Time, total)
	got := make([]time.Duration, total)
	var mu sync.Mutex
	done := make(chan struct{})
	arrived := make([]time.Duration, total)
	stamps := enableRxTimestamps(t, conn.(*net.UDPConn))
	go func() { // the receiver
		defer close(done)
		rbuf := make([]byte, 65535)
		oob := make([]byte, 128)
		for {
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, oobn, _, _, err := conn.(*net.UDPConn).ReadMsgUDP(rbuf, oob)
			now := time.Now()
			if err != nil {
				return
			}
			at := now
			if stamps {
				at = rxTimestamp(oob[:oobn], now)
			}
			m := rbuf[:n]
			if !bytes.HasPrefix(m, []byte("SIP/2.0 200")) {
				continue
			}
			i := bytes.Index(m, []byte("Call-ID: lat-"))
			if i < 0 {
				continue
			}
			rest := m[i+len("Call-ID: lat-"):]
			j := bytes.IndexByte(rest, '@')
			k, err := strconv.Atoi(string(rest[:max(j, 0)]))
			if err != nil || k < 0 || k >= total {
				continue
			}
			mu.Lock()
			if got[k] == 0 {
				got[k] = now.Sub(sent[k])
				arrived[k] = at.Sub(sent[k])
			}
			mu.Unlock()
		}
	}()
	start := time.Now()
	var lateSends int // requests that left over 2 ms after their time
	for i := range total {
		// Paced by the clock: request i leaves at start + i/rate.
		due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		} else if d < -2*time.Millisecond && i >= rate*warmup {
			lateSends++
		}
		authz := ""
		if chal != nil {
			cred, err := digest.Digest(chal, digest.Options{Method: "MESSAGE", URI: uri, Username: benchUser, Password: benchPass, Count: i + 1})
			if err != nil {
				t.Fatal(err)
			}
			authz = cred.String()
		}
		m := msg(i, authz)
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		if _, err := conn.WriteTo(m, raddr); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	r := latencyResult{name: name}
	mu.Lock()
	defer mu.Unlock()
	for i := rate * warmup; i < total; i++ {
		r.n++
		if got[i] == 0 {
			r.lost++
			continue
		}
		r.rtts = append(r.rtts, arrived[i])
		r.readRtts = append(r.readRtts, got[i])
	}
	if os.Getenv("AUTHPROXY_BENCH_OUTPUT") != "" {
		// When the slow ones were: per 100 ms of sending, how many took
		// over 2 ms and the slowest, for the windows that had any.
		bin := max(1, rate/10)
		var line strings.Builder
		for b0 := rate * warmup; b0 < total; b0 += bin {
			slow, worst := 0, time.Duration(0)
			for i := b0; i < min(b0+bin, total); i++ {
				if arrived[i] > 2*time.Millisecond {
					slow++
				}
				worst = max(worst, arrived[i])
			}
			if slow > 0 {
				fmt.Fprintf(&line, "%.1fs:%d/%v ", float64(b0)/float64(rate), slow, worst.Round(100*time.Microsecond))
			}
		}
		t.Logf("%s: %d requests left the client over 2 ms late; slow windows (start: requests over 2 ms/slowest): %s", name, lateSends, line.String())
	}
	slices.Sort(r.rtts)
	slices.Sort(r.readRtts)
	return r
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

// enableRxTimestamps asks the kernel to stamp each datagram conn receives
// with its arrival time (SO_TIMESTAMPNS), so that a response's time is when
// it reached the client's socket, not when the client's goroutine, which
// shares the machine's two cores with everything measured, got to read it.
func enableRxTimestamps(t *testing.T, conn *net.UDPConn) bool {
	t.Helper()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		t.Logf("no kernel receive timestamps (%v %v): response times are when the client read them", err, serr)
		return false
	}
	return true
}

// rxTimestamp returns the kernel's arrival stamp in a datagram's control
// messages, or fallback.
func rxTimestamp(oob []byte, fallback time.Time) time.Time {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return fallback
	}
	for _, m := range msgs {
		if m.Header.Level == syscall.SOL_SOCKET && m.Header.Type == syscall.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return time.Unix(sec, nsec)
		}
	}
	return fallback
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
