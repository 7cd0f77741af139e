// Package bench measures authproxy under load against a real upstream:
// Kamailio on loopback challenging every out-of-dialog request with a 407,
// SIPp as the load generator. It is not part of go test ./...: the test
// skips unless AUTHPROXY_BENCH=1.
//
// Run (see README.md "Performance"):
//
//	AUTHPROXY_BENCH=1 go test ./bench -run TestBench -v -timeout 30m
//
// AUTHPROXY_BENCH_STEP sets the seconds per rate step (default 10; the
// issue's figure is 30).
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

const (
	benchUser = "bench"
	benchPass = "bench-Pw-0f3a"
	domain    = "pbx.bench"
)

// rates are the steps of the search, in requests per second: each is run
// for the step duration, and the highest with < 0.1 % failures is kept.
var rates = []int{250, 500, 1000, 1500, 2000, 3000}

func stepDuration() time.Duration {
	if s, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_STEP")); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 10 * time.Second
}

// TestBench prints a table: for each configuration, the highest rate of
// challenged MESSAGEs sustained with < 0.1 % failures, and authproxy's CPU
// time per 1,000 requests and peak RSS.
func TestBench(t *testing.T) {
	if os.Getenv("AUTHPROXY_BENCH") != "1" {
		t.Skip("set AUTHPROXY_BENCH=1 to run the load benchmark (minutes)")
	}
	peers.Require(t, "kamailio", "sipp")
	k := peers.StartKamailio(t, peers.KamailioConfig{Host: "127.0.0.2", Realm: "asterisk", Users: map[string]string{benchUser: benchPass}})
	bin := buildAuthproxy(t)
	step := stepDuration()

	type row struct {
		name      string
		rate      int
		cpuPer1k  time.Duration
		rssMB     float64
		succeeded int
		failed    int
	}
	var rows []row
	for _, c := range []struct {
		name       string
		preemptive string // "" means SIPp straight to Kamailio
	}{
		{"sipp → kamailio (no proxy, sipp answers 407)", ""},
		{"sipp → authproxy (preemptive off) → kamailio", "off"},
		{"sipp → authproxy (preemptive all) → kamailio", "all"},
	} {
		r := row{name: c.name}
		var ap *peers.Process
		target := k.Addr()
		run := peers.SippRun{Scenario: scenario("message_auth.xml"), AuthUser: benchUser, AuthPass: benchPass, Domain: domain, Service: benchUser}
		if c.preemptive != "" {
			ap, target = startAuthproxy(t, bin, k.Addr(), c.preemptive)
			run = peers.SippRun{Scenario: scenario("message.xml"), Domain: domain, Service: benchUser}
		}
		run.Remote = target
		for _, rate := range rates {
			run.Rate, run.Calls, run.Timeout = rate, rate*int(step/time.Second), step+20*time.Second
			run.Extra = []string{"-l", strconv.Itoa(rate * 4)}
			cpu0 := cpuTime(ap)
			res := peers.RunSipp(t, run)
			cpu := cpuTime(ap) - cpu0
			total := res.Successful + res.Failed
			ok := total >= run.Calls && res.Failed*1000 < total
			t.Logf("%s: %d/s for %v: %d ok, %d failed, exit %d, authproxy cpu %v", c.name, rate, step, res.Successful, res.Failed, res.ExitCode, cpu)
			if !ok {
				break
			}
			r.rate, r.succeeded, r.failed = rate, res.Successful, res.Failed
			if ap != nil && total > 0 {
				r.cpuPer1k = cpu * 1000 / time.Duration(total)
			}
		}
		if ap != nil {
			r.rssMB = peakRSSMB(ap)
			ap.Stop()
		}
		rows = append(rows, r)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nchallenged MESSAGE, UDP, %v steps of %v/s\n", step, rates)
	fmt.Fprintf(&b, "| configuration | max rate (< 0.1%% failed) | authproxy CPU per 1,000 req | authproxy peak RSS |\n|---|---|---|---|\n")
	for _, r := range rows {
		cpu, rss := "–", "–"
		if r.rssMB > 0 {
			cpu, rss = r.cpuPer1k.Round(time.Millisecond).String(), fmt.Sprintf("%.1f MB", r.rssMB)
		}
		fmt.Fprintf(&b, "| %s | %d/s | %s | %s |\n", r.name, r.rate, cpu, rss)
	}
	t.Log(b.String())
}

func scenario(name string) string {
	p, err := filepath.Abs(filepath.Join("..", "e2e", "testdata", "sipp", name))
	if err != nil {
		panic(err)
	}
	return p
}

func buildAuthproxy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "authproxy")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/authproxy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startAuthproxy runs the binary between SIPp and Kamailio and returns it
// with its UDP address.
func startAuthproxy(t *testing.T, bin, upstream, preemptive string) (*peers.Process, string) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	conf := fmt.Sprintf(`[log]
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
`, addr, upstream, domain, preemptive, benchUser, benchPass)
	dir := t.TempDir()
	path := filepath.Join(dir, "authproxy.toml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := peers.StartProcess(t, peers.ProcessConfig{Name: "authproxy", Path: bin, Args: []string{"-config", path}, Dir: dir})
	// Ready when it answers an OPTIONS to itself; SIPp's first requests
	// retransmit meanwhile anyway, so a short bounded wait is enough.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		res := peers.RunSipp(t, peers.SippRun{Scenario: scenario("message.xml"), Remote: addr, Domain: domain, Service: benchUser, Timeout: 3 * time.Second})
		if res.OK() {
			return p, addr
		}
	}
	t.Fatalf("authproxy not answering\n%s", p.Output())
	return nil, ""
}

// cpuTime is the user+system CPU time of p so far (0 for nil).
func cpuTime(p *peers.Process) time.Duration {
	if p == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid()))
	if err != nil {
		return 0
	}
	// Fields after the ")" that ends the command name; utime and stime are
	// fields 14 and 15 of proc(5), in clock ticks (100/s on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// peakRSSMB is VmHWM of p, in MB.
func peakRSSMB(p *peers.Process) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb) / 1024
		}
	}
	return 0
}
