package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/browser"
	"github.com/authproxy/authproxy/internal/peers"
)

// browserLocalPassword is the browser's password at authproxy (its
// [[client]] group's account), the only secret its page is given.
const browserLocalPassword = "L-browser-1001-Pw-5d7e"

// TestBrowserJsSIPThroughAuthproxy: JsSIP in headless Chromium, holding
// only its local password, registers through authproxy's "ws" listener to
// a Kamailio registrar that challenges (authproxy answers the 401 with
// pbx-a's credential), places a call through a challenging Kamailio trunk
// (pbx-b) to a SIPp UAS and hangs up, then receives a call from a SIPp
// caller through the registrar (Kamailio routes it through the Path to
// authproxy, which sends it down the WebSocket the browser registered on)
// and answers it; the caller hangs up. The browser never sees a 401/407
// from an upstream (only authproxy's own 407), and neither the page nor
// anything the browser received holds a trunk password.
func TestBrowserJsSIPThroughAuthproxy(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	browser.Require(t)
	a, b := upstreamA, upstreamB
	uasPort := peers.FreePort(t, callsInteropUASHost)
	reg := peers.StartKamailio(t, peers.KamailioConfig{Host: a.host, Users: a.users(), Registrar: true})
	trunk := peers.StartKamailio(t, peers.KamailioConfig{Host: b.host, Users: b.users(),
		RelayTo: fmt.Sprintf("%s:%d", callsInteropUASHost, uasPort)})
	page := browser.ServePage(t)

	udp := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	wsAddr := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	var conf strings.Builder
	conf.WriteString("[log]\nlevel = \"debug\"\nformat = \"json\"\nsip_trace = true\n\n[proxy]\nshutdown_grace = \"1s\"\n\n")
	fmt.Fprintf(&conf, "[[listen]]\ntransport = \"udp\"\naddress = %q\n\n", udp)
	fmt.Fprintf(&conf, "[[listen]]\ntransport = \"ws\"\naddress = %q\npath = \"/sip\"\norigins = [%q]\n\n", wsAddr, page.Origin)
	for _, u := range []struct {
		p    upstreamPBX
		addr string
	}{{a, reg.Addr()}, {b, trunk.Addr()}} {
		fmt.Fprintf(&conf, "[[upstream]]\nname = %q\naddress = %q\ndomains = [%q]\npreemptive = \"off\"\n\n", u.p.name, u.addr, u.p.domain)
	}
	for _, c := range append(credentialsFor(a), credentialsFor(b)...) {
		fmt.Fprintf(&conf, "[[credential]]\nusername = %q\npassword = %q\nserver = %q\nrealm = %q\nuser = %q\n\n",
			c.username, c.password, c.server, c.realm, c.user)
	}
	fmt.Fprintf(&conf, "[[client]]\nname = \"browsers\"\nnetworks = [\"127.0.0.0/8\"]\nupstreams = [\"*\"]\n"+
		"[[client.user]]\nusername = \"1001\"\npassword = %q\n", browserLocalPassword)
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: conf.String()})
	dump := func() string {
		return fmt.Sprintf("\n--- authproxy ---\n%s\n--- registrar ---\n%s\n--- trunk ---\n%s", ap.Logs(), reg.Log(), trunk.Log())
	}

	br := browser.Launch(t, page.Origin+"/")
	cfg, _ := json.Marshal(map[string]string{"ws": "ws://" + wsAddr + "/sip", "uri": "sip:1001@" + a.domain, "password": browserLocalPassword})
	br.Eval(fmt.Sprintf("startPhone(%s)", cfg), nil)
	waitEvent(t, br, "registered", dump)
	if n := len(reg.Events()); n == 0 {
		t.Fatalf("the registrar saw no REGISTER%s", dump())
	}

	t.Run("call out through the trunk, browser hangs up", func(t *testing.T) {
		uas := peers.StartSipp(t, peers.SippRun{
			Scenario: sippScenario("uas_webrtc.xml"), Local: callsInteropUASHost, LocalPort: uasPort,
			Transport: "u1", Service: "2001", Timeout: 30 * time.Second,
		})
		br.Eval(fmt.Sprintf("call(%q)", "sip:2001@"+b.domain), nil)
		waitEvent(t, br, "out:confirmed", dump)
		br.Eval("hangUp()", nil)
		waitEvent(t, br, "out:ended", dump)
		if res := uas.Wait(); !res.OK() {
			t.Fatalf("SIPp UAS: %v%s", res, dump())
		}
	})

	t.Run("inbound call through the registrar, caller hangs up", func(t *testing.T) {
		var caller pbxAccount
		for _, acc := range a.accounts {
			if acc.user == "1002" {
				caller = acc
			}
		}
		done := make(chan peers.SippResult, 1)
		go func() {
			done <- peers.RunSipp(t, peers.SippRun{
				Scenario: sippScenario("call_auth_webrtc.xml"), Remote: reg.Addr(), Transport: "u1",
				Service: "1001", Domain: a.domain, Keys: map[string]string{"caller": "1002"},
				AuthUser: caller.username, AuthPass: caller.password, Timeout: 30 * time.Second,
			})
		}()
		waitEvent(t, br, "incoming", dump)
		br.Eval("answer()", nil)
		waitEvent(t, br, "in:confirmed", dump)
		waitEvent(t, br, "in:ended", dump)
		if res := <-done; !res.OK() {
			t.Fatalf("SIPp caller: %v%s", res, dump())
		}
	})

	// What the browser received: authproxy's own 407s only, never an
	// upstream's challenge, and no trunk password anywhere in the page.
	var received []string
	br.Eval("window.sipReceived", &received)
	challenge := regexp.MustCompile(`^SIP/2\.0 (401|407) `)
	for _, m := range received {
		if challenge.MatchString(m) && !strings.Contains(m, `realm="authproxy"`) {
			t.Fatalf("the browser saw an upstream's challenge:\n%s", m)
		}
	}
	var html string
	br.Eval("document.documentElement.outerHTML + JSON.stringify(window.events)", &html)
	everything := page.Served() + html + strings.Join(received, "\n")
	for _, pw := range append(a.passwords(), b.passwords()...) {
		if strings.Contains(everything, pw) {
			t.Fatal("a trunk password reached the browser")
		}
	}
	if strings.Contains(ap.Logs(), browserLocalPassword) {
		t.Fatal("the browser's local password reached authproxy's log")
	}
}

// waitEvent waits until the page recorded a JsSIP event of type ev.
func waitEvent(t *testing.T, br *browser.Browser, ev string, dump func() string) {
	t.Helper()
	if err := br.Poll(60*time.Second, fmt.Sprintf("window.events.some(e => e.type === %q)", ev)); err != nil {
		var events []struct{ Type, Detail string }
		br.Eval("window.events", &events)
		t.Fatalf("browser: no %s event (%v); events %+v%s", ev, err, events, dump())
	}
}
