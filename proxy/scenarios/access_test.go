package scenarios

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/proxy"
)

// localPassword is a client's password for authproxy itself; it must
// never reach an upstream or a log either.
const localPassword = "L-local-Pw-93e1"

func prefixes(ps ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func requests(s *fakepbx.Server) int { return len(s.Requests()) }

// TestDeniedSource: a source no group admits gets 403 over UDP, has its
// TCP connection closed unanswered (TestTCPRefusedSource), and the
// upstream sees nothing.
func TestDeniedSource(t *testing.T) {
	h := startHarness(t, harnessOptions{Clients: []proxy.ClientGroup{{Name: "lan", Networks: prefixes("10.0.0.0/8"), Upstreams: []string{"*"}}}})
	res := h.final(t, "udp", siptest.Request{Method: sip.INVITE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"})
	if res.StatusCode != 403 {
		t.Fatalf("udp: status %d, want 403", res.StatusCode)
	}
	r := siptest.DialRaw(t, h.Addr["tcp"], "127.0.0.1")
	_, _ = r.Conn.Write([]byte(r.Message("denied-over-tcp", 5))) // may fail: the connection is closed at once
	if got := r.ClosedByPeer(t); got != "" {
		t.Fatalf("tcp: answered %q, want the connection closed unanswered", got)
	}
	if n := requests(h.A) + requests(h.B); n != 0 {
		t.Fatalf("upstreams saw %d requests from a denied source", n)
	}
}

// TestScope: a group allowed on pbx-b only cannot reach pbx-a, whatever
// Request-URI or Route it sends.
func TestScope(t *testing.T) {
	h := startHarness(t, harnessOptions{Clients: []proxy.ClientGroup{{Name: "b-only", Networks: prefixes("127.0.0.0/8"), Upstreams: []string{"pbx-b"}}}})
	routeToA := sip.RouteHeader{Address: sip.Uri{Scheme: "sip", Host: "127.0.0.2", Port: h.A.Port(), UriParams: sip.HeaderParams{{K: "lr", V: ""}}}}
	for name, c := range map[string]siptest.Request{
		"request-uri": {Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"},
		"route":       {Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-b.example.com", FromUser: "1001", Headers: []sip.Header{&routeToA}},
		"address":     {Method: sip.MESSAGE, RequestURI: "sip:1002@" + h.A.Addr(), FromUser: "1001"},
	} {
		if res := h.final(t, "udp", c); res.StatusCode != 403 {
			t.Fatalf("%s: status %d, want 403", name, res.StatusCode)
		}
	}
	if n := requests(h.A); n != 0 {
		t.Fatalf("pbx-a saw %d requests from a client scoped to pbx-b", n)
	}
	if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:2002@pbx-b.example.com", FromUser: "2001"}); res.StatusCode != 200 {
		t.Fatalf("allowed upstream: status %d", res.StatusCode)
	}
}

// answerLocal computes the answer to authproxy's own challenge.
func answerLocal(t *testing.T, res *sip.Response, req *sip.Request, user, pass string) string {
	t.Helper()
	h := res.GetHeader("Proxy-Authenticate")
	if h == nil {
		t.Fatalf("%d without Proxy-Authenticate", res.StatusCode)
	}
	ch, err := digest.ParseChallenge(h.Value())
	if err != nil {
		t.Fatal(err)
	}
	cr, err := digest.Digest(ch, digest.Options{Method: req.Method.String(), URI: req.Recipient.String(), Username: user, Password: pass, Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	return cr.String()
}

// TestLocalClientAuth: a group with users is challenged by authproxy
// itself; a right answer is forwarded (without it), a wrong one and a
// replayed one are not, and repeated failures block the source.
func TestLocalClientAuth(t *testing.T) {
	groups := []proxy.ClientGroup{{Name: "auth", Networks: prefixes("127.0.0.0/8"), Upstreams: []string{"*"},
		Users: map[string]credentials.Secret{"1001": credentials.NewSecret(localPassword)}}}
	h := startHarness(t, harnessOptions{Clients: groups, Limits: proxy.Limits{AuthFailures: 3, BlockFor: 60e9}})
	c := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001", CallID: "local-auth-1", FromTag: "t1"}

	first := h.final(t, "udp", c)
	if first.StatusCode != 407 || !strings.Contains(first.GetHeader("Proxy-Authenticate").Value(), `realm="authproxy"`) {
		t.Fatalf("first try: %d, want authproxy's own 407", first.StatusCode)
	}
	if n := requests(h.A); n != 0 {
		t.Fatalf("upstream saw %d requests before the client authenticated", n)
	}
	c.CSeq = 2
	auth := answerLocal(t, first, c.Build(t), "1001", localPassword)
	c.Headers = []sip.Header{sip.NewHeader("Proxy-Authorization", auth)}
	if res := h.final(t, "udp", c); res.StatusCode != 200 {
		t.Fatalf("right answer: status %d", res.StatusCode)
	}
	for _, r := range h.A.Requests() {
		if strings.Contains(strings.Join(r.Authorization, " "), `realm="authproxy"`) {
			t.Fatal("the client's answer to authproxy reached the upstream")
		}
	}

	t.Run("replayed", func(t *testing.T) {
		c.CSeq = 3
		if res := h.final(t, "udp", c); res.StatusCode != 407 {
			t.Fatalf("replayed answer: status %d, want 407", res.StatusCode)
		}
	})
	t.Run("wrong password, then blocked", func(t *testing.T) {
		w := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001", CallID: "local-auth-2", FromTag: "t2"}
		res := h.final(t, "udp", w)
		for i := 0; i < 3; i++ {
			w.CSeq++
			w.Headers = []sip.Header{sip.NewHeader("Proxy-Authorization", answerLocal(t, res, w.Build(t), "1001", "guess"))}
			res = h.final(t, "udp", w)
			if i < 2 && res.StatusCode != 407 {
				t.Fatalf("wrong password: status %d, want 407", res.StatusCode)
			}
		}
		if res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"}); res.StatusCode != 503 {
			t.Fatalf("after 3 failures: status %d, want 503 (blocked)", res.StatusCode)
		}
		if !strings.Contains(h.Logs.String(), "source blocked after failed authentications") {
			t.Fatal("block not logged")
		}
	})
	for _, text := range []string{h.Logs.String(), sipTrace.String()} {
		if strings.Contains(text, localPassword) {
			t.Fatal("a local password reached a log")
		}
	}
}

// TestRateLimit: past the burst a source gets 503 with Retry-After. The
// bucket refills one token in 1,000 s, so however slowly the machine runs
// the requests, none comes back before the test ends.
func TestRateLimit(t *testing.T) {
	h := startHarness(t, harnessOptions{Limits: proxy.Limits{Rate: 0.001, Burst: 2}})
	var codes []int
	for i := 0; i < 4; i++ {
		rs := h.do(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"}.Build(t))
		res := rs[len(rs)-1]
		codes = append(codes, res.StatusCode)
		if res.StatusCode == 503 && res.GetHeader("Retry-After") == nil {
			t.Fatal("503 without Retry-After")
		}
	}
	if !slices.Equal(codes, []int{200, 200, 503, 503}) {
		t.Fatalf("statuses %v, want 200, 200, then 503", codes)
	}
}

// TestIdentityHeaders: asserted identity from an untrusted client is
// removed; a trusted group keeps it.
func TestIdentityHeaders(t *testing.T) {
	for _, trusted := range []bool{false, true} {
		h := startHarness(t, harnessOptions{Clients: []proxy.ClientGroup{{Name: "g", Networks: prefixes("127.0.0.0/8"), Upstreams: []string{"*"}, Trusted: trusted}}})
		res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001", Headers: []sip.Header{
			sip.NewHeader("P-Asserted-Identity", "<sip:ceo@example.com>"),
			sip.NewHeader("Remote-Party-ID", "<sip:ceo@example.com>;party=calling"),
			sip.NewHeader("p-preferred-identity", "<sip:ceo@example.com>"),
		}})
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		rs := h.A.Requests()
		raw := strings.ToLower(rs[len(rs)-1].Raw)
		has := strings.Contains(raw, "p-asserted-identity") || strings.Contains(raw, "remote-party-id") || strings.Contains(raw, "p-preferred-identity")
		if has != trusted {
			t.Fatalf("trusted=%v: identity headers forwarded=%v\n%s", trusted, has, raw)
		}
	}
}
