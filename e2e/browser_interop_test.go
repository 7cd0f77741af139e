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
	"github.com/authproxy/authproxy/internal/testutil"
)

// browserLocalPassword is the browser's password at authproxy (its
// [[client]] group's account), the only secret its page is given.
const browserLocalPassword = "L-browser-1001-Pw-5d7e"

// softphone drives page/phone.js of internal/browser, in Chromium or in
// Node.
type softphone interface {
	// do calls one of phone.js's functions with args and waits until it
	// returned.
	do(t *testing.T, fn string, args ...any)
	// waitEvent waits until phone.js recorded the JsSIP event ev.
	waitEvent(t *testing.T, ev string)
	// received returns every SIP message the phone read from its
	// WebSocket.
	received(t *testing.T) []string
}

// jssipRig is the world the JsSIP tests run in: a Kamailio registrar
// (pbx-a) and a Kamailio trunk (pbx-b) relaying to a SIPp UAS, both
// challenging, and authproxy with a "ws" listener in front of them.
type jssipRig struct {
	t          *testing.T
	reg, trunk *peers.Kamailio
	ap         *peers.Authproxy
	ws         string // ws:// URL of authproxy's listener
	uasPort    int
}

func startJSSIPRig(t *testing.T, origin string) *jssipRig {
	t.Helper()
	a, b := upstreamA, upstreamB
	r := &jssipRig{t: t, uasPort: peers.FreePort(t, callsInteropUASHost)}
	r.reg = peers.StartKamailio(t, peers.KamailioConfig{Host: a.host, Users: a.users(), Registrar: true})
	r.trunk = peers.StartKamailio(t, peers.KamailioConfig{Host: b.host, Users: b.users(),
		RelayTo: fmt.Sprintf("%s:%d", callsInteropUASHost, r.uasPort)})
	udp := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	wsAddr := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	var conf strings.Builder
	conf.WriteString("[log]\nlevel = \"debug\"\nformat = \"json\"\nsip_trace = true\n\n[proxy]\nshutdown_grace = \"1s\"\n\n")
	fmt.Fprintf(&conf, "[[listen]]\ntransport = \"udp\"\naddress = %q\n\n", udp)
	fmt.Fprintf(&conf, "[[listen]]\ntransport = \"ws\"\naddress = %q\npath = \"/sip\"\norigins = [%q]\n\n", wsAddr, origin)
	for _, u := range []struct {
		p    upstreamPBX
		addr string
	}{{a, r.reg.Addr()}, {b, r.trunk.Addr()}} {
		fmt.Fprintf(&conf, "[[upstream]]\nname = %q\naddress = %q\ndomains = [%q]\npreemptive = \"off\"\n\n", u.p.name, u.addr, u.p.domain)
	}
	for _, c := range append(credentialsFor(a), credentialsFor(b)...) {
		fmt.Fprintf(&conf, "[[credential]]\nusername = %q\npassword = %q\nserver = %q\nrealm = %q\nuser = %q\n\n",
			c.username, c.password, c.server, c.realm, c.user)
	}
	fmt.Fprintf(&conf, "[[client]]\nname = \"browsers\"\nnetworks = [\"127.0.0.0/8\"]\nupstreams = [\"*\"]\n"+
		"[[client.user]]\nusername = \"1001\"\npassword = %q\n", browserLocalPassword)
	r.ap = peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: conf.String()})
	r.ws = "ws://" + wsAddr + "/sip"
	return r
}

// relayedACKs counts the ACKs the trunk relayed so far.
func (r *jssipRig) relayedACKs() int {
	n := 0
	for _, e := range r.trunk.Events() {
		if e.Method == "ACK" && e.Result == "relay" {
			n++
		}
	}
	return n
}

func (r *jssipRig) dump() string {
	return fmt.Sprintf("\n--- authproxy ---\n%s\n--- registrar ---\n%s\n--- trunk ---\n%s", r.ap.Logs(), r.reg.Log(), r.trunk.Log())
}

// runCalls registers the phone through authproxy and runs every call
// scenario: calls out through the trunk to a SIPp UAS (hung up by either
// side, re-INVITEd by either side, cancelled while ringing), then calls
// in from a SIPp caller through the registrar, which routes them through
// the Path to authproxy and down the phone's WebSocket (hung up by either
// side, cancelled by the caller). Last it checks that the phone never
// received an upstream's 401/407 (only authproxy's own 407) and no trunk
// password.
func (r *jssipRig) runCalls(t *testing.T, ph softphone) {
	a, b := upstreamA, upstreamB
	ph.do(t, "startPhone", map[string]string{"ws": r.ws, "uri": "sip:1001@" + a.domain, "password": browserLocalPassword})
	ph.waitEvent(t, "registered")
	acks := 0 // ACKs the trunk relayed before the current call
	for _, tc := range []struct {
		name, scenario string
		run            func(t *testing.T, call string)
	}{
		{"call out, browser hangs up", "uas_webrtc.xml", func(t *testing.T, call string) {
			ph.waitEvent(t, call+":confirmed")
			// The BYE must not overtake the ACK on the way (each hop
			// handles requests concurrently; the UAS wants the ACK first).
			testutil.Eventually(t, "the trunk relayed the ACK", func() bool { return r.relayedACKs() > acks })
			ph.do(t, "hangUp")
			ph.waitEvent(t, call+":ended")
		}},
		{"call out, callee hangs up", "uas_bye_webrtc.xml", func(t *testing.T, call string) {
			ph.waitEvent(t, call+":confirmed")
			ph.waitEvent(t, call+":ended")
		}},
		{"call out, browser re-INVITEs then hangs up", "uas_reinvite_webrtc.xml", func(t *testing.T, call string) {
			ph.waitEvent(t, call+":confirmed")
			// The re-INVITE must not overtake the ACK on the way (each
			// hop handles requests concurrently; the UAS wants the ACK
			// first): wait until the trunk relayed this call's ACK.
			testutil.Eventually(t, "the trunk relayed the ACK", func() bool { return r.relayedACKs() > acks })
			ph.do(t, "renegotiate")
			// Likewise the BYE must not overtake the re-INVITE's ACK.
			testutil.Eventually(t, "the trunk relayed the re-INVITE's ACK", func() bool { return r.relayedACKs() > acks+1 })
			ph.do(t, "hangUp")
			ph.waitEvent(t, call+":ended")
		}},
		{"call out, callee re-INVITEs then hangs up", "uas_far_reinvite_webrtc.xml", func(t *testing.T, call string) {
			ph.waitEvent(t, call+":confirmed")
			ph.waitEvent(t, call+":ended")
		}},
		{"call out, browser cancels while it rings", "uas_ring.xml", func(t *testing.T, call string) {
			ph.waitEvent(t, call+":progress")
			ph.do(t, "hangUp")
			ph.waitEvent(t, call+":failed")
		}},
	} {
		acks = r.relayedACKs()
		t.Run(tc.name, func(t *testing.T) {
			uas := peers.StartSipp(t, peers.SippRun{
				Scenario: sippScenario(tc.scenario), Local: callsInteropUASHost, LocalPort: r.uasPort,
				Transport: "u1", Service: "2001", Timeout: 30 * time.Second,
			})
			call := strings.ReplaceAll(tc.name, " ", "-")
			ph.do(t, "call", "sip:2001@"+b.domain, call)
			tc.run(t, call)
			if res := uas.Wait(); !res.OK() {
				t.Fatalf("SIPp UAS: %v%s", res, r.dump())
			}
		})
	}

	var callerAcct pbxAccount
	for _, acc := range a.accounts {
		if acc.user == "1002" {
			callerAcct = acc
		}
	}
	for _, tc := range []struct {
		name, scenario            string
		browserHangsUp, cancelled bool
	}{
		{"inbound call through the registrar, caller hangs up", "call_auth_webrtc.xml", false, false},
		{"inbound call through the registrar, browser hangs up", "call_auth_callee_bye_webrtc.xml", true, false},
		{"inbound call through the registrar, caller cancels", "call_auth_cancel_webrtc.xml", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			call := strings.ReplaceAll(tc.name, " ", "-")
			ph.do(t, "expectIncoming", call)
			done := make(chan peers.SippResult, 1)
			go func() {
				done <- peers.RunSipp(t, peers.SippRun{
					Scenario: sippScenario(tc.scenario), Remote: r.reg.Addr(), Transport: "u1",
					Service: "1001", Domain: a.domain, Keys: map[string]string{"caller": "1002"},
					AuthUser: callerAcct.username, AuthPass: callerAcct.password, Timeout: 30 * time.Second,
				})
			}()
			ph.waitEvent(t, call+":incoming")
			switch {
			case tc.cancelled:
				ph.waitEvent(t, call+":failed")
			default:
				ph.do(t, "answer")
				ph.waitEvent(t, call+":confirmed")
				if tc.browserHangsUp {
					ph.do(t, "hangUpIncoming")
				}
				ph.waitEvent(t, call+":ended")
			}
			if res := <-done; !res.OK() {
				t.Fatalf("SIPp caller: %v%s", res, r.dump())
			}
		})
	}

	received := ph.received(t)
	if len(received) == 0 {
		t.Fatal("the phone recorded no SIP message")
	}
	challenge := regexp.MustCompile(`^SIP/2\.0 (401|407) `)
	for _, m := range received {
		if challenge.MatchString(m) && !strings.Contains(m, `realm="authproxy"`) {
			t.Fatalf("the phone saw an upstream's challenge:\n%s", m)
		}
		for _, pw := range append(a.passwords(), b.passwords()...) {
			if strings.Contains(m, pw) {
				t.Fatal("a trunk password reached the phone")
			}
		}
	}
	if strings.Contains(r.ap.Logs(), browserLocalPassword) {
		t.Fatal("the phone's local password reached authproxy's log")
	}
}

// TestBrowserJsSIPThroughAuthproxy: JsSIP in headless Chromium, holding
// only its local password, registers through authproxy's "ws" listener to
// a Kamailio registrar that challenges (authproxy answers the 401 with
// pbx-a's credential), and runs every call scenario of runCalls: out
// through a challenging Kamailio trunk to a SIPp UAS, in from a SIPp
// caller through the registrar. The SIPp scenarios offer and answer
// WebRTC-shaped SDP, so that the browser confirms the calls; no media
// flows. Neither the page nor anything the browser received holds a
// trunk password.
func TestBrowserJsSIPThroughAuthproxy(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	browser.Require(t)
	page := browser.ServePage(t)
	r := startJSSIPRig(t, page.Origin)
	br := browser.Launch(t, page.Origin+"/")
	r.runCalls(t, chromiumPhone{br: br, dump: r.dump})
	var html string
	br.Eval("document.documentElement.outerHTML + JSON.stringify(window.events)", &html)
	for _, pw := range append(upstreamA.passwords(), upstreamB.passwords()...) {
		if strings.Contains(page.Served()+html, pw) {
			t.Fatal("a trunk password is in the page")
		}
	}
}

// TestNodeJsSIPThroughAuthproxy: the same softphone and call scenarios
// with JsSIP run by Node over the npm ws WebSocket and a stand-in
// RTCPeerConnection: the signalling alone, without a browser.
func TestNodeJsSIPThroughAuthproxy(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	browser.RequireNode(t)
	r := startJSSIPRig(t, "https://app.example.com")
	r.runCalls(t, nodePhone{n: browser.StartNodePhone(t), dump: r.dump})
}

// chromiumPhone is a softphone in headless Chromium.
type chromiumPhone struct {
	br   *browser.Browser
	dump func() string
}

func (c chromiumPhone) do(t *testing.T, fn string, args ...any) {
	t.Helper()
	if args == nil {
		args = []any{}
	}
	js, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.br.Try(fmt.Sprintf("%s(...%s)", fn, js), nil); err != nil {
		t.Fatalf("browser: %s: %v%s", fn, err, c.dump())
	}
}

func (c chromiumPhone) waitEvent(t *testing.T, ev string) {
	t.Helper()
	if err := c.br.Poll(60*time.Second, fmt.Sprintf("window.events.some(e => e.type === %q)", ev)); err != nil {
		var events []struct{ Type, Detail string }
		_ = c.br.Try("window.events", &events)
		t.Fatalf("browser: no %s event (%v); events %+v%s", ev, err, events, c.dump())
	}
}

func (c chromiumPhone) received(t *testing.T) []string {
	var out []string
	if err := c.br.Try("window.sipReceived", &out); err != nil {
		t.Fatalf("browser: %v", err)
	}
	return out
}

// nodePhone is a softphone run by Node.
type nodePhone struct {
	n    *browser.NodePhone
	dump func() string
}

func (p nodePhone) do(t *testing.T, fn string, args ...any) {
	t.Helper()
	if err := p.n.Call(fn, args...); err != nil {
		t.Fatalf("%v%s", err, p.dump())
	}
}

func (p nodePhone) waitEvent(t *testing.T, ev string) {
	t.Helper()
	if err := p.n.WaitEvent(ev); err != nil {
		t.Fatalf("%v%s", err, p.dump())
	}
}

func (p nodePhone) received(t *testing.T) []string {
	t.Helper()
	out, err := p.n.Received()
	if err != nil {
		t.Fatalf("%v%s", err, p.dump())
	}
	return out
}
