package peers

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SippRun describes one SIPp run for RunSipp.
type SippRun struct {
	// Scenario is the path of the scenario XML (-sf).
	Scenario string
	// Remote is the "host:port" SIPp sends to; it must be on loopback.
	Remote string
	// Local is the local loopback IP (-i); empty means "127.0.0.1".
	Local string
	// LocalPort is the local port (-p); zero picks a free one.
	LocalPort int
	// Transport is "u1" (UDP, one socket; the default) or "t1" (TCP, one
	// connection).
	Transport string
	// Calls is the number of calls to run (-m); zero means 1.
	Calls int
	// Rate is the number of new calls per second (-r); zero means 10.
	Rate int
	// Service is the user part of the Request-URI, [service] (-s).
	Service string
	// Domain is the [domain] keyword of this package's scenarios, the host
	// part of Request-URI, From and To (e.g. an upstream's domain). Empty
	// means the host of Remote.
	Domain string
	// AuthUser and AuthPass answer challenges in scenarios that use
	// [authentication] (-au, -ap). Keep them empty for the scenarios that
	// go through authproxy: the client has no password.
	AuthUser, AuthPass string
	// Keys are more [keyword] values (-key name value).
	Keys map[string]string
	// Extra is appended to the command line.
	Extra []string
	// Timeout bounds the whole run (SIPp's -timeout, counted as an error).
	// Zero means 20s. It is shorter than a UDP non-INVITE transaction's
	// Timer F (32s): on loopback, a proxy's challenge round trips take
	// milliseconds, and a test should not wait half a minute to fail.
	Timeout time.Duration
	// NoMessageTrace leaves out the message trace (Messages stays empty):
	// for runs of thousands of calls, read the counters instead.
	NoMessageTrace bool
}

func (r SippRun) timeout() time.Duration {
	if r.Timeout <= 0 {
		return 20 * time.Second
	}
	return r.Timeout
}

// SippResult is the outcome of RunSipp.
type SippResult struct {
	// ExitCode is SIPp's: 0 all calls succeeded, 1 at least one failed,
	// 97 stopped by an internal command, 99 no call processed, 255 (-1)
	// fatal error, 254 (-2) could not bind a socket. -1 when SIPp was
	// killed at the test's own deadline.
	ExitCode int
	// Successful and Failed are SIPp's cumulative call counters.
	Successful, Failed int
	// Counters are every counter of the last rows of SIPp's statistics
	// (-trace_stat) and message counts (-trace_counts), by column name:
	// the cumulative statistics end in "(C)" ("OutgoingCall(C)",
	// "FailedMaxUDPRetrans(C)", "Retransmissions(C)", ...); each scenario
	// element, numbered from 0, has "<index>_<method or status>_Sent" or
	// "_Recv", "_Retrans", "_Timeout" and "_Unexp" (e.g. "3_200_Recv").
	Counters map[string]int
	// Progress is the calls ended (successful or failed) at each row of
	// SIPp's statistics, by time since the run's start: one row a
	// -fd interval (60 s unless the run's Extra sets "-fd").
	Progress []SippProgress
	// Messages is the message trace (-trace_msg): every message SIPp sent
	// and received.
	Messages string
	// Errors is the unexpected-message trace (-trace_err).
	Errors string
	// Output is SIPp's stdout and stderr (its final statistics screen).
	Output string
	// Args is the command line, with the password redacted.
	Args     []string
	Duration time.Duration
}

// OK reports whether every call succeeded.
func (r SippResult) OK() bool { return r.ExitCode == 0 && r.Failed == 0 && r.Successful > 0 }

// String summarises the run for a failure message, with both traces.
func (r SippResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sipp %s\nexit %d, %d successful, %d failed, in %v\n",
		strings.Join(r.Args, " "), r.ExitCode, r.Successful, r.Failed, r.Duration.Round(time.Millisecond))
	if r.Errors != "" {
		fmt.Fprintf(&b, "--- unexpected messages ---\n%s\n", r.Errors)
	}
	fmt.Fprintf(&b, "--- message trace ---\n%s\n", r.Messages)
	if r.ExitCode != 0 {
		fmt.Fprintf(&b, "--- output ---\n%s\n", lastLines(r.Output, 40))
	}
	return b.String()
}

// RunSipp runs one SIPp scenario in the foreground until it finishes or
// times out and returns what happened; asserting on it is the caller's job.
// Trace files go into a directory under t.TempDir(). It fails the test only
// when SIPp cannot be started at all.
func RunSipp(t testing.TB, run SippRun) SippResult {
	t.Helper()
	bin, err := LookPath("sipp")
	if err != nil {
		t.Fatalf("peers: %v (call peers.Require first; %s)", err, InstallHint)
	}
	res := runSippOnce(t, bin, run)
	if res.ExitCode == sippExitBind && run.LocalPort == 0 {
		// The free port we picked was taken before SIPp bound it.
		t.Logf("peers: sipp could not bind its port, retrying once")
		res = runSippOnce(t, bin, run)
	}
	return res
}

// sippExitBind is SIPp's exit status -2, "fatal error binding a socket".
const sippExitBind = 254

func runSippOnce(t testing.TB, bin string, run SippRun) SippResult {
	t.Helper()
	args, dir, _, err := sippArgs(t, run, false)
	if err != nil {
		t.Fatalf("peers: RunSipp: %v", err)
	}
	// SIPp stops itself at -timeout; the context is the backstop.
	ctx, cancel := context.WithTimeout(t.Context(), run.timeout()+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 2 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err = cmd.Run()
	res := SippResult{Output: out.String(), Duration: time.Since(start), Args: redactArgs(args)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode() // -1 if killed by a signal
	default:
		t.Fatalf("peers: run sipp: %v", err)
	}
	res.readTraces(dir)
	return res
}

// readTraces fills in the traces and counters from SIPp's files in dir.
func (r *SippResult) readTraces(dir string) {
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return string(b)
	}
	r.Messages = read("messages.log")
	r.Errors = read("errors.log")
	stats := read("stats.csv")
	r.Counters = sippCounters(stats)
	r.Progress = sippProgress(stats)
	counts, _ := filepath.Glob(filepath.Join(dir, "*_counts.csv"))
	for _, name := range counts {
		b, _ := os.ReadFile(name)
		maps.Copy(r.Counters, sippCounters(string(b)))
	}
	r.Successful, r.Failed = r.Counters["SuccessfulCall(C)"], r.Counters["FailedCall(C)"]
}

// sippArgs builds SIPp's command line for run and makes its trace
// directory. It returns run with the defaults filled in. A server (a UAS
// started by StartSipp) may have no Remote.
func sippArgs(t testing.TB, run SippRun, server bool) (args []string, dir string, _ SippRun, err error) {
	t.Helper()
	if run.Scenario == "" {
		return nil, "", run, errors.New("no scenario")
	}
	scenario, err := filepath.Abs(run.Scenario)
	if err != nil {
		return nil, "", run, err
	}
	if _, err := os.Stat(scenario); err != nil {
		return nil, "", run, err
	}
	if run.Remote != "" || !server {
		if err := checkLoopbackAddr(run.Remote); err != nil {
			return nil, "", run, err
		}
	}
	if run.Local == "" {
		run.Local = "127.0.0.1"
	}
	if err := checkLoopback(run.Local); err != nil {
		return nil, "", run, err
	}
	if run.LocalPort == 0 {
		run.LocalPort = FreePort(t, run.Local)
	}
	switch run.Transport {
	case "":
		run.Transport = "u1"
	case "u1", "t1":
	default:
		return nil, "", run, fmt.Errorf("transport %q: want u1 or t1", run.Transport)
	}
	if run.Calls <= 0 {
		run.Calls = 1
	}
	if run.Rate <= 0 {
		run.Rate = 10
	}
	if run.Domain == "" {
		if run.Remote != "" {
			run.Domain, _, _ = net.SplitHostPort(run.Remote)
		} else {
			run.Domain = run.Local
		}
	}
	dir, err = os.MkdirTemp(t.TempDir(), "sipp-")
	if err != nil {
		return nil, "", run, err
	}
	if run.Remote != "" {
		args = append(args, run.Remote)
	}
	args = append(args,
		"-sf", scenario,
		"-i", run.Local,
		"-p", strconv.Itoa(run.LocalPort),
		"-t", run.Transport,
		"-m", strconv.Itoa(run.Calls),
		"-r", strconv.Itoa(run.Rate),
		"-key", "domain", run.Domain,
		"-nostdin",
		"-trace_err", "-error_file", filepath.Join(dir, "errors.log"),
		"-trace_stat", "-stf", filepath.Join(dir, "stats.csv"),
		"-trace_counts", // <scenario>_<pid>_counts.csv in dir
		"-timeout", fmt.Sprintf("%ds", max(1, int(run.timeout().Round(time.Second)/time.Second))),
		"-timeout_error",
		// Abort a call on an unexpected message (a relayed 401/407 must fail
		// the call), but send no BYE for it: a test that fails should show
		// the unexpected message, not what SIPp did about it.
		"-default_behaviors", "all,-bye",
	)
	if !run.NoMessageTrace {
		args = append(args, "-trace_msg", "-message_file", filepath.Join(dir, "messages.log"))
	}
	if run.Service != "" {
		args = append(args, "-s", run.Service)
	}
	if run.AuthUser != "" {
		args = append(args, "-au", run.AuthUser)
	}
	if run.AuthPass != "" {
		args = append(args, "-ap", run.AuthPass)
	}
	keys := make([]string, 0, len(run.Keys))
	for k := range run.Keys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		args = append(args, "-key", k, run.Keys[k])
	}
	args = append(args, run.Extra...)
	return args, dir, run, nil
}

func redactArgs(args []string) []string {
	out := slices.Clone(args)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "-ap" {
			out[i+1] = "[redacted]"
		}
	}
	return out
}

// sippCounters reads every integer column of the last row of SIPp's
// -trace_stat CSV (";"-separated), by column name.
func sippCounters(stats string) map[string]int {
	rows := sippStatRows(stats)
	if len(rows) < 2 {
		return map[string]int{}
	}
	head, last := rows[0], rows[len(rows)-1]
	out := make(map[string]int, len(head))
	for i, name := range head {
		if i >= len(last) || name == "" {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(last[i])); err == nil {
			out[name] = n
		}
	}
	return out
}

// sippStatRows splits a -trace_stat or -trace_counts CSV (";"-separated)
// into rows, its header first; nil when it cannot be read.
func sippStatRows(stats string) [][]string {
	r := csv.NewReader(strings.NewReader(stats))
	r.Comma = ';'
	r.FieldsPerRecord = -1
	r.LazyQuotes = true
	rows, err := r.ReadAll()
	if err != nil {
		return nil
	}
	return rows
}

// SippProgress is one row of SIPp's statistics: Ended calls (successful
// and failed) At a time since the run's start.
type SippProgress struct {
	At    time.Duration
	Ended int
}

// EndedBy returns the time at which at least n calls had ended, as the
// first statistics row that counted them (so up to one -fd interval
// late), and false when no row did.
func (r SippResult) EndedBy(n int) (time.Duration, bool) {
	for _, p := range r.Progress {
		if p.Ended >= n {
			return p.At, true
		}
	}
	return 0, false
}

// sippProgress reads the rows of a -trace_stat CSV: StartTime and
// CurrentTime are "date<TAB>time<TAB>epoch seconds".
func sippProgress(stats string) []SippProgress {
	rows := sippStatRows(stats)
	if len(rows) < 2 {
		return nil
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	field := func(row []string, name string) (string, bool) {
		i, ok := col[name]
		if !ok || i >= len(row) {
			return "", false
		}
		return strings.TrimSpace(row[i]), true
	}
	epoch := func(row []string, name string) (float64, bool) {
		v, ok := field(row, name)
		if !ok {
			return 0, false
		}
		parts := strings.Split(v, "\t")
		f, err := strconv.ParseFloat(parts[len(parts)-1], 64)
		return f, err == nil
	}
	var out []SippProgress
	for _, row := range rows[1:] {
		start, ok1 := epoch(row, "StartTime")
		now, ok2 := epoch(row, "CurrentTime")
		ok, okf := field(row, "SuccessfulCall(C)")
		failed, oks := field(row, "FailedCall(C)")
		nok, err1 := strconv.Atoi(ok)
		nfailed, err2 := strconv.Atoi(failed)
		if !ok1 || !ok2 || !okf || !oks || err1 != nil || err2 != nil {
			continue
		}
		out = append(out, SippProgress{At: time.Duration((now - start) * float64(time.Second)), Ended: nok + nfailed})
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
