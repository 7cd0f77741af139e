package scenarios

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/hep"
	"github.com/authproxy/authproxy/proxy/wsgate"
	"github.com/authproxy/authproxy/state"
)

// browserPassword is the local password of the browser's account at
// authproxy: the only secret a page holds.
const browserPassword = "L-browser-Pw-9e4d21"

// startWSHarness is the harness with a "ws" listener on path /sip that
// allows pages of https://app.example.com, and a client group whose
// clients authenticate with authproxy's own challenge (user 1001).
func startWSHarness(t *testing.T, limits wsgate.Limits, mutate func(*proxy.Config)) *harness {
	t.Helper()
	groups := []proxy.ClientGroup{{Name: "browsers", Networks: prefixes("127.0.0.0/8"), Upstreams: []string{"*"},
		Users: map[string]credentials.Secret{"1001": credentials.NewSecret(browserPassword)}}}
	return startHarness(t, harnessOptions{Clients: groups, Profile: kamailioProfile, Mutate: func(c *proxy.Config, _ *harness) {
		c.Listeners = append(c.Listeners, proxy.Listener{Transport: "ws", Address: "127.0.0.1:0",
			WebSocket: proxy.WebSocketListener{Path: "/sip", Origins: []string{"https://app.example.com"}}})
		c.WebSocket = limits
		if mutate != nil {
			mutate(c)
		}
	}})
}

func wsURL(h *harness) string { return "ws://" + h.Addr["ws"] + "/sip" }

// sdpOffer is a browser's offer (ICE, DTLS-SRTP), which authproxy passes
// untouched.
const sdpOffer = "v=0\r\no=- 42 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\n" +
	"a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\n" +
	"a=setup:actpass\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n"

// TestWebSocketPhone: a browser-like softphone over a WebSocket registers
// through authproxy with its local password to a registrar that
// challenges (authproxy answers with the trunk's), calls out, receives a
// call through the connection it registered on, hangs up and is hung up
// on; when its WebSocket closes its binding goes, and nothing else.
func TestWebSocketPhone(t *testing.T) {
	h := startWSHarness(t, wsgate.Limits{}, nil)
	ph := startWSPhone(t, "1001", wsURL(h))
	const domain = "pbx-a.example.com"

	regID := uuid.NewString()
	if res := ph.register(domain, regID, 1, 300, browserPassword); res.StatusCode != 200 {
		t.Fatalf("REGISTER: %d %s", res.StatusCode, res.Reason)
	}
	bs := h.A.Bindings("1001")
	if len(bs) != 1 || len(bs[0].Path) < 2 {
		t.Fatalf("registrar bindings %+v: want one, with a double Path", bs)
	}
	browserSide := bs[0].Path[len(bs[0].Path)-1]
	if tp, _ := browserSide.UriParams.Get("transport"); tp != "ws" || !browserSide.UriParams.Has("ob") || !strings.HasPrefix(browserSide.User, "fl-") {
		t.Fatalf("Path %v: the browser-side entry is not transport=ws with a flow token and ;ob (RFC 5626 §5.1)", bs[0].Path)
	}
	if pb := h.Proxy.Bindings(); len(pb) != 1 || pb[0].Transport != "WS" {
		t.Fatalf("proxy bindings %+v", pb)
	}

	t.Run("call out", func(t *testing.T) {
		callID := uuid.NewString()
		ruri := sip.Uri{Scheme: "sip", User: "1002", Host: domain}
		mk := func(seq uint32) *sip.Request {
			r := ph.request(sip.INVITE, ruri, callID, "out"+ph.tag, seq, domain)
			r.AppendHeader(ph.contact())
			ct := sip.ContentTypeHeader("application/sdp")
			r.AppendHeader(&ct)
			r.SetBody([]byte(sdpOffer))
			return r
		}
		res := ph.final(mk(1))
		if res.StatusCode != 407 {
			t.Fatalf("first INVITE: %d, want authproxy's own 407", res.StatusCode)
		}
		ack := ph.request(sip.ACK, ruri, callID, "out"+ph.tag, 1, domain)
		ack.ReplaceHeader(res.Via())
		ack.ReplaceHeader(res.To())
		ph.send(ack)
		inv := mk(2)
		inv.AppendHeader(sip.NewHeader("Proxy-Authorization", answerLocal(t, res, inv, "1001", browserPassword)))
		res = ph.final(inv)
		if res.StatusCode != 200 {
			t.Fatalf("INVITE: %d\n%s", res.StatusCode, h.Logs.String())
		}
		rr := res.GetHeaders("Record-Route")
		if len(rr) != 2 {
			t.Fatalf("2xx carries %d Record-Route entries, want 2 (WS side and UDP side)", len(rr))
		}
		pbxSide := h.A.Requests()[len(h.A.Requests())-1].Raw
		if !strings.Contains(pbxSide, sdpOffer) {
			t.Fatalf("SDP changed on the way:\n%s", pbxSide)
		}
		// The browser's route set: the Record-Route reversed (RFC 3261
		// §12.1.2); its ACK and BYE go over its WebSocket whatever the
		// routes say.
		route := func(r *sip.Request) {
			for i := len(rr) - 1; i >= 0; i-- {
				r.AppendHeader(&sip.RouteHeader{Address: rr[i].(*sip.RecordRouteHeader).Address})
			}
		}
		target := res.Contact().Address
		ack = ph.request(sip.ACK, target, callID, "out"+ph.tag, 2, domain)
		ack.ReplaceHeader(res.To())
		route(ack)
		ph.send(ack)
		waitCallState(t, h.A, callID, fakepbx.StateConfirmed)
		bye := ph.request(sip.BYE, target, callID, "out"+ph.tag, 3, domain)
		bye.ReplaceHeader(res.To())
		route(bye)
		if res := ph.final(bye); res.StatusCode != 200 {
			t.Fatalf("BYE: %d", res.StatusCode)
		}
		waitCallState(t, h.A, callID, fakepbx.StateTerminated)
		for _, r := range ph.responses(callID, sip.INVITE) {
			if (r.StatusCode == 401 || r.StatusCode == 407) && !strings.Contains(r.GetHeader(challengeHeader(r)).Value(), `realm="authproxy"`) {
				t.Fatalf("the browser saw the upstream's challenge:\n%s", r.String())
			}
		}
	})

	for _, pbxHangsUp := range []bool{true, false} {
		t.Run(fmt.Sprintf("inbound/pbx-hangs-up=%v", pbxHangsUp), func(t *testing.T) {
			done := make(chan fakepbx.OutgoingCall, 1)
			go func() { done <- h.A.CallUser(t, "1001") }()
			m := ph.wait("INVITE from the PBX", func(m sip.Message) bool {
				r, ok := m.(*sip.Request)
				return ok && r.Method == sip.INVITE && !seenInvite(ph, r)
			})
			inv := m.(*sip.Request)
			markInvite(ph, inv)
			if rr := inv.GetHeaders("Record-Route"); len(rr) != 2 {
				t.Fatalf("INVITE to the browser carries %d Record-Route entries, want 2", len(rr))
			}
			ph.respond(inv, 200, "OK")
			call := <-done
			if call.Status != 200 {
				t.Fatalf("PBX's call to the browser: %d", call.Status)
			}
			ph.wait("ACK", func(m sip.Message) bool {
				r, ok := m.(*sip.Request)
				return ok && r.Method == sip.ACK && r.CallID().Value() == call.CallID
			})
			if pbxHangsUp {
				hung := make(chan int, 1)
				go func() { hung <- h.A.HangUp(t, call.CallID) }()
				m := ph.wait("BYE", func(m sip.Message) bool {
					r, ok := m.(*sip.Request)
					return ok && r.Method == sip.BYE && r.CallID().Value() == call.CallID
				})
				ph.respond(m.(*sip.Request), 200, "OK")
				if code := <-hung; code != 200 {
					t.Fatalf("PBX's BYE: %d", code)
				}
			} else {
				bye := sip.NewRequest(sip.BYE, inv.Contact().Address)
				via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "WS", Host: ph.host, Params: sip.NewParams()}
				via.Params.Add("branch", sip.GenerateBranch())
				bye.AppendHeader(via)
				for _, h := range inv.GetHeaders("Record-Route") {
					bye.AppendHeader(&sip.RouteHeader{Address: h.(*sip.RecordRouteHeader).Address})
				}
				from := &sip.FromHeader{Address: inv.To().Address, Params: sip.NewParams()}
				from.Params.Add("tag", ph.tag)
				bye.AppendHeader(from)
				bye.AppendHeader(&sip.ToHeader{Address: inv.From().Address, Params: inv.From().Params.Clone()})
				bye.AppendHeader(inv.CallID())
				bye.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.BYE})
				mf := sip.MaxForwardsHeader(70)
				bye.AppendHeader(&mf)
				if res := ph.final(bye); res.StatusCode != 200 {
					t.Fatalf("browser's BYE: %d\n%s\n%s", res.StatusCode, bye.String(), h.Logs.String())
				}
			}
			waitCallState(t, h.A, call.CallID, fakepbx.StateTerminated)
		})
	}

	t.Run("the flow token routes whatever the Request-URI", func(t *testing.T) {
		// A registrar that addresses the AOR instead of the Contact (some
		// do with GRUUs): the Path's flow token still finds the browser.
		b := h.A.Bindings("1001")[0]
		b.Contact = sip.Uri{Scheme: "sip", User: "1001", Host: "pbx-a.example.com"}
		done := make(chan *sip.Response, 1)
		go func() { done <- h.A.SendTo(t, b, sip.MESSAGE) }()
		m := ph.wait("MESSAGE", func(m sip.Message) bool {
			r, ok := m.(*sip.Request)
			return ok && r.Method == sip.MESSAGE
		}).(*sip.Request)
		if m.Recipient.User != "1001" || m.Recipient.Host != "pbx-a.example.com" {
			t.Fatalf("MESSAGE Request-URI %s, want the AOR as the registrar sent it", m.Recipient.String())
		}
		ph.respond(m, 200, "OK")
		if res := <-done; res == nil || res.StatusCode != 200 {
			t.Fatalf("MESSAGE to the AOR through the Path: %v", res)
		}
	})

	t.Run("closed socket removes bindings only", func(t *testing.T) {
		if len(h.Proxy.Bindings()) != 1 {
			t.Fatalf("bindings before close: %+v", h.Proxy.Bindings())
		}
		_ = ph.conn.Close()
		testutil.Eventually(t, "bindings of the closed WebSocket removed", func() bool { return len(h.Proxy.Bindings()) == 0 })
		// The PBX's call through the Path now names a flow that is gone
		// (RFC 5626 §5.3).
		if call := h.A.CallUser(t, "1001"); call.Status != 430 {
			t.Fatalf("call to a closed WebSocket's contact: %d, want 430 Flow Failed", call.Status)
		}
	})
	assertNoCallErrors(t, h.A)
	if strings.Contains(h.Logs.String(), browserPassword) || strings.Contains(h.Logs.String(), alicePassword) {
		t.Fatal("a password reached a log")
	}
}

func challengeHeader(r *sip.Response) string {
	if r.StatusCode == 401 {
		return "WWW-Authenticate"
	}
	return "Proxy-Authenticate"
}

// seenInvite and markInvite keep which INVITEs a test already handled.
var handledInvites = map[string]bool{}

func seenInvite(_ *wsPhone, r *sip.Request) bool { return handledInvites[r.CallID().Value()] }
func markInvite(_ *wsPhone, r *sip.Request)      { handledInvites[r.CallID().Value()] = true }

// TestWebSocketToken: a listener with a token secret upgrades only a
// WebSocket whose URL carries a valid token, and admits its requests
// without authproxy's digest challenge; the page holds no password at
// all. A page of another origin is refused at the upgrade.
func TestWebSocketToken(t *testing.T) {
	secret := "W-token-secret-0123456789abcdef"
	h := startWSHarness(t, wsgate.Limits{}, func(c *proxy.Config) {
		c.Listeners[len(c.Listeners)-1].WebSocket.TokenSecret = credentials.NewSecret(secret)
	})
	if _, err := dialWS(wsURL(h), "https://app.example.com", []string{"sip"}); err == nil {
		t.Fatal("upgrade without a token succeeded")
	}
	tok := wsgate.MintToken([]byte(secret), "1001", time.Now().Add(time.Minute))
	if _, err := dialWS(wsURL(h)+"?token="+tok, "https://evil.example", []string{"sip"}); err == nil {
		t.Fatal("upgrade from another origin succeeded")
	}
	ph := startWSPhone(t, "1001", wsURL(h)+"?token="+tok)
	res := ph.register("pbx-a.example.com", uuid.NewString(), 1, 300, "")
	if res.StatusCode != 200 {
		t.Fatalf("REGISTER over a token-authenticated WebSocket: %d", res.StatusCode)
	}
	if s := h.Proxy.WebSocketStats(); s.Refused[wsgate.ReasonToken] != 1 || s.Refused[wsgate.ReasonOrigin] != 1 {
		t.Fatalf("websocket refusals %v", s.Refused)
	}
	if strings.Contains(h.Logs.String(), secret) || strings.Contains(h.Logs.String(), tok) {
		t.Fatal("the token secret or a token reached a log")
	}
}

// TestWebSocketSecure: a "wss" listener (TLS with the listener's
// certificate) carries the same exchange: the browser registers with its
// local password and is called through its connection; the browser-side
// Path entry says transport=ws, as RFC 7118 has no "wss" value.
func TestWebSocketSecure(t *testing.T) {
	ca := newTestCA(t)
	h := startWSHarness(t, wsgate.Limits{}, func(c *proxy.Config) {
		l := &c.Listeners[len(c.Listeners)-1]
		l.Transport = "wss"
		l.TLS = &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "127.0.0.1")}}
	})
	wsTLS.Lock()
	wsTLS.conf = &tls.Config{RootCAs: ca.pool}
	wsTLS.Unlock()
	t.Cleanup(func() { wsTLS.Lock(); wsTLS.conf = nil; wsTLS.Unlock() })
	ph := startWSPhone(t, "1001", "wss://"+h.Addr["wss"]+"/sip")
	if res := ph.register("pbx-a.example.com", uuid.NewString(), 1, 300, browserPassword); res.StatusCode != 200 {
		t.Fatalf("REGISTER over wss: %d", res.StatusCode)
	}
	bs := h.A.Bindings("1001")
	if len(bs) != 1 || len(bs[0].Path) != 2 {
		t.Fatalf("registrar bindings %+v", bs)
	}
	if tp, _ := bs[0].Path[1].UriParams.Get("transport"); tp != "ws" {
		t.Fatalf("browser-side Path entry %s, want transport=ws", bs[0].Path[1].String())
	}
	if pb := h.Proxy.Bindings(); len(pb) != 1 || pb[0].Transport != "WSS" {
		t.Fatalf("proxy bindings %+v", pb)
	}
	done := make(chan fakepbx.OutgoingCall, 1)
	go func() { done <- h.A.CallUser(t, "1001") }()
	inv := ph.wait("INVITE over wss", func(m sip.Message) bool {
		r, ok := m.(*sip.Request)
		return ok && r.Method == sip.INVITE
	}).(*sip.Request)
	if v := inv.Via(); v == nil || v.Transport != "WSS" {
		t.Fatalf("INVITE to the browser: top Via %v, want SIP/2.0/WSS", inv.Via())
	}
	ph.respond(inv, 200, "OK")
	if call := <-done; call.Status != 200 {
		t.Fatalf("call over wss: %d", call.Status)
	}
}

// TestWebSocketCapture: with HEP capture on, a browser's messages over
// its WebSocket are captured as TCP between its connection and the
// listener, both ways, without their WebSocket framing.
func TestWebSocketCapture(t *testing.T) {
	rx := startHEPReceiver(t)
	h := startWSHarness(t, wsgate.Limits{}, func(c *proxy.Config) { c.Capture = proxy.Capture{HEP: rx.addr} })
	ph := startWSPhone(t, "1001", wsURL(h))
	regID := uuid.NewString()
	if res := ph.register("pbx-a.example.com", regID, 1, 300, browserPassword); res.StatusCode != 200 {
		t.Fatalf("REGISTER: %d", res.StatusCode)
	}
	listener := netip.MustParseAddrPort(h.Addr["ws"])
	browser := netip.MustParseAddrPort(ph.conn.LocalAddr().String())
	testutil.Eventually(t, "the REGISTER's 200 to the browser captured", func() bool {
		return len(rx.find(regID, "SIP/2.0 200", hep.ProtoTCP, listener, browser)) == 1
	})
	if got := rx.find(regID, "REGISTER ", hep.ProtoTCP, browser, listener); len(got) != 2 {
		t.Errorf("captured %d REGISTERs from the browser, want 2 (challenged, answered)", len(got))
	}
	if got := rx.find(regID, "SIP/2.0 407", hep.ProtoTCP, listener, browser); len(got) != 1 {
		t.Errorf("captured %d local challenges to the browser, want 1", len(got))
	}
}

// TestWebSocketBindingInCluster: two instances share a state store. A
// browser registered over a WebSocket of the first is out of reach for
// the second (480: it holds no connection to the browser). When the
// browser has registered again through the second instance before its
// old WebSocket to the first is found closed, that close does not take
// the new registration from the store; a close with no newer
// registration does.
func TestWebSocketBindingInCluster(t *testing.T) {
	st := sharedMemory{state.NewMemory()}
	member := func(name string) func(*proxy.Config) {
		return func(c *proxy.Config) { c.State, c.StateBackend, c.Instance = st, "redis", name }
	}
	h1 := startWSHarness(t, wsgate.Limits{}, member("a"))
	h2 := startWSHarness(t, wsgate.Limits{}, member("b"))
	viaSecond := func(b fakepbx.Binding) fakepbx.Binding {
		var route sip.Uri
		if err := sip.ParseUri("sip:"+h2.Addr["udp"]+";lr", &route); err != nil {
			t.Fatal(err)
		}
		b.Path = []sip.Uri{route}
		return b
	}
	old := startWSPhone(t, "1001", wsURL(h1))
	if res := old.register("pbx-a.example.com", uuid.NewString(), 1, 300, browserPassword); res.StatusCode != 200 {
		t.Fatalf("REGISTER through the first instance: %d", res.StatusCode)
	}
	b := h1.A.Bindings("1001")[0]
	if res := h2.A.SendTo(t, viaSecond(b), sip.MESSAGE); res == nil || res.StatusCode != 480 {
		t.Fatalf("MESSAGE through the second instance: %v, want 480", res)
	}

	// The browser registers the same Contact again through the second
	// instance (a new WebSocket), then its old one closes.
	again := startWSPhone(t, "1001", wsURL(h2))
	again.host = old.host // JsSIP keeps its Contact across reconnects
	if res := again.register("pbx-a.example.com", uuid.NewString(), 1, 300, browserPassword); res.StatusCode != 200 {
		t.Fatalf("REGISTER through the second instance: %d", res.StatusCode)
	}
	_ = old.conn.Close()
	testutil.Eventually(t, "the first instance dropped the closed WebSocket's binding", func() bool { return len(h1.Proxy.Bindings()) == 0 })
	done := make(chan *sip.Response, 1)
	go func() { done <- h2.A.SendTo(t, viaSecond(b), sip.MESSAGE) }()
	m := again.wait("MESSAGE through the second instance", func(m sip.Message) bool {
		r, ok := m.(*sip.Request)
		return ok && r.Method == sip.MESSAGE
	}).(*sip.Request)
	again.respond(m, 200, "OK")
	if res := <-done; res == nil || res.StatusCode != 200 {
		t.Fatalf("MESSAGE to the re-registered browser: %v", res)
	}

	// Its WebSocket to the second instance closes: nothing newer holds
	// the Contact, so the store forgets it and the first instance no
	// longer answers 480 for it.
	_ = again.conn.Close()
	testutil.Eventually(t, "the second instance dropped the binding", func() bool { return len(h2.Proxy.Bindings()) == 0 })
	var route sip.Uri
	if err := sip.ParseUri("sip:"+h1.Addr["udp"]+";lr", &route); err != nil {
		t.Fatal(err)
	}
	b.Path = []sip.Uri{route}
	if res := h1.A.SendTo(t, b, sip.MESSAGE); res != nil && res.StatusCode == 480 {
		t.Fatalf("MESSAGE after every WebSocket closed: 480, the store kept the binding")
	}
}
