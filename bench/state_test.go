package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// registerRates are the steps of TestStateBackends' REGISTER search, in
// SIPp calls a second (each call is a REGISTER and its refresh on the same
// Call-ID: two requests).
var registerRates = []int{250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000}

// TestStateBackends compares the state backends ([state] backend) on the
// paths the store touches and on one it must not: the highest clean rate
// of REGISTERs (each 200 writes the client's binding to the store, and a
// shared store is read for the Call-ID's CSeq offset) and of challenged
// OPTIONS (nothing stored), through authproxy with the memory, file and
// redis backends in the same run, against the same Kamailio upstream.
//
//	AUTHPROXY_BENCH=1 go test ./bench -run 'TestStateBackends$' -v -timeout 60m
//
// AUTHPROXY_BENCH_STATE_BACKENDS (memory, file, redis; comma-separated)
// picks backends; AUTHPROXY_BENCH_REGISTER_RATES and
// AUTHPROXY_BENCH_OPTIONS_RATES the steps; AUTHPROXY_BENCH_STEP the
// seconds per step.
func TestStateBackends(t *testing.T) {
	if os.Getenv("AUTHPROXY_BENCH") != "1" {
		t.Skip("set AUTHPROXY_BENCH=1 to run the load benchmark (minutes)")
	}
	peers.Require(t, "kamailio", "sipp", "redis-server")
	step := stepDuration()
	upstream := startUpstream(t, "127.0.0.4:9") // INVITEs are not sent
	bin := authproxyBinary(t)
	rd := peers.StartRedis(t, peers.RedisConfig{})
	tables := map[string]string{
		"memory": "[state]\nbackend = \"memory\"\n",
		"file":   fmt.Sprintf("[state]\nbackend = \"file\"\ndir = %q\n", t.TempDir()),
		"redis":  fmt.Sprintf("[state]\nbackend = \"redis\"\n\n[state.redis]\naddress = %q\nprefix = \"bench:\"\n", rd.Addr()),
	}
	kinds := []struct {
		key, scenario string
		rates         []int
	}{
		{"register", "register.xml", rates(t, "AUTHPROXY_BENCH_REGISTER_RATES", registerRates)},
		{"options", "options.xml", rates(t, "AUTHPROXY_BENCH_OPTIONS_RATES", messageRates)},
	}
	var backends []string
	for _, b := range []string{"memory", "file", "redis"} {
		if selected("AUTHPROXY_BENCH_STATE_BACKENDS", b) {
			backends = append(backends, b)
		}
	}
	res := map[string]map[string]result{}
	for _, b := range backends {
		res[b] = map[string]result{}
		for _, k := range kinds {
			addr, proc := startAuthproxyAdmin(t, bin, upstream, "all", "", tables[b])
			sc := timedScenario(t, k.scenario)
			if k.key == "register" {
				sc = timedRegister(t)
			}
			res[b][k.key] = search(t, b+" "+k.key, k.rates, step, 0, proc, func(int) peers.SippRun {
				return peers.SippRun{Scenario: sc, Remote: addr, Domain: domain, Service: benchUser}
			})
			_ = proc.Stop()
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%s; %v steps; REGISTER steps %v calls/s (2 REGISTERs each); OPTIONS steps %v/s\n\n", machine(), step, kinds[0].rates, kinds[1].rates)
	sb.WriteString("| backend | REGISTER calls/s | vs memory | call p50 / p99 | OPTIONS/s | vs memory | OPTIONS p50 / p99 | CPU per 1k REGISTER calls |\n|---|---|---|---|---|---|---|---|\n")
	for _, b := range backends {
		r, o := res[b]["register"], res[b]["options"]
		fmt.Fprintf(&sb, "| %s | %s | %s | %v / %v | %s | %s | %v / %v | %v |\n", b,
			rateString(r, kind{rates: kinds[0].rates}), stateRatio(r, res["memory"]["register"]), r.p50, r.p99,
			rateString(o, kind{rates: kinds[1].rates}), stateRatio(o, res["memory"]["options"]), o.p50, o.p99,
			r.cpuPer1k.Round(time.Millisecond))
	}
	t.Log(sb.String())
}

// stateRatio is r's maximum over base's, "-" when either is unknown.
func stateRatio(r, base result) string {
	if r.rate == 0 || base.rate == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", float64(r.rate)/float64(base.rate))
}

// timedRegister is register.xml with SIPp's response-time measure 1
// stopped at the refresh's 200: a REGISTER call from its first request to
// its last answer.
func timedRegister(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(scenario("register.xml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	const last = `<recv response="200"/>`
	i := strings.LastIndex(s, last)
	if i < 0 {
		t.Fatal("register.xml has no 200 to time")
	}
	s = s[:i] + `<recv response="200" rtd="true"/>` + s[i+len(last):]
	p := filepath.Join(t.TempDir(), "register.xml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
