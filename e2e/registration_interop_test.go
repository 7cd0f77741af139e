package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestRegisterThroughAuthproxyThenCallViaKamailio: a SIPp client with no
// password registers 1001 through authproxy at Kamailio (registrar mode:
// save("location") keeps the Path authproxy added, RFC 3327). A second SIPp
// on the upstream side, which knows its own password, then calls 1001 via
// Kamailio; Kamailio's lookup("location") routes the INVITE through the
// Path to authproxy, which sends it to where the first SIPp registered from.
// The call completes with ACK and BYE through Kamailio and authproxy.
func TestRegisterThroughAuthproxyThenCallViaKamailio(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	p := upstreamA
	k := peers.StartKamailio(t, peers.KamailioConfig{Host: p.host, Users: p.users(), Registrar: true})
	listen := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: authproxyTOML(listen, []upstreamConf{{p, k.Addr(), "udp"}}, credentialsFor(p))})

	const callee, caller = "1001", "1002"
	uaPort := peers.FreePort(t, "127.0.0.1")
	reg := peers.RunSipp(t, peers.SippRun{
		Scenario: sippScenario("register.xml"), Remote: listen, Local: "127.0.0.1", LocalPort: uaPort,
		Transport: "u1", Service: callee, Domain: p.domain, Timeout: 10 * time.Second,
	})
	if !reg.OK() {
		t.Fatalf("REGISTER through authproxy: %v\n--- authproxy ---\n%s\n--- kamailio ---\n%s", reg, ap.Logs(), k.Log())
	}

	// The registered phone answers on the socket it registered from.
	uasRes := callViaKamailio(t, "the registered phone", k, ap, p, caller, callee, "127.0.0.1", uaPort)
	// The INVITE reached the phone through authproxy (its Record-Route),
	// not straight from Kamailio.
	invs := callsInteropMessages(uasRes, false, "INVITE ")
	if len(invs) == 0 || !strings.Contains(invs[0], listen) {
		t.Fatalf("the phone's INVITE does not show authproxy (%s) in its route:\n%v", listen, invs)
	}
}

// TestTrunkRegistrationWithKamailio: authproxy, configured with a
// [[registration]] (the real binary and TOML), registers 1001 at Kamailio
// itself, answering Kamailio's 401 with the configured credential. A SIPp
// caller on the upstream side then calls 1001 via Kamailio, whose
// lookup("location") sends the INVITE to authproxy's registered contact;
// authproxy relays it to the registration's target (a SIPp UAS), and the
// call completes with ACK and BYE. At shutdown authproxy unregisters.
func TestTrunkRegistrationWithKamailio(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	p := upstreamA
	k := peers.StartKamailio(t, peers.KamailioConfig{Host: p.host, Users: p.users(), Registrar: true})
	listen := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	const callee, caller = "1001", "1002"
	targetPort := peers.FreePort(t, callsInteropUASHost)
	cfg := authproxyTOML(listen, []upstreamConf{{p, k.Addr(), "udp"}}, credentialsFor(p)) +
		fmt.Sprintf("[[registration]]\nupstream = %q\naor = %q\nexpires = 60\ntarget = \"%s:%d\"\n",
			p.name, "sip:"+callee+"@"+p.domain, callsInteropUASHost, targetPort)
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: cfg})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := ap.Process().WaitLine(ctx, func(l string) bool { return strings.Contains(l, `"msg":"registered"`) }); err != nil {
		t.Fatalf("authproxy did not register: %v\n--- authproxy ---\n%s\n--- kamailio ---\n%s", err, ap.Logs(), k.Log())
	}
	callViaKamailio(t, "the trunk registration's target", k, ap, p, caller, callee, callsInteropUASHost, targetPort)
	// Kamailio accepted authproxy's REGISTER with the pbx-a credential of
	// 1001.
	var want string
	for _, a := range p.accounts {
		if a.user == callee {
			want = a.username
		}
	}
	ok := false
	for _, e := range k.Events() {
		ok = ok || (e.Method == "REGISTER" && e.Result == "ok" && e.Username == want)
	}
	if !ok {
		t.Fatalf("Kamailio never accepted a REGISTER as %s:\n%s", want, k.Log())
	}
	_ = ap.Stop()
	if !strings.Contains(ap.Logs(), `"msg":"unregistered"`) {
		t.Fatalf("authproxy did not unregister at shutdown:\n%s", ap.Logs())
	}
}

// callViaKamailio has a SIPp caller (authenticating itself as caller's
// account) call callee through Kamailio, while a SIPp UAS on uasHost:uasPort
// answers as the callee; it fails the test unless both complete the call,
// and returns the UAS's result.
func callViaKamailio(t *testing.T, what string, k *peers.Kamailio, ap *peers.Authproxy, p upstreamPBX, caller, callee, uasHost string, uasPort int) peers.SippResult {
	t.Helper()
	var callerAcct pbxAccount
	for _, a := range p.accounts {
		if a.user == caller {
			callerAcct = a
		}
	}
	uas := peers.StartSipp(t, peers.SippRun{
		Scenario: sippScenario("uas.xml"), Local: uasHost, LocalPort: uasPort,
		Transport: "u1", Service: callee, Timeout: 15 * time.Second,
	})
	callerHost := "" // 127.0.0.1, or ::1 for a callee on IPv6
	if strings.Contains(uasHost, ":") {
		callerHost = uasHost
	}
	uac := peers.RunSipp(t, peers.SippRun{
		Scenario: sippScenario("call_auth.xml"), Remote: k.Addr(), Local: callerHost, Transport: "u1",
		Service: callee, Domain: p.domain, Keys: map[string]string{"caller": caller},
		AuthUser: callerAcct.username, AuthPass: callerAcct.password, Timeout: 10 * time.Second,
	})
	if !uac.OK() {
		uas.Stop()
	}
	uasRes := uas.Wait()
	if !uac.OK() || !uasRes.OK() {
		t.Fatalf("call to %s:\n--- caller ---\n%v\n--- callee ---\n%v\n--- authproxy ---\n%s\n--- kamailio ---\n%s",
			what, uac, uasRes, ap.Logs(), k.Log())
	}
	return uasRes
}
