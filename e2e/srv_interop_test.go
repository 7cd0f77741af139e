package e2e

// Upstreams named in DNS, with real peers: dnsmasq serves the records
// (RFC 3263 SRV and A), Kamailio instances are the targets, SIPp is the
// client, authproxy is the built binary with TOML config.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
)

// Loopback hosts of the DNS interop tests.
const (
	dnsInteropServerHost = "127.0.0.11" // dnsmasq
	dnsInteropTarget1    = "127.0.0.12" // the SRV name's first target (priority 10)
	dnsInteropTarget2    = "127.0.0.13" // its second target (priority 20)
)

// srvTrunk is the carrier of the SRV tests: one upstream "trunk" at the
// domain trunk.test, its accounts those of pbx-a (the same on every
// target, as a carrier's are).
var srvTrunk = upstreamPBX{name: "trunk", domain: "trunk.example.com", accounts: upstreamA.accounts}

// srvTrunkTOML is authproxy with one UDP listener, the admin listener, and
// the upstream "trunk" at address (a name resolved through the DNS server
// at dnsServer), health checks every 200ms (down after 2 missed pings, up
// after 2 answered), and a failover timeout of failover. Limits are off:
// every request comes from one SIPp.
func srvTrunkTOML(listen, admin, dnsServer, address string, failover time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, `[log]
level = "info"
format = "json"

[proxy]
shutdown_grace = "1s"
failover_timeout = %q

[dns]
servers = [%s]
min_ttl = "1s"
max_ttl = "2s"
timeout = "1s"

[health]
options_interval = "200ms"
down_after = 2
up_after = 2

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
name = %s
address = %s
transport = "udp"
domains = [%s]

`, failover.String(), tomlString(dnsServer), tomlString(admin), tomlString(listen),
		tomlString(srvTrunk.name), tomlString(address), tomlString(srvTrunk.domain))
	for _, c := range credentialsFor(srvTrunk) {
		fmt.Fprintf(&b, "[[credential]]\nusername = %s\npassword = %s\nserver = %s\nrealm = %s\nuser = %s\n\n",
			tomlString(c.username), tomlString(c.password), tomlString(c.server), tomlString(c.realm), tomlString(c.user))
	}
	return b.String()
}

// countLines counts the lines of logs that contain every one of parts.
func countLines(logs string, parts ...string) int {
	n := 0
	for line := range strings.SplitSeq(logs, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// callsAndMessagesAt counts the Call-IDs of INVITEs and of MESSAGEs that k
// accepted with valid credentials.
func callsAndMessagesAt(k *peers.Kamailio) (calls, messages int) {
	for _, e := range k.Events() {
		if e.Result != "ok" {
			continue
		}
		switch e.Method {
		case "INVITE":
			calls++
		case "MESSAGE":
			messages++
		}
	}
	return calls, messages
}

// inFlightAt counts what was in progress at k when it died, from what it
// had logged: calls whose INVITE it accepted but whose BYE it never
// relayed, and MESSAGEs it challenged but never accepted.
func inFlightAt(k *peers.Kamailio) (calls, messages int) {
	type state struct{ invite, bye, msgSeen, msgOK bool }
	byCall := map[string]*state{}
	for _, e := range k.Events() {
		s := byCall[e.CallID]
		if s == nil {
			s = &state{}
			byCall[e.CallID] = s
		}
		switch {
		case e.Method == "INVITE" && e.Result == "ok":
			s.invite = true
		case e.Method == "BYE":
			s.bye = true
		case e.Method == "MESSAGE" && e.Result == "ok":
			s.msgOK = true
		case e.Method == "MESSAGE":
			s.msgSeen = true
		}
	}
	for _, s := range byCall {
		if s.invite && !s.bye {
			calls++
		}
		if s.msgSeen && !s.msgOK {
			messages++
		}
	}
	return calls, messages
}

// TestSRVTargetKilledAndRestarted: the carrier trunk.test is an SRV name
// served by dnsmasq with two targets, two real Kamailio instances (each a
// PBX trunk that challenges with its own nonces and relays calls to a SIPp
// callee). SIPp runs calls and MESSAGEs through authproxy; the target with
// the better priority, which takes the traffic, is killed (SIGKILL) in the
// middle of the run. No call or MESSAGE may fail but those in progress at
// that target at that instant; the rest go to the second target. The
// killed Kamailio is then started again on the same address: once
// authproxy's pings see it up, new requests reach it again.
//
// The figures (requests sent and failed, in flight at the kill, the time
// to rejoin) are logged.
func TestSRVTargetKilledAndRestarted(t *testing.T) {
	peers.Require(t, "kamailio", "sipp", "dnsmasq")
	const (
		calls, callRate       = 400, 20 // 20 s
		messages, messageRate = 800, 40
		failover              = 500 * time.Millisecond
	)
	uasPort := peers.FreePort(t, callsInteropUASHost)
	uasAddr := fmt.Sprintf("%s:%d", callsInteropUASHost, uasPort)
	kcfg := func(host string) peers.KamailioConfig {
		return peers.KamailioConfig{
			Host: host, Port: peers.FreePort(t, host), Users: srvTrunk.users(), StrictURI: true,
			RelayTo: uasAddr, Children: 4, SharedMemoryMB: 128, Secret: peers.NewToken(16),
		}
	}
	k1 := peers.StartKamailio(t, kcfg(dnsInteropTarget1))
	k2 := peers.StartKamailio(t, kcfg(dnsInteropTarget2))
	dnsSrv := peers.StartDnsmasq(t, peers.DnsmasqConfig{
		Host:  dnsInteropServerHost,
		Hosts: []peers.DnsmasqHost{{Name: "k1.trunk.test", IPv4: dnsInteropTarget1}, {Name: "k2.trunk.test", IPv4: dnsInteropTarget2}},
		SRV: []peers.DnsmasqSRV{
			{Name: "_sip._udp.trunk.test", Target: "k1.trunk.test", Port: testutil.PortOf(t, k1.Addr()), Priority: 10, Weight: 10},
			{Name: "_sip._udp.trunk.test", Target: "k2.trunk.test", Port: testutil.PortOf(t, k2.Addr()), Priority: 20, Weight: 10},
		},
		TTL: time.Second,
	})
	listen, admin := faultsAddrs(t)
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: srvTrunkTOML(listen, admin, dnsSrv.Addr(), "trunk.test", failover)})

	uas := peers.StartSipp(t, peers.SippRun{
		Scenario: sippScenario("uas_tolerant.xml"), Local: callsInteropUASHost, LocalPort: uasPort,
		Service: callsInteropCallee, Calls: calls, Timeout: 2 * time.Minute, NoMessageTrace: true,
		Extra: []string{"-fd", "1", "-default_behaviors", "none"},
	})
	// A call stuck at the dead target (its 200 lost with it) ends at
	// SIPp's receive timeout, as a failure.
	clientExtra := []string{"-default_behaviors", "none", "-recv_timeout", "15000"}
	start := time.Now()
	callsDone := runSippAsync(t, peers.SippRun{
		Scenario: sippScenario("call_tolerant.xml"), Remote: listen, Service: callsInteropCallee,
		Domain: srvTrunk.domain, Keys: map[string]string{"caller": callsInteropCaller},
		Calls: calls, Rate: callRate, Timeout: 90 * time.Second, NoMessageTrace: true, Extra: clientExtra,
	})
	msgsDone := runSippAsync(t, peers.SippRun{
		Scenario: sippScenario("message_tolerant.xml"), Remote: listen, Service: callsInteropCaller,
		Domain: srvTrunk.domain, Calls: messages, Rate: messageRate, Timeout: 90 * time.Second,
		NoMessageTrace: true, Extra: clientExtra,
	})

	testutil.Eventually(t, "the first target to take 40 calls and 80 MESSAGEs", func() bool {
		c, m := callsAndMessagesAt(k1)
		return c >= 40 && m >= 80
	})
	k2CallsBefore, k2MessagesBefore := callsAndMessagesAt(k2)
	if err := k1.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Since(start)
	inCalls, inMessages := inFlightAt(k1)
	k1Calls, k1Messages := callsAndMessagesAt(k1)

	// authproxy's pings see the target die; the traffic goes on at k2.
	k1Addr := k1.Addr()
	testutil.Eventually(t, "authproxy to mark the killed target down", func() bool {
		return countLines(ap.Logs(), `"msg":"upstream target down"`, k1Addr) >= 1
	})
	testutil.Eventually(t, "the second target to take 40 more calls", func() bool {
		c, _ := callsAndMessagesAt(k2)
		return c >= k2CallsBefore+40
	})

	// Restart: the pings see it up, and new requests reach it again.
	upBefore := countLines(ap.Logs(), `"msg":"upstream target up"`, k1Addr)
	restartAt := time.Now()
	k1 = peers.StartKamailio(t, k1.Config())
	restarted := time.Since(restartAt)
	testutil.Eventually(t, "authproxy to mark the restarted target up", func() bool {
		return countLines(ap.Logs(), `"msg":"upstream target up"`, k1Addr) > upBefore
	})
	upAfter := time.Since(restartAt)
	testutil.Eventually(t, "new requests to reach the restarted target", func() bool {
		c, m := callsAndMessagesAt(k1)
		return c > 0 && m > 0
	})
	rejoined := time.Since(restartAt)
	rejoinedAt := time.Since(start)

	cl, ms := <-callsDone, <-msgsDone
	took := time.Since(start)
	uas.Stop()
	k1After, k1MsgAfter := callsAndMessagesAt(k1)
	k2Calls, k2Messages := callsAndMessagesAt(k2)

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
	callFailures := cl.Failed
	for _, n := range callErrors {
		callFailures += n
	}
	for _, n := range byeErrors {
		callFailures += n
	}
	msgFailures := ms.Failed + ms.Counters["2_408_Recv"] + ms.Counters["3_503_Recv"]

	t.Logf("%d calls at %d/s and %d MESSAGEs at %d/s through authproxy to trunk.test (SRV: %s priority 10, %s priority 20), failover_timeout %v, pings every 200ms (down after 2, up after 2); run %v",
		calls, callRate, messages, messageRate, dnsInteropTarget1, dnsInteropTarget2, failover, took.Round(time.Millisecond))
	t.Logf("first target killed at %v, after it accepted %d calls and %d MESSAGEs; in progress there at that instant: %d calls (INVITE accepted, no BYE yet), %d MESSAGEs (challenged, not yet accepted)",
		killedAt.Round(time.Millisecond), k1Calls, k1Messages, inCalls, inMessages)
	t.Logf("calls: %d sent, %d failed in all (SIPp failures %d, INVITE errors %v, BYE errors %v), %d answered 200",
		cl.Counters["OutgoingCall(C)"], callFailures, cl.Failed, callErrors, byeErrors, cl.Counters["8_200_Recv"])
	t.Logf("MESSAGEs: %d sent, %d failed (SIPp failures %d, 408 %d, 503 %d), %d answered 200",
		ms.Counters["OutgoingCall(C)"], msgFailures, ms.Failed, ms.Counters["2_408_Recv"], ms.Counters["3_503_Recv"], ms.Counters["4_200_Recv"])
	t.Logf("requests authproxy moved from a target that did not answer within the failover timeout to the next: %d",
		countLines(ap.Logs(), `"msg":"failing over to the next target"`))
	t.Logf("second target took %d calls and %d MESSAGEs in all (%d calls and %d MESSAGEs before the kill)",
		k2Calls, k2Messages, k2CallsBefore, k2MessagesBefore)
	t.Logf("restart: Kamailio ready %v after its start, marked up by authproxy %v after, first new call and MESSAGE there within %v (at %v into the run); it took %d calls and %d MESSAGEs after the restart",
		restarted.Round(time.Millisecond), upAfter.Round(time.Millisecond), rejoined.Round(time.Millisecond), rejoinedAt.Round(time.Millisecond), k1After, k1MsgAfter)
	t.Logf("bound: at most the requests in progress at the target at the kill, %d calls and %d MESSAGEs; calls in progress on average = rate × call length (≈0.5 s) = %.0f, MESSAGEs waiting out a failover = rate × failover_timeout = %.0f (those fail over, not fail)",
		inCalls, inMessages, float64(callRate)*0.5, float64(messageRate)*failover.Seconds())

	if callFailures > inCalls {
		t.Errorf("%d calls failed; want at most the %d in progress at the killed target", callFailures, inCalls)
	}
	if msgFailures > inMessages {
		t.Errorf("%d MESSAGEs failed; want at most the %d in progress at the killed target", msgFailures, inMessages)
	}
	if cl.Counters["OutgoingCall(C)"] != calls || ms.Counters["OutgoingCall(C)"] != messages {
		t.Errorf("SIPp sent %d calls and %d MESSAGEs, want %d and %d\n%s\n%s", cl.Counters["OutgoingCall(C)"], ms.Counters["OutgoingCall(C)"],
			calls, messages, lastLinesOf(cl.Output, 20), lastLinesOf(ms.Output, 20))
	}
	for _, k := range []*peers.Kamailio{k1, k2} {
		for _, e := range k.Events() {
			if e.Result == "fail" {
				t.Errorf("Kamailio %s rejected credentials: %+v", k.Addr(), e)
				break
			}
		}
	}
}
