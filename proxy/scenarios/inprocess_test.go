package scenarios

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers (log handlers).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Passwords of the two fake PBXs' accounts; distinctive so that a grep for
// them in logs cannot hit anything by chance.
const (
	alicePassword = "A-alice-Pw-7c1e9d"
	bobPassword   = "B-bob-Pw-51f0aa"
	carolPassword = "A-carol-Pw-2b2b2b"
)

// harness is authproxy in process between a test client and two fake
// Asterisk-like upstreams: pbx-a on 127.0.0.2 and pbx-b on 127.0.0.3, both
// realm "asterisk" with different accounts.
type harness struct {
	A, B  *fakepbx.Server
	Proxy *proxy.Proxy
	// Config is the proxy configuration it runs with, without its logger,
	// observer and ready hook: a base for Reload tests.
	Config  proxy.Config
	Addr    map[string]string // "udp"/"tcp" -> proxy address
	Logs    *syncBuffer
	client  *sipgo.Client
	entries []credentials.Entry
}

type harnessOptions struct {
	A, B            fakepbx.Config
	UpstreamTCP     bool // upstreams reached over TCP instead of UDP
	Credentials     func(a, b string) []credentials.Entry
	UpstreamTimeout time.Duration
	TimerC          time.Duration
	// ExtraUpstreams are configured after pbx-a and pbx-b.
	ExtraUpstreams []proxy.Upstream
	// Upstreams, when set, replaces pbx-a and pbx-b as the configured
	// upstreams (the fakes still run).
	Upstreams []proxy.Upstream
	// Observer and Health are passed to the proxy as they are.
	Observer proxy.Observer
	Health   proxy.HealthCheck
	// Clients replaces the default client group (all of 127.0.0.0/8, every
	// upstream).
	Clients []proxy.ClientGroup
	Limits  proxy.Limits
	// ListenTLS adds a TLS listener with this server configuration.
	ListenTLS *tls.Config
	// TCP limits the TCP and TLS listeners' connections (off when zero).
	TCP tcpguard.Limits
	// Lookup replaces the credential store built from Credentials.
	Lookup proxy.Credentials
	// RegisterMode is pbx-a's and pbx-b's Upstream.RegisterMode.
	RegisterMode string
	// Preemptive is pbx-a's and pbx-b's Upstream.Preemptive (default off).
	Preemptive proxy.Preemptive
	// Mutate, when set, edits the proxy configuration last, once the fake
	// PBXs run (their addresses are known).
	Mutate func(*proxy.Config, *harness)
	// Profile is how pbx-a and pbx-b judge requests (default
	// asteriskProfile).
	Profile pbxProfile
}

// pbxProfile is how a harness's fake PBXs judge requests, as one kind of
// real server does.
type pbxProfile string

const (
	// asteriskProfile (the default) turns on every strict mode of the
	// fake: first credential per realm, nonces that expire (stale=true),
	// 401 for every method as Asterisk's PJSIP sends, registrar bounds
	// (423 below 60 s, at most 3600 s), Request-URI and route set checks in
	// dialogs, RFC 7616 quoting.
	asteriskProfile pbxProfile = ""
	// kamailioProfile is as strict, but challenges REGISTER with 401 and
	// every other method with 407 (www_challenge and proxy_challenge) and
	// keeps nonces 300 s (the auth module's nonce_expire).
	kamailioProfile pbxProfile = "kamailio"
	// lenientProfile is the fake without strict modes, for a test of what
	// only a lenient server lets through.
	lenientProfile pbxProfile = "lenient"
)

// kamailioNonceExpire is the Kamailio auth module's nonce_expire default.
const kamailioNonceExpire = 300 * time.Second

// strictProfiles are the profiles the main scenarios run against.
var strictProfiles = []pbxProfile{asteriskProfile, kamailioProfile}

func (p pbxProfile) String() string {
	if p == asteriskProfile {
		return "asterisk"
	}
	return string(p)
}

// apply returns c judged as p says; what c sets explicitly is kept.
func (p pbxProfile) apply(c fakepbx.Config) fakepbx.Config {
	switch p {
	case lenientProfile:
		return c
	case kamailioProfile:
		if c.ChallengeCode == nil {
			c.ChallengeCode = fakepbx.DefaultChallengeCode
		}
		if c.NonceLifetime == 0 {
			c.NonceLifetime = kamailioNonceExpire
		}
	}
	c.Strict = true
	return c
}

// challengeCode is the status p challenges method with.
func (p pbxProfile) challengeCode(method sip.RequestMethod) int {
	if p == asteriskProfile {
		return fakepbx.Always401(method.String())
	}
	return fakepbx.DefaultChallengeCode(method.String())
}

func defaultCredentials(a, b string) []credentials.Entry {
	return []credentials.Entry{
		{Username: "alice", Password: credentials.NewSecret(alicePassword), Server: a, Realm: "asterisk"},
		{Username: "bob", Password: credentials.NewSecret(bobPassword), Server: b, Realm: "asterisk"},
		{Username: "carol", Password: credentials.NewSecret(carolPassword), Server: a, Realm: "asterisk", User: "1003"},
	}
}

func startHarness(t *testing.T, o harnessOptions) *harness {
	t.Helper()
	if o.A.Host == "" {
		o.A.Host = "127.0.0.2"
	}
	if o.B.Host == "" {
		o.B.Host = "127.0.0.3"
	}
	if o.A.Accounts == nil {
		o.A.Accounts = map[string]string{"alice": alicePassword, "carol": carolPassword}
	}
	if o.B.Accounts == nil {
		o.B.Accounts = map[string]string{"bob": bobPassword}
	}
	o.A.Name, o.B.Name = "pbx-a", "pbx-b"
	o.A, o.B = o.Profile.apply(o.A), o.Profile.apply(o.B)
	h := &harness{A: fakepbx.Start(t, o.A), B: fakepbx.Start(t, o.B), Logs: &syncBuffer{}}
	if o.Credentials == nil {
		o.Credentials = defaultCredentials
	}
	h.entries = o.Credentials(h.A.Addr(), h.B.Addr())
	store, err := credentials.NewStore(h.entries)
	if err != nil {
		t.Fatalf("credentials: %v", err)
	}
	tp := "udp"
	if o.UpstreamTCP {
		tp = "tcp"
	}
	ready := make(chan struct{})
	ups := o.Upstreams
	if ups == nil {
		ups = append([]proxy.Upstream{
			{Name: "pbx-a", Address: h.A.Addr(), Transport: tp, Domains: []string{"pbx-a.example.com"}, Preemptive: o.Preemptive, RegisterMode: o.RegisterMode},
			{Name: "pbx-b", Address: h.B.Addr(), Transport: tp, Domains: []string{"pbx-b.example.com"}, Preemptive: o.Preemptive, RegisterMode: o.RegisterMode},
		}, o.ExtraUpstreams...)
	}
	cfg := proxy.Config{
		Listeners:       listeners(o.ListenTLS),
		Upstreams:       ups,
		Credentials:     lookupOr(o.Lookup, store),
		Clients:         clientsOr(o.Clients),
		Limits:          o.Limits,
		TCP:             o.TCP,
		UpstreamTimeout: o.UpstreamTimeout,
		TimerC:          o.TimerC,
		ShutdownGrace:   2 * time.Second,
		Logger:          slog.New(slog.NewJSONHandler(h.Logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		SIPTrace:        true,
		Observer:        o.Observer,
		Health:          o.Health,
		Ready:           func() { close(ready) },
	}
	if o.Mutate != nil {
		o.Mutate(&cfg, h)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("proxy stopped before ready: %v", err)
	case <-time.After(5 * time.Second):
		cancel()
		t.Fatal("proxy not ready after 5s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("proxy Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("proxy did not stop within 10s")
		}
	})
	h.Proxy, h.Addr = p, p.ListenAddrs()
	cfg.Logger, cfg.Ready, cfg.Observer = nil, nil, nil
	h.Config = cfg
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("e2e-client"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ua.Close() })
	h.client, err = sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func listeners(tlsConf *tls.Config) []proxy.Listener {
	ls := []proxy.Listener{{Transport: "udp", Address: "127.0.0.1:0"}, {Transport: "tcp", Address: "127.0.0.1:0"}}
	if tlsConf != nil {
		ls = append(ls, proxy.Listener{Transport: "tls", Address: "127.0.0.1:0", TLS: tlsConf})
	}
	return ls
}

// fakepbxAccounts is a fake PBX config with one account.
func fakepbxAccounts(user, pass string) fakepbx.Config {
	return fakepbx.Config{Accounts: map[string]string{user: pass}}
}

func clientsOr(c []proxy.ClientGroup) []proxy.ClientGroup {
	if c != nil {
		return c
	}
	return []proxy.ClientGroup{{Name: "loopback", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Upstreams: []string{"*"}}}
}

func lookupOr(l proxy.Credentials, store *credentials.Store) proxy.Credentials {
	if l != nil {
		return l
	}
	return store
}

// do sends req to the proxy over transport ("udp"/"tcp") and returns every
// response the client got, the final one last.
func (h *harness) do(t *testing.T, transport string, req *sip.Request) []*sip.Response {
	t.Helper()
	req.SetDestination(h.Addr[transport])
	req.SetTransport(strings.ToUpper(transport))
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	tx, err := h.client.TransactionRequest(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		t.Fatalf("send %s: %v", req.Method, err)
	}
	defer tx.Terminate()
	var got []*sip.Response
	for {
		select {
		case res := <-tx.Responses():
			got = append(got, res)
			if !res.IsProvisional() {
				return got
			}
		case <-tx.Done():
			t.Fatalf("%s: client transaction ended without a final response: %v", req.Method, tx.Err())
		case <-ctx.Done():
			t.Fatalf("%s: no final response", req.Method)
		}
	}
}

// final sends and returns the final response.
func (h *harness) final(t *testing.T, transport string, c siptest.Request) *sip.Response {
	t.Helper()
	req := c.Build(t)
	rs := h.do(t, transport, req)
	res := rs[len(rs)-1]
	if res.CSeq().SeqNo != req.CSeq().SeqNo || res.CSeq().MethodName != req.Method {
		t.Fatalf("response CSeq %v, client sent %v", res.CSeq().Value(), req.CSeq().Value())
	}
	return res
}

func ruriFor(method sip.RequestMethod, domain, user string) string {
	if method == sip.REGISTER {
		return "sip:" + domain
	}
	return "sip:" + user + "@" + domain
}

var coreMethods = []sip.RequestMethod{sip.REGISTER, sip.OPTIONS, sip.MESSAGE, sip.SUBSCRIBE}

// TestEveryMethodToEveryUpstream is the core product: a client without a
// password gets 200 from both upstreams for every method, over both client
// transports and both upstream transports, against upstreams as strict as
// Asterisk (401 for everything) and Kamailio (407 outside REGISTER), under
// the default configuration (preemptive answers) and with preemptive off.
// Both upstreams challenge with the same realm; what each received on the
// wire shows only its own account. Under the default, the first request of
// a method to an upstream is challenged and every later one carries an
// answer from the first try; with preemptive off every request is
// challenged once.
func TestEveryMethodToEveryUpstream(t *testing.T) {
	for _, pm := range preemptiveModes(t) {
		for _, tc := range []struct {
			profile pbxProfile
			upTCP   bool
		}{{asteriskProfile, false}, {asteriskProfile, true}, {kamailioProfile, false}, {kamailioProfile, true}} {
			t.Run(fmt.Sprintf("%s/%s/upstream_tcp=%v", pm.name, tc.profile, tc.upTCP), func(t *testing.T) {
				testEveryMethodToEveryUpstream(t, pm, tc.profile, tc.upTCP)
			})
		}
	}
}

// testEveryMethodToEveryUpstream is one case of TestEveryMethodToEveryUpstream.
func testEveryMethodToEveryUpstream(t *testing.T, pm preemptiveMode, profile pbxProfile, upTCP bool) {
	h := startHarness(t, harnessOptions{UpstreamTCP: upTCP, Profile: profile, Preemptive: pm.mode,
		A: fakepbx.Config{Clock: frozenClock()}, B: fakepbx.Config{Clock: frozenClock()}})
	challenged := map[string]bool{} // method and upstream challenged once already
	preemptive := map[string]int{}  // upstream -> requests accepted without a challenge
	for _, transport := range []string{"udp", "tcp"} {
		for _, m := range coreMethods {
			for _, target := range []struct {
				name, domain, user string
				pbx                *fakepbx.Server
			}{{"pbx-a", "pbx-a.example.com", "1001", h.A}, {"pbx-b", "pbx-b.example.com", "2001", h.B}} {
				t.Run(fmt.Sprintf("%s/%s/%s", transport, m, target.domain), func(t *testing.T) {
					before, challenges := len(target.pbx.Requests()), target.pbx.Challenges()
					res := h.final(t, transport, siptest.Request{Method: m, RequestURI: ruriFor(m, target.domain, target.user), FromUser: target.user})
					if res.StatusCode != 200 {
						t.Fatalf("status %d %s, want 200", res.StatusCode, res.Reason)
					}
					reqs := target.pbx.Requests()[before:]
					key := string(m) + "/" + target.name
					if pm.on() && challenged[key] {
						// The upstream challenged this method before and
						// accepted the answer: this one carries an answer
						// computed from that challenge, and is accepted.
						if len(reqs) != 1 || !reqs[0].Authenticated || len(reqs[0].Authorization) == 0 {
							t.Fatalf("upstream saw %v, want one request accepted with a preemptive answer", summarize(reqs))
						}
						if n := target.pbx.Challenges() - challenges; n != 0 {
							t.Fatalf("upstream sent %d challenges, want none", n)
						}
						preemptive[target.name]++
						return
					}
					if len(reqs) != 2 || reqs[0].Authenticated || len(reqs[0].Authorization) != 0 || !reqs[1].Authenticated {
						t.Fatalf("upstream saw %d requests, want challenge then authenticated: %+v", len(reqs), summarize(reqs))
					}
					if reqs[1].CSeq != reqs[0].CSeq+1 {
						t.Fatalf("re-send CSeq %d after %d, want +1", reqs[1].CSeq, reqs[0].CSeq)
					}
					if reqs[1].Branch == reqs[0].Branch {
						t.Fatalf("re-send with the challenged request's branch %s, want a new transaction", reqs[1].Branch)
					}
					challenged[key] = true
				})
			}
		}
	}
	if pm.on() && (preemptive["pbx-a"] == 0 || preemptive["pbx-b"] == 0) {
		t.Errorf("preemptive answers accepted: %v; want some at each upstream, or the isolation below proves nothing of them", preemptive)
	}
	assertOnlyUsernames(t, "pbx-a", h.A, "alice")
	assertOnlyUsernames(t, "pbx-b", h.B, "bob")
}

func summarize(rs []fakepbx.Request) []string {
	var out []string
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%s cseq=%d auth=%v user=%q", r.Method, r.CSeq, r.Authenticated, r.AuthUsername))
	}
	return out
}

func assertOnlyUsernames(t *testing.T, name string, s *fakepbx.Server, allowed ...string) {
	t.Helper()
	for _, r := range s.Requests() {
		for _, v := range r.Authorization {
			ok := false
			for _, a := range allowed {
				if strings.Contains(v, `username="`+a+`"`) {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s received a foreign credential: %s", name, v)
			}
		}
	}
}

// TestUserScopedCredential: a credential scoped to SIP user 1003 beats the
// server-wide one for requests sent for 1003 only: the From user, but the
// To user for a REGISTER (a registration is for its To address, whoever
// sends it).
func TestUserScopedCredential(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	for _, tc := range []struct {
		method   sip.RequestMethod
		from, to string
		want     string
	}{
		{sip.MESSAGE, "1003", "1001", "carol"},
		{sip.MESSAGE, "1004", "1001", "alice"},
		{sip.MESSAGE, "1004", "1003", "alice"},
		{sip.REGISTER, "1003", "1003", "carol"},
		{sip.REGISTER, "1004", "1003", "carol"},
		{sip.REGISTER, "1003", "1004", "alice"},
	} {
		res := h.final(t, "udp", siptest.Request{Method: tc.method, RequestURI: ruriFor(tc.method, "pbx-a.example.com", tc.to), FromUser: tc.from, ToUser: tc.to})
		rs := h.A.Requests()
		if got := rs[len(rs)-1].AuthUsername; res.StatusCode != 200 || got != tc.want {
			t.Errorf("%s from %s to %s: status %d as %q, want 200 as %s", tc.method, tc.from, tc.to, res.StatusCode, got, tc.want)
		}
	}
}

// TestWrongPassword: rejected credentials are not retried (RFC 3261 §22.1);
// the client gets the upstream's final challenge once.
func TestWrongPassword(t *testing.T) {
	for _, profile := range strictProfiles {
		for _, m := range []sip.RequestMethod{sip.REGISTER, sip.MESSAGE} {
			t.Run(profile.String()+"/"+m.String(), func(t *testing.T) {
				h := startHarness(t, harnessOptions{Profile: profile, A: fakepbx.Config{Accounts: map[string]string{"alice": "not-the-configured-one"}}})
				rs := h.do(t, "udp", siptest.Request{Method: m, RequestURI: ruriFor(m, "pbx-a.example.com", "1001"), FromUser: "1001"}.Build(t))
				want := profile.challengeCode(m)
				if res := rs[len(rs)-1]; res.StatusCode != want {
					t.Fatalf("status %d, want %d", res.StatusCode, want)
				}
				if n := h.A.Challenges(); n != 2 {
					t.Fatalf("upstream sent %d challenges, want 2 (one answered, one relayed)", n)
				}
				if n := len(h.A.Requests()); n != 2 {
					t.Fatalf("upstream saw %d requests, want 2", n)
				}
			})
		}
	}
}

// TestAnonymousFallback: nothing matches → anonymous is tried once; a PBX
// that refuses it gets its challenge relayed to the client, one that
// accepts it lets the request through.
func TestAnonymousFallback(t *testing.T) {
	none := func(a, b string) []credentials.Entry {
		return []credentials.Entry{{Username: "bob", Password: credentials.NewSecret(bobPassword), Server: b}}
	}
	t.Run("refused", func(t *testing.T) {
		h := startHarness(t, harnessOptions{Credentials: none})
		res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"})
		if want := asteriskProfile.challengeCode(sip.OPTIONS); res.StatusCode != want {
			t.Fatalf("status %d, want %d", res.StatusCode, want)
		}
		rs := h.A.Requests()
		if len(rs) != 2 || rs[1].AuthUsername != "anonymous" {
			t.Fatalf("want one anonymous try, got %v", summarize(rs))
		}
		assertOnlyUsernames(t, "pbx-a", h.A, "anonymous")
	})
	t.Run("accepted", func(t *testing.T) {
		h := startHarness(t, harnessOptions{Credentials: none, A: fakepbx.Config{Accounts: map[string]string{"anonymous": ""}}})
		res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"})
		if res.StatusCode != 200 {
			t.Fatalf("status %d, want 200", res.StatusCode)
		}
	})
}

// TestAlgorithmsAndQOP: every algorithm (and -sess form) and qop the
// upstream may ask for, verified by the fake's independent digest code.
func TestAlgorithmsAndQOP(t *testing.T) {
	for _, tc := range []struct {
		name string
		algs []string
		qop  string
	}{
		{"MD5", []string{"MD5"}, "auth"},
		{"SHA-256", []string{"SHA-256"}, "auth"},
		{"SHA-512-256", []string{"SHA-512-256"}, "auth"},
		{"MD5-sess", []string{"MD5-sess"}, "auth"},
		{"SHA-256-sess", []string{"SHA-256-sess"}, "auth"},
		{"no qop (RFC 2069)", []string{"MD5"}, "none"},
		{"auth-int only", []string{"SHA-256"}, "auth-int"},
		{"RFC 8760 topmost: SHA-256 then MD5", []string{"SHA-256", "MD5"}, "auth,auth-int"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, harnessOptions{A: fakepbx.Config{Algorithms: tc.algs, QOP: tc.qop}})
			res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com;transport=udp", FromUser: "1001",
				Body: []byte("Hello with a body\r\n"), ContentType: "text/plain"})
			if res.StatusCode != 200 {
				t.Fatalf("status %d", res.StatusCode)
			}
			rs := h.A.Requests()
			last := rs[len(rs)-1]
			if len(last.Authorization) != 1 {
				t.Fatalf("want exactly one answer (topmost per realm), got %q", last.Authorization)
			}
			if want := "algorithm=" + tc.algs[0]; !strings.Contains(last.Authorization[0], want) {
				t.Fatalf("answer %q lacks %s", last.Authorization[0], want)
			}
		})
	}
}

// TestStaleNonce: stale=true is retried with the new nonce, invisibly.
func TestStaleNonce(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{StaleOnce: true}})
	res := h.final(t, "tcp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"})
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	if n := len(h.A.Requests()); n != 3 {
		t.Fatalf("upstream saw %d requests, want 3 (challenge, stale, ok)", n)
	}
}

// TestTwoRealms: one 401 with two realms gets one answer per realm, each
// with the credential for that realm.
func TestTwoRealms(t *testing.T) {
	creds := func(a, b string) []credentials.Entry {
		return []credentials.Entry{
			{Username: "alice", Password: credentials.NewSecret(alicePassword), Server: a, Realm: "asterisk"},
			{Username: "alice", Password: credentials.NewSecret(alicePassword), Server: a, Realm: "voicemail"},
		}
	}
	h := startHarness(t, harnessOptions{Credentials: creds, A: fakepbx.Config{ExtraRealms: []string{"voicemail"}}})
	res := h.final(t, "udp", siptest.Request{Method: sip.REGISTER, RequestURI: "sip:pbx-a.example.com", FromUser: "1001"})
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	rs := h.A.Requests()
	if got := len(rs[len(rs)-1].Authorization); got != 2 {
		t.Fatalf("%d Authorization headers, want 2", got)
	}
}

// TestRegisterRefreshSameCallID: after an authenticated REGISTER the
// upstream has seen CSeq N+1; the client's refresh N+1 must reach it as
// N+2 or higher (RFC 3261 §10.3 step 7), and come back as N+1.
func TestRegisterRefreshSameCallID(t *testing.T) {
	for _, profile := range strictProfiles {
		t.Run(profile.String(), func(t *testing.T) {
			h := startHarness(t, harnessOptions{Profile: profile})
			c := siptest.Request{Method: sip.REGISTER, RequestURI: "sip:pbx-a.example.com", FromUser: "1001", CallID: uuid.NewString(), FromTag: "fixedtag", CSeq: 1}
			for i := 0; i < 3; i++ {
				for _, transport := range []string{"udp", "tcp"} {
					res := h.final(t, transport, c)
					if res.StatusCode != 200 {
						t.Fatalf("REGISTER cseq %d over %s: status %d %s", c.CSeq, transport, res.StatusCode, res.Reason)
					}
					c.CSeq++
				}
			}
			// The fake answers 500 to any non-increasing CSeq per Call-ID;
			// all 200 above already proves the offset. Check the numbers
			// too.
			var last uint32
			for _, r := range h.A.Requests() {
				if r.CSeq <= last {
					t.Fatalf("upstream CSeq went %d -> %d", last, r.CSeq)
				}
				last = r.CSeq
			}
		})
	}
}

// TestUpstreamSilent: no answer at all → 408 to the client.
func TestUpstreamSilent(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Silent: true}, UpstreamTimeout: 1500 * time.Millisecond})
	res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"})
	if res.StatusCode != 408 {
		t.Fatalf("status %d, want 408", res.StatusCode)
	}
}

// TestUpstreamUnreachable: a TCP upstream that refuses connections → 503.
func TestUpstreamUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	h := startHarness(t, harnessOptions{ExtraUpstreams: []proxy.Upstream{
		{Name: "dead", Address: dead, Transport: "tcp", Domains: []string{"dead.example.com"}},
	}})
	res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1001@dead.example.com", FromUser: "1001"})
	if res.StatusCode != 503 {
		t.Fatalf("status %d, want 503", res.StatusCode)
	}
}

// TestProxyRules covers RFC 3261 §16 checks done locally.
func TestProxyRules(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	t.Run("max-forwards 0", func(t *testing.T) {
		req := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}.Build(t)
		mf := sip.MaxForwardsHeader(0)
		req.ReplaceHeader(&mf)
		rs := h.do(t, "udp", req)
		if got := rs[len(rs)-1].StatusCode; got != 483 {
			t.Fatalf("status %d, want 483", got)
		}
	})
	t.Run("max-forwards decremented", func(t *testing.T) {
		res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1001@pbx-b.example.com", FromUser: "1001"})
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		rs := h.B.Requests()
		if raw := rs[len(rs)-1].Raw; !strings.Contains(raw, "Max-Forwards: 69") {
			t.Fatalf("upstream got:\n%s", raw)
		}
	})
	t.Run("unknown host is never forwarded", func(t *testing.T) {
		for _, tp := range []string{"udp", "tcp"} {
			mark := h.upstreamMark()
			res := h.final(t, tp, siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@attacker.example.net", FromUser: "1001"})
			if res.StatusCode != 404 {
				t.Fatalf("%s: status %d, want 404", tp, res.StatusCode)
			}
			h.assertNoUpstreamTrafficSince(t, mark)
		}
	})
	t.Run("proxy-require", func(t *testing.T) {
		// §16.3 step 5: authproxy supports no extension a proxy must
		// understand; each one asked for is named in Unsupported.
		for _, tp := range []string{"udp", "tcp"} {
			mark := h.upstreamMark()
			res := h.final(t, tp, siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001",
				Headers: []sip.Header{sip.NewHeader("Proxy-Require", "foo"), sip.NewHeader("Proxy-Require", "bar, baz")}})
			if res.StatusCode != 420 {
				t.Fatalf("%s: status %d, want 420 Bad Extension", tp, res.StatusCode)
			}
			var unsupported []string
			for _, u := range res.GetHeaders("Unsupported") {
				for _, v := range strings.Split(u.Value(), ",") {
					unsupported = append(unsupported, strings.TrimSpace(v))
				}
			}
			if strings.Join(unsupported, ",") != "foo,bar,baz" {
				t.Fatalf("%s: Unsupported %q, want foo, bar, baz", tp, unsupported)
			}
			h.assertNoUpstreamTrafficSince(t, mark)
		}
	})
	t.Run("client authorization stripped", func(t *testing.T) {
		res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001",
			Headers: []sip.Header{sip.NewHeader("authorization", `Digest username="mallory", realm="asterisk", nonce="x", uri="sip:x", response="00"`),
				sip.NewHeader("Proxy-Authorization", `Digest username="mallory2", realm="asterisk", nonce="x", uri="sip:x", response="00"`)}})
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		for _, r := range h.A.Requests() {
			for _, a := range r.Authorization {
				if strings.Contains(a, "mallory") {
					t.Fatalf("client credentials forwarded: %s", a)
				}
			}
		}
	})
	t.Run("loop", func(t *testing.T) {
		req := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}.Build(t)
		host, port, _ := net.SplitHostPort(h.Addr["udp"])
		p, _ := strconv.Atoi(port)
		via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP", Host: host, Port: p, Params: sip.NewParams()}
		via.Params.Add("branch", sip.GenerateBranch())
		req.AppendHeader(via)
		rs := h.do(t, "udp", req)
		if got := rs[len(rs)-1].StatusCode; got != 482 {
			t.Fatalf("status %d, want 482", got)
		}
	})
	t.Run("options to the proxy itself", func(t *testing.T) {
		res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:" + h.Addr["udp"], FromUser: "1001"})
		if res.StatusCode != 200 {
			t.Fatalf("status %d, want 200", res.StatusCode)
		}
	})
}

// TestNoSecretsInLogsOrResponses runs challenged exchanges with debug logs
// and SIP traces on, under the default configuration (so preemptive
// answers are computed too), then greps everything authproxy logged or
// traced and everything sent to the client for every configured password,
// and for every digest response and cnonce authproxy computed (taken from
// what the upstreams received).
func TestNoSecretsInLogsOrResponses(t *testing.T) {
	tracedBefore := len(redactedAuth.FindAllStringIndex(sipTrace.String(), -1))
	h := startHarness(t, harnessOptions{Preemptive: productDefaultPreemptive(t)})
	var responses strings.Builder
	for range 2 { // the second round goes with preemptive answers
		for _, m := range coreMethods {
			for _, d := range []string{"pbx-a.example.com", "pbx-b.example.com"} {
				rs := h.do(t, "udp", siptest.Request{Method: m, RequestURI: ruriFor(m, d, "1003"), FromUser: "1003"}.Build(t))
				for _, r := range rs {
					responses.WriteString(r.String())
				}
			}
		}
	}
	// A failing exchange too: its errors and warnings are logged.
	h2 := startHarness(t, harnessOptions{A: fakepbx.Config{Accounts: map[string]string{"alice": "other"}}})
	for _, r := range h2.do(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1@pbx-a.example.com", FromUser: "1"}.Build(t)) {
		responses.WriteString(r.String())
	}
	logs := h.Logs.String() + h2.Logs.String()
	if !strings.Contains(logs, `"msg":"answering challenge"`) {
		t.Fatal("debug log lines missing: the grep below would prove nothing")
	}
	secrets := []string{alicePassword, bobPassword, carolPassword}
	computed := 0
	for _, pbx := range []*fakepbx.Server{h.A, h.B, h2.A} {
		for _, r := range pbx.Requests() {
			for _, a := range r.Authorization {
				for _, m := range digestSecretParam.FindAllStringSubmatch(a, -1) {
					secrets = append(secrets, m[2])
					computed++
				}
			}
		}
	}
	if computed < 2*len(coreMethods) {
		t.Fatalf("only %d digest responses and cnonces found upstream: the grep below would prove little", computed)
	}
	for where, text := range map[string]string{"proxy logs": logs, "sip trace": sipTrace.String(), "responses to the client": responses.String()} {
		for _, secret := range secrets {
			if i := strings.Index(text, secret); i >= 0 {
				t.Errorf("%q found in %s: ...%s...", secret, where, testutil.Excerpt(text, i))
			}
		}
	}
	if n := redactedAuth.FindAllStringIndex(sipTrace.String(), -1); len(n) <= tracedBefore {
		t.Error("sip trace shows no redacted Authorization of this test: tracer not exercised")
	}
}

// redactedAuth matches a credentials header as the SIP trace shows it.
var redactedAuth = regexp.MustCompile(`(?i)authorization: \[redacted\]`)

// digestSecretParam matches the response and cnonce of digest
// credentials: values that must never be logged.
var digestSecretParam = regexp.MustCompile(`(?i)\b(response|cnonce)\s*=\s*"?([^",\s]+)"?`)

// panicky is a credential source that panics, standing in for any bug on
// the request path.
type panicky struct{}

func (panicky) Lookup(string, string, string) credentials.Credential { panic("boom") }

// TestPanicAnswers500: a panic while handling a request answers 500 and the
// proxy keeps serving.
func TestPanicAnswers500(t *testing.T) {
	h := startHarness(t, harnessOptions{Lookup: panicky{}})
	for i := 0; i < 2; i++ {
		res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"})
		if res.StatusCode != 500 {
			t.Fatalf("status %d, want 500", res.StatusCode)
		}
	}
	if !strings.Contains(h.Logs.String(), "panic while handling request") {
		t.Fatal("panic not logged")
	}
}
