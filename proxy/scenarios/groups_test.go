package scenarios

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/miekg/dns"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/dnstest"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// carriersGroup routes "carriers.example.com" to pbx-a, then pbx-b.
func carriersGroup(cfg *proxy.Config, _ *harness) {
	cfg.Groups = []proxy.UpstreamGroup{{Name: "carriers", Upstreams: []string{"pbx-a", "pbx-b"}, Domains: []string{"carriers.example.com"}}}
}

// TestGroupFailover: carrier A refuses the call with 503 (after its
// challenge, answered with A's credential, and without ringing); the call
// completes through carrier B with B's credential. A never sees B's
// username and B never sees A's.
func TestGroupFailover(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{FinalCode: 503, NoProvisional: true}}, Mutate: carriersGroup})
	ph := siptest.StartPhone(t, "1001", "udp", h.Addr["udp"])
	c := ph.Dial("sip:1002@carriers.example.com", siptest.SDP)
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("INVITE: %d, want 200 through carrier B", res.StatusCode)
	}
	c.Ack()
	if authenticated(h.A, "INVITE") != 1 || authenticated(h.B, "INVITE") != 1 {
		t.Fatalf("authenticated INVITEs: A %d, B %d; want 1 each", authenticated(h.A, "INVITE"), authenticated(h.B, "INVITE"))
	}
	assertOnlyUsernames(t, "carrier A", h.A, "alice")
	assertOnlyUsernames(t, "carrier B", h.B, "bob")
	for _, r := range h.A.Requests() {
		if strings.Contains(r.Raw, "bob") {
			t.Fatalf("carrier A received B's username:\n%s", r.Raw)
		}
	}
	waitAck(t, h.B, c.CallID)
	if res := c.Request(sip.BYE, nil); res.StatusCode != 200 || seen(h.B, "BYE") != 1 || seen(h.A, "BYE") != 0 {
		t.Fatalf("BYE: %d, at B %d, at A %d; want 200 at B only", res.StatusCode, seen(h.B, "BYE"), seen(h.A, "BYE"))
	}
}

// TestGroupStopsOnAnswer: a status outside the group's failover list (486
// Busy Here) is the call's answer: relayed, carrier B never tried.
func TestGroupStopsOnAnswer(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{FinalCode: 486, NoProvisional: true}}, Mutate: carriersGroup})
	ph := siptest.StartPhone(t, "1001", "udp", h.Addr["udp"])
	c := ph.Dial("sip:1002@carriers.example.com", siptest.SDP)
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 486 {
		t.Fatalf("INVITE: %d, want 486", res.StatusCode)
	}
	if n := seen(h.B, "INVITE"); n != 0 {
		t.Fatalf("carrier B saw %d INVITEs", n)
	}
}

// TestGroupSkipsUpstreamNotAllowed: a client group that may not use
// carrier A goes to carrier B directly; A sees nothing.
func TestGroupSkipsUpstreamNotAllowed(t *testing.T) {
	h := startHarness(t, harnessOptions{
		Clients: []proxy.ClientGroup{{Name: "b-only", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Upstreams: []string{"pbx-b"}}},
		Mutate:  carriersGroup,
	})
	res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@carriers.example.com", FromUser: "1001"})
	if res.StatusCode != 200 || len(h.A.Requests()) != 0 || authenticated(h.B, "MESSAGE") != 1 {
		t.Fatalf("status %d, A saw %d requests, B %d authenticated; want 200 from B alone", res.StatusCode, len(h.A.Requests()), authenticated(h.B, "MESSAGE"))
	}
}

// TestGroupFailoverWhenUnreachable: carrier A never answers; the request
// moves to carrier B after the failover timeout.
func TestGroupFailoverWhenUnreachable(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Silent: true}, Mutate: func(cfg *proxy.Config, h *harness) {
		carriersGroup(cfg, h)
		cfg.FailoverTimeout = 300 * time.Millisecond
	}})
	res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@carriers.example.com", FromUser: "1001"})
	if res.StatusCode != 200 || authenticated(h.B, "MESSAGE") != 1 {
		t.Fatalf("status %d, B %d authenticated; want 200 from B", res.StatusCode, authenticated(h.B, "MESSAGE"))
	}
	assertOnlyUsernames(t, "carrier B", h.B, "bob")
}

// TestAcceptFrom: an upstream's accept_from admits a BYE into its dialog
// from a listed prefix; from any other address (here another upstream's)
// it is refused.
func TestAcceptFrom(t *testing.T) {
	h := startHarness(t, harnessOptions{Mutate: func(cfg *proxy.Config, _ *harness) {
		cfg.Upstreams[0].AcceptFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")}
	}})
	c := answeredCall(t, h, "udp")
	waitAck(t, h.A, c.CallID)
	if code := sendRawFrom(t, "127.0.0.3", h.Addr["udp"], forgedBye(c, 5000)); code != 403 {
		t.Fatalf("BYE from an address outside accept_from: %d, want 403", code)
	}
	if code := sendRawFrom(t, "127.0.0.9", h.Addr["udp"], forgedBye(c, 5001)); code != 200 {
		t.Fatalf("BYE from accept_from: %d, want 200 (the client's)", code)
	}
	bye := c.Phone.WaitReceived(sip.BYE, 5*time.Second)
	if bye.CSeq().SeqNo != 5001 {
		t.Fatalf("client got BYE CSeq %d, want the accepted one (5001)", bye.CSeq().SeqNo)
	}
}

// TestDNSDownDoesNotSlowAddressedUpstreams: with the DNS server holding
// every query (a name of another upstream pending), requests to an
// upstream addressed by IP complete; a request to the named upstream gets
// 503 once the wait for its first resolution ends.
func TestDNSDownDoesNotSlowAddressedUpstreams(t *testing.T) {
	z := dnstest.New(t)
	release := z.Hold()
	defer release()
	h := startHarness(t, harnessOptions{Mutate: func(cfg *proxy.Config, _ *harness) {
		cfg.DNS = dnsFor(z)
		cfg.DNS.Timeout = 300 * time.Millisecond
		cfg.Upstreams = append(cfg.Upstreams, proxy.Upstream{Name: "named", Address: "named.sip.test:5060", Domains: []string{"named.example.com"}})
	}})
	waitQuery(t, z, "named.sip.test", dns.TypeA)
	res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"})
	if res.StatusCode != 200 {
		t.Fatalf("MESSAGE to an IP upstream while DNS hangs: %d", res.StatusCode)
	}
	c := answeredCall(t, h, "udp")
	waitAck(t, h.A, c.CallID)
	res = h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@named.example.com", FromUser: "1001"})
	if res.StatusCode != 503 {
		t.Fatalf("MESSAGE to the unresolved upstream: %d, want 503", res.StatusCode)
	}
	if !strings.Contains(h.Logs.String(), "upstream has no target to send to") {
		t.Errorf("no log line says why:\n%s", h.Logs.String())
	}
}

// waitQuery waits until z has received a query for name and qtype.
func waitQuery(t *testing.T, z *dnstest.Server, name string, qtype uint16) {
	t.Helper()
	testutil.Eventually(t, "a "+dns.TypeToString[qtype]+" query for "+name, func() bool { return z.Queries(name, qtype) > 0 })
}

// TestReloadChangesTargets: a reload that gives an upstream another name
// sends new requests where the new name resolves to.
func TestReloadChangesTargets(t *testing.T) {
	z := dnstest.New(t)
	z.Set(aRecord("one.sip.test", "127.0.0.2"), aRecord("two.sip.test", "127.0.0.3"))
	h := startHarness(t, harnessOptions{
		B: fakepbx.Config{Accounts: map[string]string{"alice": alicePassword}},
		Credentials: func(a, b string) []credentials.Entry {
			return []credentials.Entry{{Username: "alice", Password: credentials.NewSecret(alicePassword), Realm: "asterisk"}}
		},
		Mutate: func(cfg *proxy.Config, h *harness) {
			cfg.DNS = dnsFor(z)
			cfg.Upstreams = []proxy.Upstream{{Name: "trunk", Address: "one.sip.test:" + strconv.Itoa(h.A.Port()), Default: true}}
		},
	})
	msg := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@anywhere.example.com", FromUser: "1001"}
	if res := h.final(t, "udp", msg); res.StatusCode != 200 || authenticated(h.A, "MESSAGE") != 1 {
		t.Fatalf("before reload: %d, A %d", res.StatusCode, authenticated(h.A, "MESSAGE"))
	}
	cfg := h.Config
	cfg.Upstreams = []proxy.Upstream{{Name: "trunk", Address: "two.sip.test:" + strconv.Itoa(h.B.Port()), Default: true}}
	if err := h.Proxy.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if res := h.final(t, "udp", msg); res.StatusCode != 200 || authenticated(h.B, "MESSAGE") != 1 {
		t.Fatalf("after reload: %d, B %d", res.StatusCode, authenticated(h.B, "MESSAGE"))
	}
}
