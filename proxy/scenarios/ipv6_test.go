package scenarios

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/dnstest"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/proxy"
)

// v6Harness runs authproxy on 127.0.0.1 and [::1] (UDP and TCP each, the
// IPv4 ones first), with pbx-a on ::1 and pbx-b on 127.0.0.3; ::1 is
// admitted.
func v6Harness(t *testing.T) *harness {
	t.Helper()
	return startHarness(t, harnessOptions{A: fakepbx.Config{Host: "::1"}, Mutate: func(cfg *proxy.Config, h *harness) {
		cfg.Listeners = []proxy.Listener{{Transport: "udp", Address: "127.0.0.1:0"}, {Transport: "tcp", Address: "127.0.0.1:0"},
			{Transport: "udp", Address: "[::1]:0"}, {Transport: "tcp", Address: "[::1]:0"}}
		cfg.Clients = []proxy.ClientGroup{{Name: "loopback", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, Upstreams: []string{"*"}}}
	}})
}

// TestIPv6Call: a phone on [::1] calls through authproxy's [::1] listener
// to a PBX on ::1: Via and Record-Route carry the IPv6 listener's
// bracketed address (not the IPv4 listener's, listed first), the call is
// answered, and the callee's BYE reaches the phone. The same phone calls a
// PBX on IPv4: two Record-Route entries, one per family (RFC 5658).
func TestIPv6Call(t *testing.T) {
	h := v6Harness(t)
	for _, tp := range []string{"udp", "tcp"} {
		t.Run(tp, func(t *testing.T) {
			ph := siptest.StartPhoneAt(t, "::1", "1001", tp, h.Addr[tp+"6"])
			c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
			if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
				t.Fatalf("INVITE: %d", res.StatusCode)
			}
			c.Ack()
			inv := lastAuthenticated(t, h.A, "INVITE")
			for _, want := range []string{"Via: SIP/2.0/UDP [::1]:", "Record-Route: <sip:[::1]:"} {
				if !strings.Contains(inv.Raw, want) {
					t.Errorf("INVITE at the PBX lacks %q:\n%s", want, inv.Raw)
				}
			}
			waitAck(t, h.A, c.CallID)
			if code := h.A.HangUp(t, c.CallID); code != 200 {
				t.Fatalf("callee BYE: %d", code)
			}
			c.Phone.WaitReceived(sip.BYE, 5*time.Second)
		})
	}
	t.Run("to-ipv4", func(t *testing.T) {
		ph := siptest.StartPhoneAt(t, "::1", "1001", "udp", h.Addr["udp6"])
		c := ph.Dial("sip:2001@pbx-b.example.com", siptest.SDP)
		if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
			t.Fatalf("INVITE: %d", res.StatusCode)
		}
		c.Ack()
		inv := lastAuthenticated(t, h.B, "INVITE")
		if !strings.Contains(inv.Raw, "Via: SIP/2.0/UDP 127.0.0.1:") || !strings.Contains(inv.Raw, "Record-Route: <sip:127.0.0.1:") || !strings.Contains(inv.Raw, "<sip:[::1]:") {
			t.Errorf("INVITE at the IPv4 PBX: want our IPv4 Via and both Record-Route entries:\n%s", inv.Raw)
		}
		waitAck(t, h.B, c.CallID)
		if code := h.B.HangUp(t, c.CallID); code != 200 {
			t.Fatalf("callee BYE: %d", code)
		}
		c.Phone.WaitReceived(sip.BYE, 5*time.Second)
	})
}

// lastAuthenticated is the last authenticated request of method m a fake
// saw.
func lastAuthenticated(t *testing.T, s *fakepbx.Server, m string) fakepbx.Request {
	t.Helper()
	rs := s.Requests()
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i].Method == m && rs[i].Authenticated {
			return rs[i]
		}
	}
	t.Fatalf("no authenticated %s", m)
	return fakepbx.Request{}
}

// TestIPv6Register: a phone on [::1] registers through authproxy with a
// PBX on ::1 (the Path names [::1]); the PBX then calls it through that
// Path.
func TestIPv6Register(t *testing.T) {
	h := v6Harness(t)
	ph := &regPhone{siptest.StartPhoneAt(t, "::1", "1001", "udp", h.Addr["udp6"])}
	if res := ph.register("reg6-"+ph.Tag, "pbx-a.example.com", 1, "300"); res.StatusCode != 200 {
		t.Fatalf("REGISTER: %d", res.StatusCode)
	}
	reg := lastAuthenticated(t, h.A, "REGISTER")
	if !strings.Contains(reg.Raw, "Path: <sip:[::1]:") {
		t.Errorf("REGISTER lacks a Path at [::1]:\n%s", reg.Raw)
	}
	call := h.A.CallUser(t, "1001")
	if call.Status != 200 {
		t.Fatalf("INVITE to the registered phone: %d", call.Status)
	}
	ph.waitReceived(sip.INVITE, 1)
}

// TestDualStackName: a name with an A and an AAAA record, with authproxy
// listening on IPv4 only: the AAAA target is skipped (no listener of its
// family), the request goes to the IPv4 one.
func TestDualStackName(t *testing.T) {
	z := dnstest.New(t)
	v6 := fakepbx.Start(t, fakepbx.Config{Name: "v6", Host: "::1", Accounts: map[string]string{"alice": alicePassword}})
	v4 := fakepbx.Start(t, fakepbx.Config{Name: "v4", Host: "127.0.0.7", Accounts: map[string]string{"alice": alicePassword}})
	z.Set(aRecord("t1.sip.test", "::1"), aRecord("t2.sip.test", "127.0.0.7"))
	z.Set(srv("_sip._udp.carrier.sip.test", 10, 10, v6.Port(), "t1.sip.test"), srv("_sip._udp.carrier.sip.test", 20, 10, v4.Port(), "t2.sip.test"))
	tp := carrierProxy(t, z, "udp")
	if res := sendVia(t, tp.addr["udp"], siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@carrier.sip.test", FromUser: "1001"}); res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %d", res.StatusCode)
	}
	if len(v6.Requests()) != 0 || authenticated(v4, "MESSAGE") != 1 {
		t.Fatalf("v6 target saw %d requests, v4 %d authenticated; want the v4 one only", len(v6.Requests()), authenticated(v4, "MESSAGE"))
	}
}
