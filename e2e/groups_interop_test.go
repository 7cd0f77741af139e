package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestGroupFailoverThroughKamailio: two carriers in a [[group]], each a
// real Kamailio with its own accounts for SIP user 1001 (a-1001 on pbx-a,
// b-1001 on pbx-b, both in realm "asterisk"). pbx-a challenges the INVITE,
// accepts a-1001's answer and refuses the call: with 503 itself
// ("carrier-503"), or, as a PBX trunk, by relaying it to a callee that
// answers 503, which Kamailio turns into 500 (RFC 3261 §16.7 step 6:
// "callee-503"); both are in the group's default failover list. authproxy
// moves the call to pbx-b, a PBX trunk in front of a SIPp callee, answers
// pbx-b's challenge with b-1001, and the call completes there (ACK and BYE
// at pbx-b only). Kamailio's own log of the credentials it received shows
// that pbx-a never saw b-1001 and pbx-b never saw a-1001.
func TestGroupFailoverThroughKamailio(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	for _, tc := range []struct {
		name     string
		relay    bool   // pbx-a relays to a callee answering 503
		failedOn string // the status authproxy fails over on
	}{
		{"carrier-503", false, "503"},
		{"callee-503", true, "500"},
	} {
		t.Run(tc.name, func(t *testing.T) { testGroupFailoverThroughKamailio(t, tc.relay, tc.failedOn) })
	}
}

func testGroupFailoverThroughKamailio(t *testing.T, relay bool, failedOn string) {
	portA, portB := peers.FreePort(t, callsInteropUASHost), peers.FreePort(t, callsInteropUASHost)
	cfgA := peers.KamailioConfig{Host: upstreamA.host, Users: upstreamA.users(), StrictURI: true, InviteStatus: 503}
	if relay {
		cfgA.InviteStatus, cfgA.RelayTo = 0, fmt.Sprintf("%s:%d", callsInteropUASHost, portA)
	}
	kA := peers.StartKamailio(t, cfgA)
	kB := peers.StartKamailio(t, peers.KamailioConfig{
		Host: upstreamB.host, Users: upstreamB.users(), StrictURI: true, RelayTo: fmt.Sprintf("%s:%d", callsInteropUASHost, portB),
	})
	listen := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	const groupDomain = "carriers.example.com"
	cfg := authproxyTOML(listen, []upstreamConf{{upstreamA, kA.Addr(), "udp"}, {upstreamB, kB.Addr(), "udp"}},
		append(credentialsFor(upstreamA), credentialsFor(upstreamB)...)) +
		fmt.Sprintf("[[group]]\nname = \"carriers\"\nupstreams = [%s, %s]\ndomains = [%s]\n\n",
			tomlString(upstreamA.name), tomlString(upstreamB.name), tomlString(groupDomain))
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: cfg})

	var uasA *peers.SippServer
	if relay {
		uasA = peers.StartSipp(t, peers.SippRun{
			Scenario: sippScenario("uas_503.xml"), Local: callsInteropUASHost, LocalPort: portA,
			Service: callsInteropCallee, Timeout: 15 * time.Second,
		})
	}
	uasB := peers.StartSipp(t, peers.SippRun{
		Scenario: sippScenario("uas.xml"), Local: callsInteropUASHost, LocalPort: portB,
		Service: callsInteropCallee, Timeout: 15 * time.Second,
	})
	uac := peers.RunSipp(t, peers.SippRun{
		Scenario: sippScenario("call.xml"), Remote: listen, Service: callsInteropCallee,
		Domain: groupDomain, Keys: map[string]string{"caller": callsInteropCaller}, Timeout: 10 * time.Second,
	})
	if !uac.OK() {
		uasB.Stop()
		if uasA != nil {
			uasA.Stop()
		}
	}
	resB := uasB.Wait()
	if !uac.OK() {
		t.Fatalf("caller: want the call to complete through pbx-b\n%v\n--- authproxy ---\n%s", uac, ap.Logs())
	}
	if uasA != nil {
		if resA := uasA.Wait(); !resA.OK() {
			t.Errorf("pbx-a's callee: want its INVITE answered 503 and ACKed\n%v", resA)
		}
	}
	if !resB.OK() {
		t.Errorf("pbx-b's callee: want the call\n%v", resB)
	}
	checkClientView(t, uac)
	if n := countLines(ap.Logs(), `"msg":"failing over to the next upstream of the group"`, `"reason":"`+failedOn+`"`); n != 1 {
		t.Errorf("authproxy logged %d failovers to the next upstream on %s, want 1", n, failedOn)
	}

	callID := firstCallID(uac)
	summary := func(k *peers.Kamailio) []string {
		var out []string
		for _, e := range eventsForCall(k, callID) {
			out = append(out, fmt.Sprintf("%s/%s/%s", e.Method, e.Result, e.Username))
		}
		return out
	}
	gotA, gotB := summary(kA), summary(kB)
	t.Logf("pbx-a logged %q; pbx-b logged %q", gotA, gotB)
	if want := []string{"INVITE/challenge/", "INVITE/ok/a-1001"}; !slices.Equal(gotA, want) {
		t.Errorf("pbx-a logged %q, want %q: its challenge answered with its own account, nothing after the refusal", gotA, want)
	}
	// The ACK for the 2xx repeats the INVITE's credentials (RFC 3261 §22.1).
	if want := []string{"INVITE/challenge/", "INVITE/ok/b-1001", "ACK/relay/b-1001", "BYE/relay/"}; !slices.Equal(gotB, want) {
		t.Errorf("pbx-b logged %q, want %q: its own challenge answered with its own account, then the dialog", gotB, want)
	}
	for _, c := range []struct {
		p upstreamPBX
		k *peers.Kamailio
	}{{upstreamA, kA}, {upstreamB, kB}} {
		for _, u := range c.k.SeenUsernames() {
			if !slices.Contains(c.p.usernames(), u) {
				t.Errorf("%s received username %q, which belongs to another carrier", c.p.name, u)
			}
		}
	}
}
