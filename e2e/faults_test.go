package e2e

// Fault tests against the built binary: calls and MESSAGEs through
// authproxy to a challenging Kamailio over a lossy, jittery path; the
// upstream crashing and restarting under load; authproxy itself crashing
// and restarting under load. Loss and delay come from
// internal/lossyrelay (the machines have no netem).

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/lossyrelay"
	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
)

// Loopback hosts of the fault tests' relays.
const (
	faultsClientRelayHost   = "127.0.0.9"  // SIPp → authproxy
	faultsUpstreamRelayHost = "127.0.0.10" // authproxy → Kamailio
)

// faultsTOML is authproxy for the fault tests: one UDP listener, the admin
// listener (for /status), pbx-a at upstream, info logs (one line per
// request) and no per-source limits (every request comes from one SIPp).
// Challenges are answered on every request (preemptive off), so each one
// crosses the lossy path twice.
func faultsTOML(listen, admin, upstream string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `[log]
level = "info"
format = "json"

[proxy]
shutdown_grace = "1s"

[admin]
address = %s

[limits]
rate = 0
max_per_source = 0
auth_failures = 0

[[listen]]
transport = "udp"
address = %s

[[upstream]]
name = "pbx-a"
address = %s
transport = "udp"
domains = [%s]
preemptive = "off"

`, tomlString(admin), tomlString(listen), tomlString(upstream), tomlString(upstreamA.domain))
	for _, c := range credentialsFor(upstreamA) {
		fmt.Fprintf(&b, "[[credential]]\nusername = %s\npassword = %s\nserver = %s\nrealm = %s\nuser = %s\n\n",
			tomlString(c.username), tomlString(c.password), tomlString(c.server), tomlString(c.realm), tomlString(c.user))
	}
	return b.String()
}

// faultsAddrs picks free loopback ports for authproxy's SIP and admin
// listeners, so that a restarted authproxy binds the same ones.
func faultsAddrs(t *testing.T) (listen, admin string) {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1")), fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
}

// adminStatus is the part of GET /status the fault tests read.
type adminStatus struct {
	InFlight int `json:"in_flight"`
	Dialogs  int `json:"dialogs"`
}

// statusOf fetches authproxy's /status; ok is false when it cannot.
func statusOf(admin string) (st adminStatus, ok bool) {
	c := http.Client{Timeout: 5 * time.Second}
	res, err := c.Get("http://" + admin + "/status")
	if err != nil {
		return st, false
	}
	defer res.Body.Close()
	return st, res.StatusCode == http.StatusOK && json.NewDecoder(res.Body).Decode(&st) == nil
}

// startRelay starts a lossy relay on host in front of peer; the test's
// end stops it.
func startRelay(t *testing.T, host, peer string, loss float64, jitter time.Duration, seed uint64) *lossyrelay.Relay {
	t.Helper()
	r, err := lossyrelay.Start(t.Context(), lossyrelay.Config{Listen: host + ":0", Peer: peer, Loss: loss, Jitter: jitter, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// runSippAsync runs RunSipp on a goroutine of its own; the result arrives
// on the channel.
func runSippAsync(t *testing.T, run peers.SippRun) <-chan peers.SippResult {
	t.Helper()
	ch := make(chan peers.SippResult, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	t.Cleanup(wg.Wait)
	go func() {
		defer wg.Done()
		ch <- peers.RunSipp(t, run)
	}()
	return ch
}

// sippTolerant are SIPp's options for the *_tolerant.xml scenarios: an
// unexpected message (a provisional response overtaken by the final one on
// a jittery path, a retransmission that crossed the answer) is logged, not
// a failure; and a request is retransmitted for longer than Timer F (T1
// 500 ms doubling to T2 4 s, 11 times: 39.5 s), so that authproxy's 408 at
// Timer F can reach it.
var sippTolerant = []string{"-default_behaviors", "none", "-max_non_invite_retrans", "11"}

// TestFaultsLossyPath runs 1,000 calls (INVITE, 407 answered by authproxy,
// 180, 200, ACK, BYE) and 5,000 MESSAGEs (each challenged) from SIPp through
// authproxy to Kamailio, with 2 % loss and 0–20 ms of jitter per datagram
// on both legs: SIPp ↔ authproxy and authproxy ↔ Kamailio (which
// advertises its relay, so that the ACK and BYE take it too). Every call
// and MESSAGE must end with a final response (retransmissions make up for
// the losses), every call the callee answered must get its BYE, and
// authproxy must be left with no dialog and nothing in flight.
func TestFaultsLossyPath(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	const (
		calls, callRate       = 1000, 40 // 25 s
		messages, messageRate = 5000, 200
		loss, jitter          = 0.02, 20 * time.Millisecond
	)
	uasPort := peers.FreePort(t, callsInteropUASHost)
	uasAddr := fmt.Sprintf("%s:%d", callsInteropUASHost, uasPort)
	kPort := peers.FreePort(t, upstreamA.host)
	upRelay := startRelay(t, faultsUpstreamRelayHost, fmt.Sprintf("%s:%d", upstreamA.host, kPort), loss, jitter, 1)
	k := peers.StartKamailio(t, peers.KamailioConfig{
		Host: upstreamA.host, Port: kPort, Users: upstreamA.users(), StrictURI: true,
		RelayTo: uasAddr, Advertise: upRelay.Addr(), Children: 4, SharedMemoryMB: 256,
	})
	listen, admin := faultsAddrs(t)
	peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: faultsTOML(listen, admin, upRelay.Addr())})
	clientRelay := startRelay(t, faultsClientRelayHost, listen, loss, jitter, 2)

	uas := peers.StartSipp(t, peers.SippRun{
		Scenario: sippScenario("uas_tolerant.xml"), Local: callsInteropUASHost, LocalPort: uasPort,
		Service: callsInteropCallee, Calls: calls, Timeout: 3 * time.Minute, NoMessageTrace: true,
		Extra: []string{"-fd", "1", "-default_behaviors", "none"},
	})
	start := time.Now()
	callsDone := runSippAsync(t, peers.SippRun{
		Scenario: sippScenario("call_tolerant.xml"), Remote: clientRelay.Addr(), Service: callsInteropCallee,
		Domain: upstreamA.domain, Keys: map[string]string{"caller": callsInteropCaller},
		Calls: calls, Rate: callRate, Timeout: 2 * time.Minute, NoMessageTrace: true, Extra: sippTolerant,
	})
	msgs := peers.RunSipp(t, peers.SippRun{
		Scenario: sippScenario("message_tolerant.xml"), Remote: clientRelay.Addr(), Service: callsInteropCaller,
		Domain: upstreamA.domain, Calls: messages, Rate: messageRate, Timeout: 2 * time.Minute,
		NoMessageTrace: true, Extra: sippTolerant,
	})
	cl := <-callsDone
	took := time.Since(start)

	// What the callee answered must have been hung up: every call the
	// UAS took has ended, none of them failed (a UAS call fails when its
	// 200 is never ACKed or its BYE never comes).
	answered := cl.Counters["8_200_Recv"]
	uasErr := testutil.Wait(t.Context(), testutil.EventuallyLimit, func() bool {
		c := uas.Counters()
		return c["CurrentCall"] == 0 && c["IncomingCall(C)"] > 0 && c["SuccessfulCall(C)"]+c["FailedCall(C)"] == c["IncomingCall(C)"]
	})
	uc := uas.Stop().Counters
	var st adminStatus
	statusErr := testutil.Wait(t.Context(), testutil.EventuallyLimit, func() bool {
		var ok bool
		st, ok = statusOf(admin)
		return ok && st.Dialogs == 0 && st.InFlight == 0
	})

	callErrors, byeErrors := map[string]int{}, map[string]int{}
	for i, code := range []string{"408", "480", "486", "500", "503"} {
		if n := cl.Counters[fmt.Sprintf("%d_%s_Recv", 3+i, code)]; n > 0 {
			callErrors[code] = n
		}
	}
	for i, code := range []string{"408", "481", "500", "503"} {
		if n := cl.Counters[fmt.Sprintf("%d_%s_Recv", 12+i, code)]; n > 0 {
			byeErrors[code] = n
		}
	}
	msgErrors := map[string]int{"408": msgs.Counters["2_408_Recv"], "503": msgs.Counters["3_503_Recv"]}
	t.Logf("%d calls and %d MESSAGEs in %v, %.0f%% loss and 0-%v jitter each way on both legs", calls, messages, took.Round(time.Second), loss*100, jitter)
	t.Logf("calls: %d answered (%d BYEs answered 200, errors %v), %d ended with an error response %v, %d failed; SIPp caller retransmissions %d, callee %d",
		answered, cl.Counters["16_200_Recv"], byeErrors, cl.Successful-answered, callErrors, cl.Failed, cl.Counters["Retransmissions(C)"], uc["Retransmissions(C)"])
	t.Logf("callee: %d calls taken, %d completed, %d failed", uc["IncomingCall(C)"], uc["SuccessfulCall(C)"], uc["FailedCall(C)"])
	t.Logf("MESSAGEs: %d answered 200, errors %v, %d failed; SIPp retransmissions %d",
		msgs.Counters["4_200_Recv"], msgErrors, msgs.Failed, msgs.Counters["Retransmissions(C)"])
	for name, r := range map[string]*lossyrelay.Relay{"SIPp-authproxy": clientRelay, "authproxy-Kamailio": upRelay} {
		s := r.Stats()
		t.Logf("path %s: %d of %d datagrams dropped toward the server, %d of %d back",
			name, s.ToPeer.Dropped, s.ToPeer.Received, s.FromPeer.Dropped, s.FromPeer.Received)
		if s.ToPeer.Dropped == 0 || s.FromPeer.Dropped == 0 {
			t.Errorf("path %s dropped nothing one way: %+v; the test proves little", name, s)
		}
	}

	if uasErr != nil {
		t.Errorf("the callee still has %d calls up (%d taken, %d completed, %d failed)", uc["CurrentCall"], uc["IncomingCall(C)"], uc["SuccessfulCall(C)"], uc["FailedCall(C)"])
	}
	if statusErr != nil {
		t.Errorf("authproxy's /status: %d dialogs, %d requests in flight; want none", st.Dialogs, st.InFlight)
	}
	if cl.Successful != calls || cl.Failed != 0 {
		t.Errorf("calls: %d ended with a final response, %d failed; want all %d to end with one\nunexpected messages: %v\n%s",
			cl.Successful, cl.Failed, calls, unexpectedMessages(cl.Errors), lastLinesOf(cl.Output, 30))
	}
	if msgs.Successful != messages || msgs.Failed != 0 {
		t.Errorf("MESSAGEs: %d ended with a final response, %d failed; want all %d to end with one\nunexpected messages: %v\n%s",
			msgs.Successful, msgs.Failed, messages, unexpectedMessages(msgs.Errors), lastLinesOf(msgs.Output, 30))
	}
	if uc["FailedCall(C)"] != 0 || uc["SuccessfulCall(C)"] != answered {
		t.Errorf("callee: %d calls completed with their BYE, %d failed; want the %d the caller saw answered, none failed",
			uc["SuccessfulCall(C)"], uc["FailedCall(C)"], answered)
	}
	if answered < calls/2 {
		t.Errorf("only %d of %d calls answered: the path is too bad for the test to mean anything", answered, calls)
	}
	for _, e := range k.Events() {
		if e.Result == "fail" {
			t.Errorf("Kamailio rejected credentials: %+v", e)
			break
		}
	}
}

// unexpectedMessages counts the messages SIPp's error trace shows as
// unexpected, by where the call was and the message's first line.
func unexpectedMessages(errs string) map[string]int {
	out := map[string]int{}
	for _, part := range strings.Split(errs, "Continuing call on unexpected message")[1:] {
		where, rest, _ := strings.Cut(part, "received '")
		if _, w, ok := strings.Cut(where, "': "); ok {
			where = strings.TrimSpace(w)
		}
		first, _, _ := strings.Cut(rest, "\n")
		out[strings.TrimSuffix(where, ",")+": "+strings.TrimSpace(first)]++
	}
	return out
}

// lastLinesOf returns the last n lines of s.
func lastLinesOf(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestFaultsUpstreamRestart: Kamailio, the upstream, crashes (SIGKILL to
// all its processes) in the middle of a run of MESSAGEs through authproxy
// and is started again on the same address (with the same nonce secret, as
// a PBX keeps across restarts). A MESSAGE in flight meanwhile ends with a
// final response: 200 once a retransmission reaches the new Kamailio, or
// authproxy's 408 at Timer F (or 503), which the scenario accepts; every
// MESSAGE sent after the restart gets its 200.
func TestFaultsUpstreamRestart(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	const messages, rate = 600, 40
	k := peers.StartKamailio(t, peers.KamailioConfig{
		Host: upstreamA.host, Port: peers.FreePort(t, upstreamA.host), Users: upstreamA.users(),
		StrictURI: true, Secret: peers.NewToken(16),
	})
	listen, admin := faultsAddrs(t)
	peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: faultsTOML(listen, admin, k.Addr())})
	done := runSippAsync(t, peers.SippRun{
		Scenario: sippScenario("message_tolerant.xml"), Remote: listen, Service: callsInteropCaller,
		Domain: upstreamA.domain, Calls: messages, Rate: rate, Timeout: 2 * time.Minute, Extra: sippTolerant,
	})
	testutil.Eventually(t, "Kamailio to accept 100 MESSAGEs", func() bool { return acceptedBy(k) >= 100 })
	if err := k.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	testutil.Eventually(t, "MESSAGEs in flight toward the dead upstream", func() bool {
		st, ok := statusOf(admin)
		return ok && st.InFlight >= 5
	})
	k = peers.StartKamailio(t, k.Config())
	restartedAt := time.Now()
	res := <-done

	calls := sippCalls(t, res.Messages)
	outcomes := map[string]map[int]int{} // before, during, after the outage → status → calls
	for id, c := range calls {
		when := "before"
		switch {
		case c.sent.After(restartedAt):
			when = "after"
			if c.final != 200 {
				t.Errorf("MESSAGE %s, sent after the restart, got %d; want 200", id, c.final)
			}
		case c.sent.After(killedAt):
			when = "during"
		}
		if outcomes[when] == nil {
			outcomes[when] = map[int]int{}
		}
		outcomes[when][c.final]++
	}
	t.Logf("Kamailio down for %v; MESSAGEs by when they were sent (status: count): before the crash %v, during the outage %v, after the restart %v; SIPp retransmissions %d, run %v",
		restartedAt.Sub(killedAt).Round(time.Millisecond), outcomes["before"], outcomes["during"], outcomes["after"],
		res.Counters["Retransmissions(C)"], res.Duration.Round(time.Second))
	if res.Successful != messages || res.Failed != 0 || len(calls) != messages {
		t.Errorf("%d MESSAGEs ended with a final response, %d failed, %d traced; want all %d to end with one\n%s",
			res.Successful, res.Failed, len(calls), messages, lastLinesOf(res.Output, 30))
	}
	if outcomes["after"][200] == 0 {
		t.Errorf("no MESSAGE was sent after the restart: the test proves little")
	}
	for status := range outcomes["before"] {
		if status != 200 && status != 408 && status != 503 {
			t.Errorf("a MESSAGE ended with %d; want 200, 408 or 503", status)
		}
	}
}

// acceptedBy counts the requests k accepted with valid credentials.
func acceptedBy(k *peers.Kamailio) int {
	n := 0
	for _, e := range k.Events() {
		if e.Result == "ok" {
			n++
		}
	}
	return n
}

// TestFaultsAuthproxyRestart: authproxy itself crashes (SIGKILL) under a
// run of MESSAGEs and is started again on the same addresses. It serves
// again, and every MESSAGE ends with a final response: the client's
// retransmissions reach the new process. The time from the new process's
// start to its first answered request is logged, not asserted.
func TestFaultsAuthproxyRestart(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	const messages, rate = 600, 40
	k := peers.StartKamailio(t, peers.KamailioConfig{Host: upstreamA.host, Users: upstreamA.users(), StrictURI: true})
	listen, admin := faultsAddrs(t)
	conf := faultsTOML(listen, admin, k.Addr())
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: conf})
	done := runSippAsync(t, peers.SippRun{
		Scenario: sippScenario("message_tolerant.xml"), Remote: listen, Service: callsInteropCaller,
		Domain: upstreamA.domain, Calls: messages, Rate: rate, Timeout: 2 * time.Minute,
		NoMessageTrace: true, Extra: sippTolerant,
	})
	testutil.Eventually(t, "authproxy to answer 100 MESSAGEs", func() bool { return len(answeredAt(ap.Logs())) >= 100 })
	if err := ap.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ap = peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: conf})
	ready := time.Since(start)
	var answers []time.Time
	testutil.Eventually(t, "the restarted authproxy to answer a request", func() bool {
		answers = answeredAt(ap.Logs())
		return len(answers) > 0
	})
	res := <-done
	t.Logf("authproxy restarted: ready %v after its start, first request answered %v after it; it answered %d MESSAGEs in all",
		ready.Round(time.Millisecond), answers[0].Sub(start).Round(time.Millisecond), len(answeredAt(ap.Logs())))
	t.Logf("MESSAGEs: %d answered 200, %d 408, %d 503, %d failed; SIPp retransmissions %d, run %v",
		res.Counters["4_200_Recv"], res.Counters["2_408_Recv"], res.Counters["3_503_Recv"], res.Failed,
		res.Counters["Retransmissions(C)"], res.Duration.Round(time.Second))
	if res.Successful != messages || res.Failed != 0 {
		t.Errorf("%d MESSAGEs ended with a final response, %d failed; want all %d to end with one\n%s",
			res.Successful, res.Failed, messages, lastLinesOf(res.Output, 30))
	}
}

// answeredAt returns the times of authproxy's "request" log lines with
// status 200, in log order.
func answeredAt(logs string) []time.Time {
	var out []time.Time
	for line := range strings.SplitSeq(logs, "\n") {
		if !strings.Contains(line, `"status":200`) {
			continue
		}
		var rec struct {
			Time   time.Time `json:"time"`
			Msg    string    `json:"msg"`
			Status int       `json:"status"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "request" && rec.Status == 200 {
			out = append(out, rec.Time)
		}
	}
	return out
}

// sippCall is one call of a SIPp message trace: when its first request
// was sent and the status of the last final response it received.
type sippCall struct {
	sent  time.Time
	final int
}

// sippCalls reads a SIPp message trace (-trace_msg) into calls by
// Call-ID. Each message's block starts with the time SIPp logged it.
func sippCalls(t *testing.T, trace string) map[string]sippCall {
	t.Helper()
	out := map[string]sippCall{}
	for _, block := range strings.Split(trace, "----------------------------------------------- ")[1:] {
		stamp, rest, _ := strings.Cut(block, "\n")
		head, msg, _ := strings.Cut(rest, "\n")
		msg = strings.TrimLeft(msg, "\r\n")
		at, err := time.ParseInLocation("2006-01-02 15:04:05.000000", strings.TrimSpace(stamp), time.Local)
		if err != nil {
			t.Fatalf("SIPp trace time %q: %v", stamp, err)
		}
		id := traceHeader(msg, "Call-ID")
		c := out[id]
		switch {
		case strings.Contains(head, "message sent") && c.sent.IsZero():
			c.sent = at
		case strings.Contains(head, "message received") && strings.HasPrefix(msg, "SIP/2.0 "):
			if code := peers.StatusCode(msg); code >= 200 {
				c.final = code
			}
		}
		out[id] = c
	}
	return out
}
