package bench

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// kind is a load TestBench offers every path: out-of-dialog OPTIONS or
// MESSAGE (one transaction, challenged by the upstream like any
// out-of-dialog request) or INVITE-ACK-BYE calls.
type kind struct {
	key   string // for AUTHPROXY_BENCH_KINDS
	label string // in the table's column heads
	// scenario goes through a proxy without credentials; authScenario
	// goes straight to the upstream and answers the 407 itself (-au/-ap).
	scenario, authScenario string
	service                string
	keys                   map[string]string
	rates                  []int
	ring                   time.Duration // the callee's ringing in the response time (uas.xml)
	latency                string        // the column head of its response time
	perCPU                 string        // the unit of the CPU column
}

// benchKinds returns the kinds TestBench can run, their rate steps read
// from the environment. message runs only when AUTHPROXY_BENCH_KINDS
// names it: OPTIONS answers the same question (a challenged out-of-dialog
// request) for the ratios.
func benchKinds(t *testing.T) []kind {
	t.Helper()
	msgRates := rates(t, "AUTHPROXY_BENCH_MESSAGE_RATES", messageRates)
	return []kind{
		{key: "options", label: "challenged OPTIONS", scenario: "options.xml", authScenario: "options_auth.xml", service: benchUser,
			rates: rates(t, "AUTHPROXY_BENCH_OPTIONS_RATES", msgRates), latency: "OPTIONS p50 / p99", perCPU: "1k OPTIONS"},
		{key: "message", label: "challenged MESSAGE", scenario: "message.xml", authScenario: "message_auth.xml", service: benchUser,
			rates: msgRates, latency: "MESSAGE p50 / p99", perCPU: "1k MESSAGE"},
		{key: "call", label: "call", scenario: "call.xml", authScenario: "call_auth.xml", service: "1002", keys: map[string]string{"caller": benchUser},
			rates: rates(t, "AUTHPROXY_BENCH_CALL_RATES", callRates), ring: 100 * time.Millisecond, latency: "INVITE→200 p50 / p99", perCPU: "1k calls"},
	}
}

// selectedKind reports whether TestBench runs k: the ones
// AUTHPROXY_BENCH_KINDS names, or options and call when it is unset.
func selectedKind(k kind) bool {
	if os.Getenv("AUTHPROXY_BENCH_KINDS") == "" {
		return k.key != "message"
	}
	return selected("AUTHPROXY_BENCH_KINDS", k.key)
}

// runKind searches the highest clean rate of kind k through path p to
// upstream.
func runKind(t *testing.T, p path, k kind, upstream string, step time.Duration) result {
	t.Helper()
	addr, proc := upstream, (*peers.Process)(nil)
	if p.start != nil {
		addr, proc = p.start(t)
		defer proc.Stop()
		if cores := proxyCPUBudget(t); cores > 0 {
			limitCPU(t, proc, cores)
		}
	}
	sc := timedScenario(t, k.scenario)
	if p.start == nil {
		sc = timedScenario(t, k.authScenario)
	}
	name := p.name + " " + strings.TrimPrefix(k.label, "challenged ")
	return search(t, name, k.rates, step, k.ring, proc, func(rate int) peers.SippRun {
		run := peers.SippRun{Scenario: sc, Remote: addr, Domain: domain, Service: k.service, Keys: k.keys, Transport: p.sippTransport}
		if p.start == nil {
			run.AuthUser, run.AuthPass = benchUser, benchPass
		}
		return run
	})
}

// benchMaxima holds, by path key, the highest request rate (OPTIONS, or
// MESSAGE when OPTIONS did not run) TestBench found in this process:
// TestLatency with AUTHPROXY_BENCH_LATENCY=half measures at half of it.
var benchMaxima = map[string]result{}

// recordMaxima keeps the request maxima of this run in benchMaxima.
func recordMaxima(paths []path, kinds []kind, res map[string]map[string]result) {
	for _, k := range kinds {
		if k.key == "call" {
			continue
		}
		for _, p := range paths {
			benchMaxima[p.key] = res[p.key][k.key]
		}
		return // the first request kind: options before message
	}
}

// rateString is r's maximum, "≥" when it passed the highest step tried
// (the search did not find the limit) and "under" the first step when
// that one failed.
func rateString(r result, k kind) string {
	switch {
	case r.rate == 0:
		return fmt.Sprintf("< %d/s", k.rates[0])
	case r.top:
		return fmt.Sprintf("≥ %d/s", r.rate)
	}
	return fmt.Sprintf("%d/s", r.rate)
}

// writeTable writes TestBench's table: a row per path, three columns per
// kind run, the proxy's peak RSS.
func writeTable(b *strings.Builder, paths []path, kinds []kind, res map[string]map[string]result) {
	b.WriteString("| path |")
	for _, k := range kinds {
		fmt.Fprintf(b, " %s max rate | %s | proxy CPU / %s |", k.label, k.latency, k.perCPU)
	}
	b.WriteString(" proxy peak RSS |\n|---|")
	b.WriteString(strings.Repeat("---|---|---|", len(kinds)))
	b.WriteString("---|\n")
	lat := func(r result) string {
		return r.p50.Round(10*time.Microsecond).String() + " / " + r.p99.Round(10*time.Microsecond).String()
	}
	for _, p := range paths {
		fmt.Fprintf(b, "| %s |", p.name)
		rss := 0.0
		for _, k := range kinds {
			r := res[p.key][k.key]
			cpu, rt := "–", "–"
			if r.rate > 0 {
				rt = lat(r)
				if p.start != nil {
					cpu = r.cpuPer1k.Round(time.Millisecond).String()
				}
			}
			fmt.Fprintf(b, " %s | %s | %s |", rateString(r, k), rt, cpu)
			rss = max(rss, r.rssMB)
		}
		if rss > 0 {
			fmt.Fprintf(b, " %.0f MB |\n", rss)
		} else {
			b.WriteString(" – |\n")
		}
	}
}

// A ratio is one of authproxy's performance goals: the maximum rate of path num over
// that of path den, for one kind, against a goal.
type ratio struct {
	what     string
	kind     string // options (message when options did not run) or call
	num, den string // path keys
	goal     float64
}

// goals are authproxy's targets, from one run against the Kamailio
// reference: every request challenged (preemptive off) ≥ 1.5× Kamailio
// for requests and calls; the default (preemptive all) ≥ 2× Kamailio and
// ≥ 0.9× the no-proxy ceiling for requests, ≥ 1.5× Kamailio for calls.
var goals = []ratio{
	{what: "default / Kamailio", kind: "options", num: "all", den: "kamailio", goal: 2},
	{what: "default / no-proxy ceiling", kind: "options", num: "all", den: "direct", goal: 0.9},
	{what: "every request challenged / Kamailio", kind: "options", num: "off", den: "kamailio", goal: 1.5},
	{what: "default / Kamailio", kind: "call", num: "all", den: "kamailio", goal: 1.5},
	{what: "every request challenged / Kamailio", kind: "call", num: "off", den: "kamailio", goal: 1.5},
}

// writeRatios writes the goals' ratios from the maxima of this run, each
// with its verdict. A maximum at the highest step tried is a lower bound,
// one under the first step an upper bound: the verdict says so when that
// leaves it open. Ratios whose paths or kind did not run are left out.
func writeRatios(b *strings.Builder, kinds []kind, res map[string]map[string]result) {
	ran := map[string]kind{}
	for _, k := range kinds {
		ran[k.key] = k
	}
	var rows []string
	for _, g := range goals {
		k, ok := ran[g.kind]
		if !ok && g.kind == "options" {
			k, ok = ran["message"]
		}
		num, okN := res[g.num][k.key]
		den, okD := res[g.den][k.key]
		if !ok || !okN || !okD {
			continue
		}
		value, verdict := judge(num, den, k, g.goal)
		rows = append(rows, fmt.Sprintf("| %s, %s | %s / %s | %s | ≥ %.1f× | %s |",
			strings.TrimPrefix(k.label, "challenged "), g.what, rateString(num, k), rateString(den, k), value, g.goal, verdict))
	}
	if len(rows) == 0 {
		return
	}
	b.WriteString("\nRatios of the maxima above (goals of authproxy; figures of this run, not a test verdict):\n\n")
	b.WriteString("| ratio | rates | value | goal | verdict |\n|---|---|---|---|---|\n")
	b.WriteString(strings.Join(rows, "\n") + "\n")
}

// judge returns num/den as text and whether it meets goal: "pass",
// "fail", or "open" when a bound of the search leaves it undecided.
func judge(num, den result, k kind, goal float64) (value, verdict string) {
	// A rate under the first step is somewhere in [0, first step).
	lowN, highN := bounds(num, k)
	lowD, highD := bounds(den, k)
	lo := lowN / highD // 0 when den passed every step
	hi := highN / lowD // +Inf when num passed every step or den none
	switch {
	case lo >= goal:
		value = times(lo)
		if hi != lo {
			value = "≥ " + value
		}
		return value, "pass"
	case hi < goal:
		value = times(hi)
		if hi != lo {
			value = "≤ " + value
		}
		return value, "fail"
	}
	return fmt.Sprintf("%s–%s", times(lo), times(hi)), "open: widen the steps"
}

// times formats a ratio, ∞ for an unbounded one.
func times(x float64) string {
	if math.IsInf(x, 1) {
		return "∞"
	}
	return fmt.Sprintf("%.2f×", x)
}

// bounds returns the interval r's true maximum lies in, as far as the
// steps tell: [rate, rate] for a failed step above it (the steps' own
// granularity aside), [rate, +Inf) when every step passed, [0, first step)
// when none did.
func bounds(r result, k kind) (low, high float64) {
	switch {
	case r.rate == 0:
		return 0, float64(k.rates[0])
	case r.top:
		return float64(r.rate), math.Inf(1)
	}
	return float64(r.rate), float64(r.rate)
}
