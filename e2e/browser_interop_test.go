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
// pbx-a's credential), places calls through a challenging Kamailio trunk
// (pbx-b) to a SIPp UAS (hung up by either side, re-INVITEd by either
// side, cancelled while ringing), then receives calls from a SIPp caller through the
// registrar (Kamailio routes them through the Path to authproxy, which
// sends them down the WebSocket the browser registered on), answers them
// and hangs up or is hung up on, or sees one cancelled while it rings. The browser never sees a 401/407
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

	// Outgoing calls: to a SIPp UAS behind the trunk, each scenario on a
	// fresh SIPp; the UAS's final state decides.
	for _, tc := range []struct {
		name, scenario string
		run            func(t *testing.T, call string)
	}{
		{"call out, browser hangs up", "uas_webrtc.xml", func(t *testing.T, call string) {
			waitEvent(t, br, call+":confirmed", dump)
			br.Eval("hangUp()", nil)
			waitEvent(t, br, call+":ended", dump)
		}},
		{"call out, callee hangs up", "uas_bye_webrtc.xml", func(t *testing.T, call string) {
			waitEvent(t, br, call+":confirmed", dump)
			waitEvent(t, br, call+":ended", dump)
		}},
		{"call out, browser re-INVITEs then hangs up", "uas_reinvite_webrtc.xml", func(t *testing.T, call string) {
			waitEvent(t, br, call+":confirmed", dump)
			var ok bool
			br.Eval("renegotiate()", &ok)
			br.Eval("hangUp()", nil)
			waitEvent(t, br, call+":ended", dump)
		}},
		{"call out, callee re-INVITEs then hangs up", "uas_far_reinvite_webrtc.xml", func(t *testing.T, call string) {
			waitEvent(t, br, call+":confirmed", dump)
			waitEvent(t, br, call+":ended", dump)
		}},
		{"call out, browser cancels while it rings", "uas_ring.xml", func(t *testing.T, call string) {
			waitEvent(t, br, call+":progress", dump)
			br.Eval("hangUp()", nil)
			waitEvent(t, br, call+":failed", dump)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uas := peers.StartSipp(t, peers.SippRun{
				Scenario: sippScenario(tc.scenario), Local: callsInteropUASHost, LocalPort: uasPort,
				Transport: "u1", Service: "2001", Timeout: 30 * time.Second,
			})
			call := strings.ReplaceAll(tc.name, " ", "-")
			br.Eval(fmt.Sprintf("call(%q, %q)", "sip:2001@"+b.domain, call), nil)
			tc.run(t, call)
			if res := uas.Wait(); !res.OK() {
				t.Fatalf("SIPp UAS: %v%s", res, dump())
			}
		})
	}

	// Incoming calls: a SIPp caller that knows its own password calls
	// 1001 at the registrar, which routes the INVITE through the Path to
	// authproxy and down the browser's WebSocket.
	var callerAcct pbxAccount
	for _, acc := range a.accounts {
		if acc.user == "1002" {
			callerAcct = acc
		}
	}
	for _, tc := range []struct {
		name, scenario string
		browserHangsUp bool
		cancelled      bool
	}{
		{"inbound call through the registrar, caller hangs up", "call_auth_webrtc.xml", false, false},
		{"inbound call through the registrar, browser hangs up", "call_auth_callee_bye_webrtc.xml", true, false},
		{"inbound call through the registrar, caller cancels", "call_auth_cancel_webrtc.xml", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			call := strings.ReplaceAll(tc.name, " ", "-")
			br.Eval(fmt.Sprintf("expectIncoming(%q)", call), nil)
			done := make(chan peers.SippResult, 1)
			go func() {
				done <- peers.RunSipp(t, peers.SippRun{
					Scenario: sippScenario(tc.scenario), Remote: reg.Addr(), Transport: "u1",
					Service: "1001", Domain: a.domain, Keys: map[string]string{"caller": "1002"},
					AuthUser: callerAcct.username, AuthPass: callerAcct.password, Timeout: 30 * time.Second,
				})
			}()
			waitEvent(t, br, call+":incoming", dump)
			if tc.cancelled {
				waitEvent(t, br, call+":failed", dump)
				if res := <-done; !res.OK() {
					t.Fatalf("SIPp caller: %v%s", res, dump())
				}
				return
			}
			br.Eval("answer()", nil)
			waitEvent(t, br, call+":confirmed", dump)
			if tc.browserHangsUp {
				br.Eval("hangUpIncoming()", nil)
			}
			waitEvent(t, br, call+":ended", dump)
			if res := <-done; !res.OK() {
				t.Fatalf("SIPp caller: %v%s", res, dump())
			}
		})
	}

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
