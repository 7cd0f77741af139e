package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestIPv6WithKamailio runs the built binary on [::1] only, with every
// peer on ::1 too:
//
//   - call: a SIPp client calls through authproxy to a Kamailio PBX trunk,
//     which relays to a SIPp callee; the call completes (the ACK and BYE
//     follow the Record-Route, which names [::1]);
//   - register: a SIPp client registers through authproxy at a Kamailio
//     registrar (Path names [::1]), then a SIPp caller calls that user via
//     Kamailio, whose lookup sends the INVITE through the Path to
//     authproxy and on to the registered client.
func TestIPv6WithKamailio(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	const host = "::1"
	uasPort := peers.FreePort(t, host)
	kCall := peers.StartKamailio(t, peers.KamailioConfig{
		Host: host, Users: upstreamA.users(), StrictURI: true, RelayTo: fmt.Sprintf("[%s]:%d", host, uasPort),
	})
	reg := upstreamPBX{name: "pbx-b", domain: upstreamB.domain, accounts: upstreamA.accounts}
	kReg := peers.StartKamailio(t, peers.KamailioConfig{Host: host, Users: reg.users(), Registrar: true})
	listen := fmt.Sprintf("[%s]:%d", host, peers.FreePort(t, host))
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: authproxyTOML(listen, []upstreamConf{{upstreamA, kCall.Addr(), "udp"}, {reg, kReg.Addr(), "udp"}},
		append(credentialsFor(upstreamA), credentialsFor(reg)...)) +
		"[[client]]\nname = \"loopback6\"\nnetworks = [\"::1/128\"]\nupstreams = [\"*\"]\n"})

	t.Run("call", func(t *testing.T) {
		uas := peers.StartSipp(t, peers.SippRun{
			Scenario: sippScenario("uas.xml"), Local: host, LocalPort: uasPort,
			Service: callsInteropCallee, Timeout: 15 * time.Second,
		})
		uac := peers.RunSipp(t, peers.SippRun{
			Scenario: sippScenario("call.xml"), Remote: listen, Local: host, Service: callsInteropCallee,
			Domain: upstreamA.domain, Keys: map[string]string{"caller": callsInteropCaller}, Timeout: 10 * time.Second,
		})
		if !uac.OK() {
			uas.Stop()
		}
		uasRes := uas.Wait()
		if !uac.OK() || !uasRes.OK() {
			t.Fatalf("call over [::1]:\n--- caller ---\n%v\n--- callee ---\n%v\n--- authproxy ---\n%s\n--- kamailio ---\n%s", uac, uasRes, ap.Logs(), kCall.Log())
		}
		checkClientView(t, uac)
		invs := callsInteropMessages(uasRes, false, "INVITE ")
		if len(invs) == 0 || !strings.Contains(invs[0], "Record-Route: <sip:"+listen) && !strings.Contains(invs[0], "<sip:"+listen+";") {
			t.Errorf("the callee's INVITE does not name authproxy (%s) in its Record-Route:\n%v", listen, invs)
		}
		var got []string
		for _, e := range eventsForCall(kCall, firstCallID(uac)) {
			got = append(got, fmt.Sprintf("%s/%s/%s/%s", e.Method, e.Result, e.Username, e.Source))
		}
		want := fmt.Sprintf("%q", []string{"INVITE/challenge//::1", "INVITE/ok/a-1001/::1", "ACK/relay/a-1001/::1", "BYE/relay//::1"})
		if fmt.Sprintf("%q", got) != want {
			t.Errorf("Kamailio logged %q, want %s", got, want)
		}
	})

	t.Run("register", func(t *testing.T) {
		const callee, caller = "1001", "1002"
		uaPort := peers.FreePort(t, host)
		res := peers.RunSipp(t, peers.SippRun{
			Scenario: sippScenario("register.xml"), Remote: listen, Local: host, LocalPort: uaPort,
			Service: callee, Domain: reg.domain, Timeout: 10 * time.Second,
		})
		if !res.OK() {
			t.Fatalf("REGISTER over [::1]: %v\n--- authproxy ---\n%s\n--- kamailio ---\n%s", res, ap.Logs(), kReg.Log())
		}
		checkClientView(t, res)
		uasRes := callViaKamailio(t, "the phone registered over [::1]", kReg, ap, reg, caller, callee, host, uaPort)
		invs := callsInteropMessages(uasRes, false, "INVITE ")
		if len(invs) == 0 || !strings.Contains(invs[0], listen) {
			t.Fatalf("the phone's INVITE does not show authproxy (%s) in its route:\n%v", listen, invs)
		}
	})
}
