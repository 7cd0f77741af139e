package scenarios

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/miekg/dns"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/dnstest"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/resolve"
)

// Upstreams addressed by name, resolved by authproxy through a DNS server
// in the test (internal/dnstest), and failover among their targets.

// dnsFor is a resolver configuration asking only z, with cached results
// refreshed every 100ms so that zone changes show within a test.
func dnsFor(z *dnstest.Server) resolve.Config {
	return resolve.Config{Servers: []string{z.Addr()}, MinTTL: 100 * time.Millisecond, MaxTTL: 200 * time.Millisecond, Timeout: time.Second}
}

// srv is an SRV record line for name pointing at target:port.
func srv(name string, prio, weight, port int, target string) string {
	return fmt.Sprintf("%s 60 IN SRV %d %d %d %s", dns.Fqdn(name), prio, weight, port, dns.Fqdn(target))
}

// aRecord is an A (or AAAA) record line.
func aRecord(name, ip string) string {
	if strings.Contains(ip, ":") {
		return dns.Fqdn(name) + " 60 IN AAAA " + ip
	}
	return dns.Fqdn(name) + " 60 IN A " + ip
}

// hostnameHarness runs the usual harness with pbx-a addressed as
// "pbx-a.sip.test:<port>" (an A record to 127.0.0.2), its credentials
// scoped to that name.
func hostnameHarness(t *testing.T, o harnessOptions) (*harness, *dnstest.Server) {
	t.Helper()
	z := dnstest.New(t)
	z.Set(aRecord("pbx-a.sip.test", "127.0.0.2"))
	o.Credentials = func(a, b string) []credentials.Entry {
		return defaultCredentials("pbx-a.sip.test:"+strconv.Itoa(testutil.PortOf(t, a)), b)
	}
	mutate := o.Mutate
	o.Mutate = func(cfg *proxy.Config, h *harness) {
		cfg.DNS = dnsFor(z)
		cfg.Upstreams[0].Address = "pbx-a.sip.test:" + strconv.Itoa(h.A.Port())
		if mutate != nil {
			mutate(cfg, h)
		}
	}
	return startHarness(t, o), z
}

// TestHostnameUpstream: an upstream addressed by name takes calls and
// MESSAGEs (the fast lane) at the address the name resolves to, with the
// credential scoped to the name; the callee's BYE, from that address, is
// accepted into the dialog and reaches the client.
func TestHostnameUpstream(t *testing.T) {
	h, _ := hostnameHarness(t, harnessOptions{})
	res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"})
	if res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %d", res.StatusCode)
	}
	c := answeredCall(t, h, "udp")
	waitAck(t, h.A, c.CallID)
	if code := h.A.HangUp(t, c.CallID); code != 200 {
		t.Fatalf("callee BYE: %d, want 200", code)
	}
	c.Phone.WaitReceived(sip.BYE, 5*time.Second)
	waitDialogs(t, h, 0)
	assertOnlyUsernames(t, "pbx-a", h.A, "alice")
	for _, u := range h.Proxy.UpstreamHealth() {
		if u.Name == "pbx-a" && (len(u.Targets) != 1 || u.Targets[0].Address != h.A.Addr() || u.Resolved.IsZero()) {
			t.Errorf("pbx-a health %+v, want one target %s, resolved", u, h.A.Addr())
		}
	}
}

// TestTrunkRegistrationByName: a trunk registration with an upstream
// addressed by name registers at its address, an INVITE from there to the
// registered contact reaches the registration's target, and stopping the
// proxy unregisters it (Expires: 0) although the run context is gone.
func TestTrunkRegistrationByName(t *testing.T) {
	z := dnstest.New(t)
	z.Set(aRecord("trunk.sip.test", "127.0.0.5"))
	pbx := fakepbx.Start(t, fakepbx.Config{Name: "trunk", Host: "127.0.0.5", Accounts: map[string]string{"trunkuser": "right-password"}})
	name := "trunk.sip.test:" + strconv.Itoa(pbx.Port())
	creds := []credentials.Entry{{Username: "trunkuser", Password: credentials.NewSecret("right-password"), Server: name}}
	ph := startRegPhone(t, "1001", "udp", "")
	tp := startTrunkProxy(t, name, proxy.Registration{
		Upstream: "trunk", AOR: "sip:trunk1@trunk.sip.test", ContactUser: "trunk1", Expires: time.Minute,
		Target: "sip:1001@" + ph.Addr,
	}, creds, func(c *proxy.Config) { c.DNS = dnsFor(z) })
	ph.Proxy = tp.addr["udp"]
	pbx.WaitFor(t, 5*time.Second, func(rs []fakepbx.Request) bool {
		for _, r := range rs {
			if r.Method == "REGISTER" && r.Authenticated {
				return true
			}
		}
		return false
	})
	call := pbx.CallUser(t, "trunk1")
	if call.Status != 200 {
		t.Fatalf("INVITE to the trunk contact: %d, want 200", call.Status)
	}
	ph.waitReceived(sip.INVITE, 1)
	ph.waitReceived(sip.ACK, 1)
	if code := pbx.HangUp(t, call.CallID); code != 200 {
		t.Fatalf("BYE: %d", code)
	}
	ph.waitReceived(sip.BYE, 1)
	tp.stop()
	if len(pbx.Bindings("trunk1")) != 0 {
		t.Fatalf("still registered after stop: %+v", pbx.Bindings("trunk1"))
	}
}

// carrierZone publishes "carrier.sip.test" with SRV records for transport
// tp ("udp"/"tcp") toward the given targets, "t<i>.sip.test" each, the
// first one at priority 10, the next at 20, and so on.
func carrierZone(t *testing.T, z *dnstest.Server, tp string, targets ...string) {
	t.Helper()
	var recs []string
	for i, addr := range targets {
		host, _, _ := net.SplitHostPort(addr)
		name := fmt.Sprintf("t%d.sip.test", i+1)
		z.Set(aRecord(name, host))
		recs = append(recs, srv("_sip._"+tp+".carrier.sip.test", 10*(i+1), 10, testutil.PortOf(t, addr), name))
	}
	z.Set(recs...)
}

// carrierProxy runs authproxy with one upstream "carrier" at the domain
// carrier.sip.test (SRV), over tp, with alice's credential scoped to it,
// a failover timeout of 300ms, and returns it with its address.
func carrierProxy(t *testing.T, z *dnstest.Server, tp string) *trunkProxy {
	t.Helper()
	creds := []credentials.Entry{{Username: "alice", Password: credentials.NewSecret(alicePassword), Server: "carrier.sip.test"}}
	return startTrunkProxy(t, "carrier.sip.test", proxy.Registration{}, creds, func(c *proxy.Config) {
		c.DNS = dnsFor(z)
		c.Registrations = nil
		c.Upstreams[0] = proxy.Upstream{Name: "carrier", Address: "carrier.sip.test", Transport: tp, Default: true}
		c.FailoverTimeout = 300 * time.Millisecond
		c.UpstreamTimeout = 5 * time.Second
	})
}

// sendVia sends one request built by c to the proxy at addr over UDP and
// returns the final response.
func sendVia(t *testing.T, addr string, c siptest.Request) *sip.Response {
	t.Helper()
	h := &harness{Addr: map[string]string{"udp": addr}}
	h.client = newTestClient(t)
	return h.final(t, "udp", c)
}

// authenticated counts the authenticated requests of method m a fake saw.
func authenticated(s *fakepbx.Server, m string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Method == m && r.Authenticated {
			n++
		}
	}
	return n
}

// seen counts the requests of method m a fake saw.
func seen(s *fakepbx.Server, m string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Method == m {
			n++
		}
	}
	return n
}

// TestFailoverOnTimeout: the first target (by SRV priority) never answers;
// a MESSAGE (fast lane) and an INVITE both complete at the second target
// after the failover timeout, each as one transaction for the client.
func TestFailoverOnTimeout(t *testing.T) {
	z := dnstest.New(t)
	dead := fakepbx.Start(t, fakepbx.Config{Name: "dead", Host: "127.0.0.6", Silent: true})
	live := fakepbx.Start(t, fakepbx.Config{Name: "live", Host: "127.0.0.7", Accounts: map[string]string{"alice": alicePassword}})
	carrierZone(t, z, "udp", dead.Addr(), live.Addr())
	tp := carrierProxy(t, z, "udp")
	if res := sendVia(t, tp.addr["udp"], siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@carrier.sip.test", FromUser: "1001"}); res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %d, want 200 from the second target", res.StatusCode)
	}
	if seen(dead, "MESSAGE") == 0 || authenticated(live, "MESSAGE") != 1 {
		t.Fatalf("dead saw %d MESSAGEs, live %d authenticated; want the dead one tried first", seen(dead, "MESSAGE"), authenticated(live, "MESSAGE"))
	}
	ph := siptest.StartPhone(t, "1001", "udp", tp.addr["udp"])
	c := ph.Dial("sip:1002@carrier.sip.test", siptest.SDP)
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("INVITE: %d, want 200", res.StatusCode)
	}
	c.Ack()
	if authenticated(live, "INVITE") != 1 {
		t.Fatalf("live target saw %d authenticated INVITEs", authenticated(live, "INVITE"))
	}
	st := health(t, tp.p, "carrier")
	if len(st.Targets) != 2 || st.Targets[0].LastFailure != "timeout" || st.Targets[0].AvoidUntil.IsZero() {
		t.Errorf("first target's health %+v, want avoided after a timeout", st.Targets)
	}
}

// health returns the UpstreamHealth of the upstream called name.
func health(t *testing.T, p *proxy.Proxy, name string) proxy.UpstreamHealth {
	t.Helper()
	for _, u := range p.UpstreamHealth() {
		if u.Name == name {
			return u
		}
	}
	t.Fatalf("no upstream %q", name)
	return proxy.UpstreamHealth{}
}

// TestFailoverOnTransportError: over TCP, the first target refuses the
// connection; the request is sent to the second at once.
func TestFailoverOnTransportError(t *testing.T) {
	z := dnstest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.6:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close() // nothing listens there any more: connection refused
	live := fakepbx.Start(t, fakepbx.Config{Name: "live", Host: "127.0.0.7", Accounts: map[string]string{"alice": alicePassword}})
	carrierZone(t, z, "tcp", refused, live.Addr())
	tp := carrierProxy(t, z, "tcp")
	if res := sendVia(t, tp.addr["udp"], siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1002@carrier.sip.test", FromUser: "1001"}); res.StatusCode != 200 {
		t.Fatalf("OPTIONS: %d, want 200 from the second target", res.StatusCode)
	}
	if st := health(t, tp.p, "carrier"); st.Targets[0].LastFailure != "transport-error" {
		t.Errorf("first target's failure %q, want transport-error", st.Targets[0].LastFailure)
	}
}

// TestFailoverOn503: the first target answers 503 (after its challenge);
// the request moves to the second, whose own challenge is answered afresh,
// and the next request starts at the second (the first is avoided).
func TestFailoverOn503(t *testing.T) {
	z := dnstest.New(t)
	busy := fakepbx.Start(t, fakepbx.Config{Name: "busy", Host: "127.0.0.6", FinalCode: 503, Accounts: map[string]string{"alice": alicePassword}})
	live := fakepbx.Start(t, fakepbx.Config{Name: "live", Host: "127.0.0.7", Accounts: map[string]string{"alice": alicePassword}})
	carrierZone(t, z, "udp", busy.Addr(), live.Addr())
	tp := carrierProxy(t, z, "udp")
	msg := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@carrier.sip.test", FromUser: "1001"}
	if res := sendVia(t, tp.addr["udp"], msg); res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %d, want 200 from the second target", res.StatusCode)
	}
	if authenticated(busy, "MESSAGE") != 1 || authenticated(live, "MESSAGE") != 1 {
		t.Fatalf("busy saw %d, live %d authenticated MESSAGEs, want 1 each", authenticated(busy, "MESSAGE"), authenticated(live, "MESSAGE"))
	}
	before := seen(busy, "MESSAGE")
	if res := sendVia(t, tp.addr["udp"], msg); res.StatusCode != 200 {
		t.Fatalf("second MESSAGE: %d", res.StatusCode)
	}
	if n := seen(busy, "MESSAGE"); n != before {
		t.Fatalf("the 503 target got %d more MESSAGEs; it should be avoided", n-before)
	}
}

// TestNoFailoverAfterProvisional: a target that rang (180) and then
// answers 503 ends the INVITE there (the callee may have rung): the client
// gets 500 (RFC 3261 §16.7 step 6) and the second target sees no INVITE.
func TestNoFailoverAfterProvisional(t *testing.T) {
	z := dnstest.New(t)
	rang := fakepbx.Start(t, fakepbx.Config{Name: "rang", Host: "127.0.0.6", Accounts: map[string]string{"alice": alicePassword},
		Call: fakepbx.CallConfig{FinalCode: 503, Ring: 50 * time.Millisecond}})
	other := fakepbx.Start(t, fakepbx.Config{Name: "other", Host: "127.0.0.7", Accounts: map[string]string{"alice": alicePassword}})
	carrierZone(t, z, "udp", rang.Addr(), other.Addr())
	tp := carrierProxy(t, z, "udp")
	ph := siptest.StartPhone(t, "1001", "udp", tp.addr["udp"])
	c := ph.Dial("sip:1002@carrier.sip.test", siptest.SDP)
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 500 {
		t.Fatalf("INVITE: %d, want 500", res.StatusCode)
	}
	if n := seen(other, "INVITE"); n != 0 {
		t.Fatalf("the second target saw %d INVITEs after the first rang", n)
	}
}

// TestInDialogStaysOnTarget: once a call is up on one of two equal targets,
// the client's in-dialog requests go to that target, even after DNS
// stopped listing it; a BYE from the other target is refused.
func TestInDialogStaysOnTarget(t *testing.T) {
	z := dnstest.New(t)
	one := fakepbx.Start(t, fakepbx.Config{Name: "one", Host: "127.0.0.6", Accounts: map[string]string{"alice": alicePassword}})
	two := fakepbx.Start(t, fakepbx.Config{Name: "two", Host: "127.0.0.7", Accounts: map[string]string{"alice": alicePassword}})
	z.Set(aRecord("t1.sip.test", "127.0.0.6"), aRecord("t2.sip.test", "127.0.0.7"))
	z.Set(srv("_sip._udp.carrier.sip.test", 10, 10, one.Port(), "t1.sip.test"), srv("_sip._udp.carrier.sip.test", 10, 10, two.Port(), "t2.sip.test"))
	tp := carrierProxy(t, z, "udp")
	ph := siptest.StartPhone(t, "1001", "udp", tp.addr["udp"])
	c := ph.Dial("sip:1002@carrier.sip.test", siptest.SDP)
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("INVITE: %d", res.StatusCode)
	}
	c.Ack()
	answered, other := one, two
	if authenticated(two, "INVITE") == 1 {
		answered, other = two, one
	}
	waitAck(t, answered, c.CallID)
	// DNS now lists only the other target.
	otherName := "t1.sip.test"
	if other == two {
		otherName = "t2.sip.test"
	}
	z.Set(srv("_sip._udp.carrier.sip.test", 10, 10, other.Port(), otherName))
	testutil.Eventually(t, "the carrier resolving to the other target only", func() bool {
		ts := health(t, tp.p, "carrier").Targets
		return len(ts) == 1 && ts[0].Address == other.Addr()
	})
	if code := sendRawFrom(t, otherHost(other), tp.addr["udp"], forgedBye(c, 7777)); code != 403 {
		t.Fatalf("BYE from the other target: %d, want 403", code)
	}
	if res := c.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE: %d", res.StatusCode)
	}
	if seen(answered, "BYE") != 1 || seen(other, "BYE") != 0 {
		t.Fatalf("BYEs: %d at the call's target, %d at the other; want 1 and 0", seen(answered, "BYE"), seen(other, "BYE"))
	}
}

// otherHost is the IP of a fake.
func otherHost(s *fakepbx.Server) string {
	h, _, _ := net.SplitHostPort(s.Addr())
	return h
}

// newTestClient is a plain sipgo client on loopback, as the harness's.
func newTestClient(t *testing.T) *sipgo.Client {
	t.Helper()
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("e2e-client"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ua.Close() })
	c, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTransportAuto: with transport "auto" the domain's NAPTR record
// chooses the transport (here TCP, RFC 3263 §4.1), then SRV the target.
func TestTransportAuto(t *testing.T) {
	z := dnstest.New(t)
	pbx := fakepbx.Start(t, fakepbx.Config{Name: "pbx", Host: "127.0.0.6", Accounts: map[string]string{"alice": alicePassword}})
	z.Set(`carrier.sip.test. 60 IN NAPTR 10 50 "s" "SIP+D2T" "" _sip._tcp.carrier.sip.test.`)
	z.Set(srv("_sip._tcp.carrier.sip.test", 10, 10, pbx.Port(), "t1.sip.test"), aRecord("t1.sip.test", "127.0.0.6"))
	tp := carrierProxy(t, z, "auto")
	if res := sendVia(t, tp.addr["udp"], siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@carrier.sip.test", FromUser: "1001"}); res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %d", res.StatusCode)
	}
	for _, r := range pbx.Requests() {
		if r.Transport != "TCP" {
			t.Fatalf("request over %s, want TCP as NAPTR says", r.Transport)
		}
	}
	if st := health(t, tp.p, "carrier"); st.Transport != "auto" || len(st.Targets) != 1 || st.Targets[0].Transport != "tcp" {
		t.Errorf("health %+v", st)
	}
}

// TestPerTargetHealth: health checks ping every target of an upstream; a
// target that never answers is marked down while the upstream stays up
// through the other, and requests skip the target marked down.
func TestPerTargetHealth(t *testing.T) {
	z := dnstest.New(t)
	dead := fakepbx.Start(t, fakepbx.Config{Name: "dead", Host: "127.0.0.6", Silent: true})
	live := fakepbx.Start(t, fakepbx.Config{Name: "live", Host: "127.0.0.7", Accounts: map[string]string{"alice": alicePassword}})
	carrierZone(t, z, "udp", dead.Addr(), live.Addr())
	creds := []credentials.Entry{{Username: "alice", Password: credentials.NewSecret(alicePassword), Server: "carrier.sip.test"}}
	tp := startTrunkProxy(t, "carrier.sip.test", proxy.Registration{}, creds, func(c *proxy.Config) {
		c.DNS = dnsFor(z)
		c.Registrations = nil
		c.Upstreams[0] = proxy.Upstream{Name: "carrier", Address: "carrier.sip.test", Default: true}
		c.Health = proxy.HealthCheck{Interval: 100 * time.Millisecond, Timeout: pingTimeout, DownAfter: 1, UpAfter: 1}
	})
	testutil.Eventually(t, "the silent target marked down, the other up", func() bool {
		st := health(t, tp.p, "carrier")
		return st.State == proxy.HealthUp && len(st.Targets) == 2 &&
			st.Targets[0].State == proxy.HealthDown && st.Targets[1].State == proxy.HealthUp
	})
	pings := seen(dead, "OPTIONS")
	if res := sendVia(t, tp.addr["udp"], siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@carrier.sip.test", FromUser: "1001"}); res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %d", res.StatusCode)
	}
	if n := seen(dead, "MESSAGE"); n != 0 {
		t.Fatalf("the target marked down got %d MESSAGEs (and %d pings)", n, pings)
	}
}

// TestPreemptivePerTarget: with preemptive answers on, an upstream whose
// name has two targets of equal priority (each with its own nonces) gets,
// at each target, answers computed for that target's nonces only: no
// target ever sees an answer it refuses, and both see preemptive ones.
func TestPreemptivePerTarget(t *testing.T) {
	z := dnstest.New(t)
	one := fakepbx.Start(t, fakepbx.Config{Name: "one", Host: "127.0.0.6", Accounts: map[string]string{"alice": alicePassword}})
	two := fakepbx.Start(t, fakepbx.Config{Name: "two", Host: "127.0.0.7", Accounts: map[string]string{"alice": alicePassword}})
	z.Set(aRecord("t1.sip.test", "127.0.0.6"), aRecord("t2.sip.test", "127.0.0.7"))
	z.Set(srv("_sip._udp.carrier.sip.test", 10, 10, one.Port(), "t1.sip.test"), srv("_sip._udp.carrier.sip.test", 10, 10, two.Port(), "t2.sip.test"))
	creds := []credentials.Entry{{Username: "alice", Password: credentials.NewSecret(alicePassword), Server: "carrier.sip.test"}}
	tp := startTrunkProxy(t, "carrier.sip.test", proxy.Registration{}, creds, func(c *proxy.Config) {
		c.DNS = dnsFor(z)
		c.Registrations = nil
		c.Upstreams[0] = proxy.Upstream{Name: "carrier", Address: "carrier.sip.test", Default: true, Preemptive: proxy.PreemptiveAll}
	})
	for i := range 40 {
		msg := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@carrier.sip.test", FromUser: "1001"}
		if res := sendVia(t, tp.addr["udp"], msg); res.StatusCode != 200 {
			t.Fatalf("MESSAGE %d: %d", i, res.StatusCode)
		}
	}
	for _, s := range []*fakepbx.Server{one, two} {
		challenged := map[string]bool{}
		preemptive := 0
		for _, r := range s.Requests() {
			if r.Method != "MESSAGE" {
				continue
			}
			switch {
			case len(r.Authorization) > 0 && !r.Authenticated:
				t.Errorf("%s refused an answer (computed for another target's nonce?):\n%s", s.Addr(), r.Raw)
			case len(r.Authorization) == 0:
				challenged[r.CallID] = true
			case !challenged[r.CallID]:
				preemptive++
			}
		}
		if preemptive == 0 {
			t.Errorf("%s got no preemptive answer", s.Addr())
		}
	}
}
