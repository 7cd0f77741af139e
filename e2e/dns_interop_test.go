package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
)

// TestHostnameUpstreamsWithKamailio: upstreams addressed by host name and
// port, their A records served by dnsmasq, each a real Kamailio:
//
//   - pbx-a ("pbx-a.dns.test:<port>"), a PBX trunk: a SIPp client calls
//     through authproxy, the SIPp callee behind Kamailio hangs up, and the
//     callee's BYE, which comes from the address the name resolves to,
//     reaches the client;
//   - reg ("registrar.dns.test:<port>"), a registrar: authproxy's trunk
//     registration registers there, a SIPp caller's INVITE via Kamailio to
//     the registered user reaches the registration's target (a SIPp UAS),
//     and at SIGTERM authproxy unregisters: Kamailio then answers a call
//     to that user 404 (no contact left).
func TestHostnameUpstreamsWithKamailio(t *testing.T) {
	peers.Require(t, "kamailio", "sipp", "dnsmasq")
	uasPort := peers.FreePort(t, callsInteropUASHost)
	kA := peers.StartKamailio(t, peers.KamailioConfig{
		Host: dnsInteropTarget1, Users: upstreamA.users(), StrictURI: true, RelayTo: fmt.Sprintf("%s:%d", callsInteropUASHost, uasPort),
	})
	reg := upstreamPBX{name: "reg", domain: "reg.example.com", accounts: upstreamA.accounts}
	kReg := peers.StartKamailio(t, peers.KamailioConfig{Host: dnsInteropTarget2, Users: reg.users(), Registrar: true})
	dnsSrv := peers.StartDnsmasq(t, peers.DnsmasqConfig{
		Host: dnsInteropServerHost,
		Hosts: []peers.DnsmasqHost{
			{Name: "pbx-a.dns.test", IPv4: dnsInteropTarget1},
			{Name: "registrar.dns.test", IPv4: dnsInteropTarget2},
		},
		TTL: time.Second,
	})
	pbxAName := fmt.Sprintf("pbx-a.dns.test:%d", testutil.PortOf(t, kA.Addr()))
	regName := fmt.Sprintf("registrar.dns.test:%d", testutil.PortOf(t, kReg.Addr()))
	const callee, caller = "1001", "1002"
	targetPort := peers.FreePort(t, callsInteropUASHost)
	listen := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	cfg := authproxyTOML(listen, []upstreamConf{{upstreamA, pbxAName, "udp"}, {reg, regName, "udp"}},
		append(credentialsFor(upstreamA), credentialsFor(reg)...)) +
		fmt.Sprintf("[[registration]]\nupstream = %q\naor = %q\nexpires = 60\ntarget = \"%s:%d\"\n\n",
			reg.name, "sip:"+callee+"@"+reg.domain, callsInteropUASHost, targetPort) +
		fmt.Sprintf("[dns]\nservers = [%s]\nmin_ttl = \"1s\"\nmax_ttl = \"2s\"\n", tomlString(dnsSrv.Addr()))
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: cfg})

	t.Run("callee-bye", func(t *testing.T) {
		uas := peers.StartSipp(t, peers.SippRun{
			Scenario: sippScenario("uas_bye.xml"), Local: callsInteropUASHost, LocalPort: uasPort,
			Service: callsInteropCallee, Timeout: 15 * time.Second,
		})
		uac := peers.RunSipp(t, peers.SippRun{
			Scenario: sippScenario("call_callee_bye.xml"), Remote: listen, Service: callsInteropCallee,
			Domain: upstreamA.domain, Keys: map[string]string{"caller": callsInteropCaller}, Timeout: 10 * time.Second,
		})
		if !uac.OK() {
			uas.Stop()
		}
		uasRes := uas.Wait()
		if !uac.OK() || !uasRes.OK() {
			t.Fatalf("call with the callee hanging up:\n--- caller ---\n%v\n--- callee ---\n%v\n--- authproxy ---\n%s", uac, uasRes, ap.Logs())
		}
		var byes int
		for _, e := range eventsForCall(kA, firstCallID(uac)) {
			if e.Method == "BYE" && e.Result == "relay" && e.Source == callsInteropUASHost {
				byes++
			}
		}
		if byes != 1 {
			t.Errorf("Kamailio relayed %d BYEs from the callee, want 1", byes)
		}
	})

	t.Run("trunk-registration", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if _, err := ap.Process().WaitLine(ctx, func(l string) bool { return strings.Contains(l, `"msg":"registered"`) }); err != nil {
			t.Fatalf("authproxy did not register at %s: %v\n--- authproxy ---\n%s\n--- kamailio ---\n%s", regName, err, ap.Logs(), kReg.Log())
		}
		callViaKamailio(t, "the trunk registration's target", kReg, ap, reg, caller, callee, callsInteropUASHost, targetPort)

		registers := func() int {
			n := 0
			for _, e := range kReg.Events() {
				if e.Method == "REGISTER" && e.Result == "ok" && e.Username == "a-"+callee {
					n++
				}
			}
			return n
		}
		before := registers()
		if err := ap.Stop(); err != nil {
			t.Logf("authproxy stopped: %v", err)
		}
		if !strings.Contains(ap.Logs(), `"msg":"unregistered"`) {
			t.Fatalf("authproxy did not unregister at SIGTERM:\n%s", ap.Logs())
		}
		if n := registers(); n != before+1 {
			t.Errorf("Kamailio accepted %d REGISTERs as a-%s at shutdown, want 1 (the un-REGISTER)", n-before, callee)
		}
		// At the registrar: no contact is left for the user.
		var acct pbxAccount
		for _, a := range reg.accounts {
			if a.user == caller {
				acct = a
			}
		}
		res := peers.RunSipp(t, peers.SippRun{
			Scenario: sippScenario("call_auth_404.xml"), Remote: kReg.Addr(), Service: callee, Domain: reg.domain,
			Keys: map[string]string{"caller": caller}, AuthUser: acct.username, AuthPass: acct.password, Timeout: 10 * time.Second,
		})
		if !res.OK() {
			t.Errorf("a call to %s at the registrar after authproxy stopped: want 404 (unregistered)\n%v\n--- kamailio ---\n%s", callee, res, kReg.Log())
		}
	})
}
