package scenarios

// Operations tests in process: metrics after a scripted scenario, health
// checks flipping readiness, reloads during a call and under load. The
// harness here is startHarness's twin with the metrics observer, the admin
// listener and health checks wired in, as cmd/authproxy wires them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/admin"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/metrics"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// opsOptions configures startOps.
type opsOptions struct {
	A, B fakepbx.Config
	// Credentials default to defaultCredentials.
	Credentials func(a, b string) []credentials.Entry
	// Upstreams, when set, replaces pbx-a and pbx-b as the configured
	// upstreams (the fakes still run).
	Upstreams []proxy.Upstream
	Health    proxy.HealthCheck
}

// opsHarness is authproxy in process with metrics and the admin listener.
type opsHarness struct {
	*harness
	tap   *observerTap
	admin string // "http://127.0.0.1:port"
	base  proxy.Config
}

func startOps(t *testing.T, o opsOptions) *opsHarness {
	t.Helper()
	m := metrics.New("test")
	tap := newObserverTap(m)
	h := startHarness(t, harnessOptions{A: o.A, B: o.B, Credentials: o.Credentials, Upstreams: o.Upstreams, Observer: tap, Health: o.Health})
	p := h.Proxy
	m.Attach(p)
	var known metrics.Known
	for _, u := range h.Config.Upstreams {
		known.Upstreams = append(known.Upstreams, u.Name)
	}
	m.Prime(known)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := admin.New(admin.Config{
		Metrics: m.Handler(),
		Ready:   p.Readiness,
		Status: func() admin.Status {
			st := admin.Status{Version: "test", InFlight: p.InFlight(), Dialogs: p.DialogCount(), HealthChecks: o.Health.Interval > 0}
			for _, u := range p.UpstreamHealth() {
				st.Upstreams = append(st.Upstreams, admin.Upstream{Name: u.Name, Address: u.Address, Transport: u.Transport,
					State: string(u.State), LastStatus: u.LastStatus, LastError: u.LastError, Pings: u.Pings, Failures: u.Failures})
			}
			return st
		},
	})
	adminCtx, stopAdmin := context.WithCancel(context.Background())
	adminDone := make(chan error, 1)
	go func() { adminDone <- srv.Serve(adminCtx, ln) }()
	t.Cleanup(func() {
		stopAdmin()
		if err := <-adminDone; err != nil {
			t.Errorf("admin Serve: %v", err)
		}
		if t.Failed() {
			t.Logf("proxy logs:\n%s", h.Logs.String())
		}
	})
	return &opsHarness{harness: h, tap: tap, admin: "http://" + ln.Addr().String(), base: h.Config}
}

// observerTap is the metrics observer, plus notifications the tests wait
// on instead of sleeping: requests finished and upstream state changes.
type observerTap struct {
	*metrics.Metrics
	mu      sync.Mutex
	done    int            // RequestDone calls
	states  map[string]int // upstream -> state changes seen
	last    map[string]bool
	changed chan struct{}
}

func newObserverTap(m *metrics.Metrics) *observerTap {
	return &observerTap{Metrics: m, states: map[string]int{}, last: map[string]bool{}, changed: make(chan struct{})}
}

func (o *observerTap) notify() {
	close(o.changed)
	o.changed = make(chan struct{})
}

func (o *observerTap) RequestDone(method, upstream string, status int, outcome string, total, nextHop time.Duration) {
	o.Metrics.RequestDone(method, upstream, status, outcome, total, nextHop)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.done++
	o.notify()
}

func (o *observerTap) UpstreamStateChanged(upstream string, up bool) {
	o.Metrics.UpstreamStateChanged(upstream, up)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.states[upstream]++
	o.last[upstream] = up
	o.notify()
}

// waitFor waits (bounded) until cond, called under the tap's lock after
// every event, holds.
func (o *observerTap) waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		o.mu.Lock()
		ok, ch := cond(), o.changed
		o.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("not within %v: %s", timeout, what)
		}
	}
}

// waitRequests waits until n requests have been reported done.
func (o *observerTap) waitRequests(t *testing.T, n int) {
	t.Helper()
	o.waitFor(t, fmt.Sprintf("%d requests done", n), 10*time.Second, func() bool { return o.done >= n })
}

// waitState waits until upstream's latest state change is to up, and at
// least n changes were seen; it returns the number seen.
func (o *observerTap) waitState(t *testing.T, upstream string, up bool, n int) {
	t.Helper()
	o.waitFor(t, fmt.Sprintf("upstream %s marked up=%v (change #%d)", upstream, up, n), 10*time.Second, func() bool {
		return o.states[upstream] >= n && o.last[upstream] == up
	})
}

func (h *opsHarness) scrape(t *testing.T) testutil.Metrics {
	t.Helper()
	code, body := testutil.HTTPGet(t, h.admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	return testutil.ParseMetrics(t, body)
}

// TestOpsMetricsScenario sends a scripted mix of requests and checks that
// the counters on /metrics match what was sent, label by label.
func TestOpsMetricsScenario(t *testing.T) {
	creds := func(a, b string) []credentials.Entry {
		return append(defaultCredentials(a, b),
			// SIP user 2999 on pbx-b gets a password pbx-b refuses.
			credentials.Entry{Username: "bob", Password: credentials.NewSecret("not-bobs-password"), Server: b, Realm: "asterisk", User: "2999"})
	}
	// pbx-a marks the first correct answer of each request stale, so each
	// request to it is answered twice: challenge, stale, accepted.
	// pbx-b challenges as Kamailio does (407 outside REGISTER), so both
	// challenge statuses are counted.
	h := startOps(t, opsOptions{A: fakepbx.Config{StaleOnce: true}, B: fakepbx.Config{ChallengeCode: fakepbx.DefaultChallengeCode}, Credentials: creds})

	const messagesA, registersB = 3, 2
	for i := range messagesA {
		if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}); res.StatusCode != 200 {
			t.Fatalf("MESSAGE %d to pbx-a: %d", i, res.StatusCode)
		}
	}
	for i := range registersB {
		if res := h.final(t, "tcp", siptest.Request{Method: sip.REGISTER, RequestURI: "sip:pbx-b.example.com", FromUser: "2001"}); res.StatusCode != 200 {
			t.Fatalf("REGISTER %d to pbx-b: %d", i, res.StatusCode)
		}
	}
	if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:2001@pbx-b.example.com", FromUser: "2999"}); res.StatusCode != 407 {
		t.Fatalf("MESSAGE with refused credentials: %d, want 407", res.StatusCode)
	}
	if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1@nowhere.example.net", FromUser: "1001"}); res.StatusCode != 404 {
		t.Fatalf("MESSAGE to an unknown host: %d, want 404", res.StatusCode)
	}
	if res := h.final(t, "udp", siptest.Request{Method: "FROBNICATE", RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}); res.StatusCode == 0 {
		t.Fatal("no answer to an invented method")
	}
	const sent = messagesA + registersB + 3
	const toA = messagesA + 1   // an invented method is still forwarded: to pbx-a
	h.tap.waitRequests(t, sent) // RequestDone runs after the response is sent

	ms := h.scrape(t)
	testutil.ExpectMetric(t, ms, "authproxy_requests_total", testutil.Labels{"method": "MESSAGE", "upstream": "pbx-a", "status": "200"}, messagesA)
	testutil.ExpectMetric(t, ms, "authproxy_requests_total", testutil.Labels{"method": "REGISTER", "upstream": "pbx-b", "status": "200"}, registersB)
	testutil.ExpectMetric(t, ms, "authproxy_requests_total", testutil.Labels{"method": "MESSAGE", "upstream": "pbx-b", "status": "407"}, 1)
	testutil.ExpectMetric(t, ms, "authproxy_requests_total", testutil.Labels{"method": "MESSAGE", "upstream": "none", "status": "404"}, 1)
	testutil.ExpectMetric(t, ms, "authproxy_requests_total", testutil.Labels{"method": "other", "upstream": "pbx-a", "status": "200"}, 1) // no label per invented method
	testutil.ExpectMetric(t, ms, "authproxy_requests_total", testutil.Labels{}, sent)
	// pbx-a: challenge + stale challenge per request; pbx-b: one per
	// REGISTER and one for the refused MESSAGE.
	testutil.ExpectMetric(t, ms, "authproxy_challenges_answered_total", testutil.Labels{"upstream": "pbx-a", "realm": "asterisk"}, 2*toA)
	testutil.ExpectMetric(t, ms, "authproxy_challenges_answered_total", testutil.Labels{"upstream": "pbx-b", "realm": "asterisk"}, registersB+1)
	testutil.ExpectMetric(t, ms, "authproxy_stale_retries_total", testutil.Labels{"upstream": "pbx-a"}, toA)
	testutil.ExpectMetricZeroOrAbsent(t, ms, "authproxy_stale_retries_total", testutil.Labels{"upstream": "pbx-b"})
	testutil.ExpectMetric(t, ms, "authproxy_retries_total", testutil.Labels{"upstream": "pbx-a"}, 2*toA)
	testutil.ExpectMetric(t, ms, "authproxy_retries_total", testutil.Labels{"upstream": "pbx-b"}, registersB+1)
	testutil.ExpectMetric(t, ms, "authproxy_auth_failures_total", testutil.Labels{"upstream": "pbx-b", "reason": "rejected"}, 1)
	testutil.ExpectMetricZeroOrAbsent(t, ms, "authproxy_auth_failures_total", testutil.Labels{"upstream": "pbx-a"})
	testutil.ExpectMetric(t, ms, "authproxy_request_outcomes_total", testutil.Labels{"upstream": "none", "outcome": "no-route"}, 1)
	testutil.ExpectMetric(t, ms, "authproxy_request_duration_seconds_count", testutil.Labels{"method": "MESSAGE"}, messagesA+2)
	testutil.ExpectMetric(t, ms, "authproxy_request_duration_seconds_count", testutil.Labels{"method": "REGISTER"}, registersB)
	testutil.ExpectMetric(t, ms, "authproxy_upstream_request_duration_seconds_count", testutil.Labels{"method": "MESSAGE", "upstream": "pbx-a"}, messagesA)
	testutil.ExpectMetric(t, ms, "authproxy_upstream_request_duration_seconds_count", testutil.Labels{"method": "REGISTER", "upstream": "pbx-b"}, registersB)
	testutil.ExpectMetric(t, ms, "authproxy_dialogs", testutil.Labels{}, 0)
	if _, ok := ms.Sum("authproxy_active_transactions", nil); !ok {
		t.Error("authproxy_active_transactions missing")
	}
	if _, ok := ms.Sum("authproxy_upstream_up", nil); ok {
		t.Error("authproxy_upstream_up reported with health checks off")
	}
	// No label value may carry a username, a Call-ID or a password.
	for _, s := range ms {
		for k, v := range s.Labels {
			for _, bad := range []string{"alice", "bob", "carol", "1001", "2001", "2999", alicePassword, bobPassword, "@"} {
				if strings.Contains(v, bad) {
					t.Errorf("%s has label %s=%q", s.Name, k, v)
				}
			}
		}
	}
	// Nor any admin answer a secret, a username or a Call-ID.
	bad := []string{"alice", "bob", "carol", alicePassword, bobPassword}
	for _, r := range append(h.A.Requests(), h.B.Requests()...) {
		bad = append(bad, r.CallID)
	}
	for _, path := range []string{"/status", "/readyz", "/healthz"} {
		code, body := testutil.HTTPGet(t, h.admin+path)
		if code != 200 {
			t.Errorf("%s: %d", path, code)
		}
		for _, b := range bad {
			if strings.Contains(body, b) {
				t.Errorf("%s answers with %q:\n%s", path, b, body)
			}
		}
	}
}

// pingTimeout is how long the health tests' pings wait for an answer:
// long enough that a busy machine does not turn a late answer into a
// failure (the silent upstreams are marked down a little later for it).
const pingTimeout = 2 * time.Second

// TestOpsReadinessFollowsUpstreamHealth: with OPTIONS health checks on,
// /readyz fails once the only upstream has missed down_after pings in a
// row, and recovers after up_after answered ones.
func TestOpsReadinessFollowsUpstreamHealth(t *testing.T) {
	r := siptest.StartResponder(t, "127.0.0.6")
	const downAfter, upAfter = 2, 3
	h := startOps(t, opsOptions{
		Upstreams: []proxy.Upstream{{Name: "flaky", Address: r.Addr(), Transport: "udp", Default: true}},
		Health:    proxy.HealthCheck{Interval: 30 * time.Millisecond, Timeout: pingTimeout, DownAfter: downAfter, UpAfter: upAfter},
	})

	h.tap.waitState(t, "flaky", true, 1) // unknown -> up on the first answer
	if code, body := testutil.HTTPGet(t, h.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz with the upstream up: %d %s", code, body)
	}

	r.Silent.Store(true)
	h.tap.waitState(t, "flaky", false, 2)
	if n := r.Options.Ignored.Load(); n < downAfter {
		t.Errorf("marked down after %d unanswered pings, want at least %d", n, downAfter)
	}
	code, body := testutil.HTTPGet(t, h.admin+"/readyz")
	if code != 503 || !strings.Contains(body, "every upstream is down") || !strings.Contains(body, "flaky") {
		t.Fatalf("/readyz with the upstream down: %d %q", code, body)
	}
	if code, _ := testutil.HTTPGet(t, h.admin+"/healthz"); code != 200 {
		t.Errorf("/healthz: %d, want 200 whatever the upstreams", code)
	}
	var st admin.Status
	_, sb := testutil.HTTPGet(t, h.admin+"/status")
	if err := json.Unmarshal([]byte(sb), &st); err != nil {
		t.Fatal(err)
	}
	if st.Ready || len(st.Upstreams) != 1 || st.Upstreams[0].State != "down" || st.Upstreams[0].LastError == "" || st.TrunkRegistrations == nil {
		t.Fatalf("/status with the upstream down:\n%s", sb)
	}
	ms := h.scrape(t)
	testutil.ExpectMetric(t, ms, "authproxy_upstream_up", testutil.Labels{"upstream": "flaky"}, 0)
	testutil.ExpectMetric(t, ms, "authproxy_upstream_state_changes_total", testutil.Labels{"upstream": "flaky", "state": "down"}, 1)

	answeredBefore := r.Options.Answered.Load()
	r.Silent.Store(false)
	h.tap.waitState(t, "flaky", true, 3)
	if n := r.Options.Answered.Load() - answeredBefore; n < upAfter {
		t.Errorf("marked up after %d answered pings, want at least %d (hysteresis)", n, upAfter)
	}
	if code, body := testutil.HTTPGet(t, h.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz after recovery: %d %s", code, body)
	}
	testutil.ExpectMetric(t, h.scrape(t), "authproxy_upstream_up", testutil.Labels{"upstream": "flaky"}, 1)
}

// TestOpsHealthChallengingUpstreams: an upstream that challenges the
// OPTIONS (as Asterisk does) is alive; the pings carry no credentials and
// one unreachable upstream among several keeps the proxy ready.
func TestOpsHealthChallengingUpstreams(t *testing.T) {
	dead := siptest.StartResponder(t, "127.0.0.7")
	dead.Silent.Store(true)
	h := startOps(t, opsOptions{Health: proxy.HealthCheck{Interval: 30 * time.Millisecond, Timeout: pingTimeout, DownAfter: 1}})
	h.tap.waitState(t, "pbx-a", true, 1)
	h.tap.waitState(t, "pbx-b", true, 1)

	// A reload adds an upstream that never answers.
	cfg := h.base
	cfg.Upstreams = append(cfg.Upstreams, proxy.Upstream{Name: "dead", Address: dead.Addr(), Transport: "udp", Domains: []string{"dead.example.com"}})
	if err := h.Proxy.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	h.tap.waitState(t, "dead", false, 1)
	if code, body := testutil.HTTPGet(t, h.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz with one upstream of three down: %d %s", code, body)
	}
	var st admin.Status
	_, sb := testutil.HTTPGet(t, h.admin+"/status")
	if err := json.Unmarshal([]byte(sb), &st); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"pbx-a": "up", "pbx-b": "up", "dead": "down"}
	for _, u := range st.Upstreams {
		if want[u.Name] != u.State {
			t.Errorf("%s: state %q, want %q", u.Name, u.State, want[u.Name])
		}
		if u.Name != "dead" && u.LastStatus != 407 && u.LastStatus != 401 {
			t.Errorf("%s: last status %d, want the fake's challenge", u.Name, u.LastStatus)
		}
	}
	if len(st.Upstreams) != 3 {
		t.Fatalf("/status lists %d upstreams, want 3:\n%s", len(st.Upstreams), sb)
	}
	for _, r := range h.A.Requests() {
		if r.Method != "OPTIONS" {
			continue
		}
		if len(r.Authorization) != 0 {
			t.Errorf("health ping carried credentials: %q", r.Authorization)
		}
		for _, hdr := range []string{"From: <sip:authproxy@", "Max-Forwards: 70", "CSeq: 1 OPTIONS", "Accept: application/sdp"} {
			if !strings.Contains(r.Raw, hdr) {
				t.Errorf("health ping lacks %q:\n%s", hdr, r.Raw)
			}
		}
		break
	}
	ms := h.scrape(t)
	testutil.ExpectMetric(t, ms, "authproxy_upstream_up", testutil.Labels{"upstream": "pbx-a"}, 1)
	testutil.ExpectMetric(t, ms, "authproxy_upstream_up", testutil.Labels{"upstream": "dead"}, 0)
	if v, _ := ms.Sum("authproxy_upstream_pings_total", testutil.Labels{"upstream": "pbx-a", "result": "answered"}); v < 1 {
		t.Errorf("pings answered by pbx-a = %v", v)
	}
	// Health pings are not client requests.
	testutil.ExpectMetricZeroOrAbsent(t, ms, "authproxy_requests_total", testutil.Labels{})

	// With the dead upstream the only one left, every upstream is down:
	// not ready.
	cfg.Upstreams = cfg.Upstreams[len(cfg.Upstreams)-1:]
	if err := h.Proxy.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if err := h.Proxy.Readiness(); !errors.Is(err, proxy.ErrNoUpstreamUp) {
		t.Fatalf("Readiness with every upstream down: %v, want %v", err, proxy.ErrNoUpstreamUp)
	}
	if code, body := testutil.HTTPGet(t, h.admin+"/readyz"); code != 503 {
		t.Fatalf("/readyz with every upstream down: %d %s, want 503", code, body)
	}
	// Turning health checks off by reload forgets the states: ready again
	// as soon as the interval is 0 (the checker forgets them on its next
	// turn).
	cfg.Health = proxy.HealthCheck{}
	if err := h.Proxy.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if err := h.Proxy.Readiness(); err != nil {
		t.Errorf("Readiness with health checks off: %v", err)
	}
	if code, body := testutil.HTTPGet(t, h.admin+"/readyz"); code != 200 {
		t.Errorf("/readyz with health checks off: %d %s, want 200", code, body)
	}
}

// opsCredentials returns defaultCredentials with pbx-a's account replaced
// by username (alice or carol: the fake pbx-a knows both).
func opsCredentials(a, b, username string) []credentials.Entry {
	pw := map[string]string{"alice": alicePassword, "carol": carolPassword}[username]
	return []credentials.Entry{
		{Username: username, Password: credentials.NewSecret(pw), Server: a, Realm: "asterisk"},
		{Username: "bob", Password: credentials.NewSecret(bobPassword), Server: b, Realm: "asterisk"},
	}
}

// reloadWith reloads h's proxy with its base configuration, pbx-a answered
// by username, and the given changes applied.
func (h *opsHarness) reloadWith(t testing.TB, username string, change func(*proxy.Config)) {
	t.Helper()
	store, err := credentials.NewStore(opsCredentials(h.A.Addr(), h.B.Addr(), username))
	if err != nil {
		t.Fatal(err)
	}
	cfg := h.base
	cfg.Credentials = store
	if change != nil {
		change(&cfg)
	}
	if err := h.Proxy.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
}

// TestOpsReloadDuringCall: a reload (new credentials for the call's own
// upstream, an extra upstream, a new challenge budget, a listener change
// that needs a restart) while calls are established; both calls still end
// cleanly with BYE, one from each side, and the in-dialog BYE that pbx-a
// challenges is answered with the new credentials.
func TestOpsReloadDuringCall(t *testing.T) {
	creds := func(a, b string) []credentials.Entry { return opsCredentials(a, b, "alice") }
	h := startOps(t, opsOptions{A: fakepbx.Config{Call: fakepbx.CallConfig{ChallengeInDialog: true}}, Credentials: creds})
	ph := siptest.StartPhone(t, "1001", "udp", h.Addr["udp"])

	c1 := ph.Dial("sip:2001@pbx-a.example.com", siptest.SDP)
	if res := c1.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("call 1: %d", res.StatusCode)
	}
	c1.Ack()
	c2 := ph.Dial("sip:2002@pbx-a.example.com", siptest.SDP)
	if res := c2.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("call 2: %d", res.StatusCode)
	}
	c2.Ack()
	h.A.WaitCall(t, 5*time.Second, func(cs []fakepbx.Call) bool {
		acked := 0
		for _, c := range cs {
			if c.Acked {
				acked++
			}
		}
		return acked == 2
	})
	if n := h.Proxy.DialogCount(); n != 2 {
		t.Fatalf("dialogs before reload: %d, want 2", n)
	}

	// The reload: pbx-a is now answered as carol, an upstream is added,
	// the budget changes, and a listener change is refused as needing a
	// restart while everything else applies.
	store, err := credentials.NewStore(opsCredentials(h.A.Addr(), h.B.Addr(), "carol"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := h.base
	cfg.Credentials = store
	cfg.MaxChallenges = 5
	cfg.Upstreams = append(cfg.Upstreams, proxy.Upstream{Name: "pbx-c", Address: "127.0.0.8:5060", Transport: "udp"})
	cfg.Listeners = append(cfg.Listeners, proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"})
	if err := h.Proxy.Reload(cfg); err == nil || !strings.Contains(err.Error(), proxy.ErrRestartRequired.Error()) {
		t.Fatalf("Reload with a new listener: %v, want ErrRestartRequired", err)
	}
	if n := h.Proxy.DialogCount(); n != 2 {
		t.Fatalf("dialogs after reload: %d, want 2", n)
	}

	// Caller hangs up call 1: the BYE is challenged in the dialog and
	// answered with the configuration of now.
	if res := c1.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE of call 1: %d", res.StatusCode)
	}
	// Callee hangs up call 2.
	if code := h.A.HangUp(t, c2.CallID); code != 200 {
		t.Fatalf("callee BYE of call 2: %d", code)
	}
	ph.WaitReceived(sip.BYE, 5*time.Second)

	calls := h.A.WaitCall(t, 5*time.Second, func(cs []fakepbx.Call) bool {
		for _, c := range cs {
			if c.State != fakepbx.StateTerminated {
				return false
			}
		}
		return len(cs) == 2
	})
	for _, c := range calls {
		if len(c.Errors) > 0 || !c.AckCSeqOK || !c.AckAuthOK {
			t.Errorf("call %s: errors %q, ack cseq ok %v, ack auth ok %v", c.CallID, c.Errors, c.AckCSeqOK, c.AckAuthOK)
		}
		if c.CallID != c1.CallID {
			continue
		}
		var byeUsers []string
		for _, r := range c.Requests {
			if r.Method == "BYE" && r.Authenticated {
				byeUsers = append(byeUsers, r.AuthUsername)
			}
		}
		if len(byeUsers) != 1 || byeUsers[0] != "carol" {
			t.Errorf("authenticated BYE of call 1 as %q, want carol (the reloaded credential)", byeUsers)
		}
	}
	if s := h.A.Strays(); len(s) > 0 {
		t.Errorf("requests outside any dialog reached pbx-a: %v", summarize(s))
	}
	if n := h.Proxy.DialogCount(); n != 0 {
		t.Errorf("dialogs after both BYEs: %d, want 0", n)
	}
}

// TestOpsReloadUnderLoad: concurrent clients keep sending challenged
// requests while the configuration is reloaded between them again and
// again (credentials switching between two valid accounts, upstream order,
// challenge budget, health checks); no transaction fails.
func TestOpsReloadUnderLoad(t *testing.T) {
	creds := func(a, b string) []credentials.Entry { return opsCredentials(a, b, "alice") }
	h := startOps(t, opsOptions{Credentials: creds})
	const workers, perWorker = 6, 25
	reqs := make([][]*sip.Request, workers)
	for w := range workers {
		for i := range perWorker {
			target, user := "pbx-a.example.com", "1001"
			if (w+i)%2 == 1 {
				target, user = "pbx-b.example.com", "2001"
			}
			m := sip.MESSAGE
			if i%3 == 0 {
				m = sip.REGISTER
			}
			reqs[w] = append(reqs[w], siptest.Request{Method: m, RequestURI: ruriFor(m, target, user), FromUser: user}.Build(t))
		}
	}
	var (
		failures atomic.Int64
		firstErr atomic.Value
		wg       sync.WaitGroup
	)
	progress := make(chan struct{}, 1)
	for w := range workers {
		wg.Go(func() {
			transport := "udp"
			if w%2 == 1 {
				transport = "tcp"
			}
			for _, req := range reqs[w] {
				res, err := siptest.Send(h.client, h.Addr[transport], transport, req)
				if err == nil && res.StatusCode != 200 {
					err = fmt.Errorf("%s: status %d %s", req.Method, res.StatusCode, res.Reason)
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		})
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()

	reloads := 0
	for loop := true; loop; {
		select {
		case <-allDone:
			loop = false
		case <-progress:
			user := "alice"
			if reloads%2 == 1 {
				user = "carol"
			}
			h.reloadWith(t, user, func(c *proxy.Config) {
				if reloads%2 == 1 {
					c.Upstreams = []proxy.Upstream{c.Upstreams[1], c.Upstreams[0]}
					c.MaxChallenges = 4
					c.Health = proxy.HealthCheck{Interval: 20 * time.Millisecond}
				}
			})
			reloads++
		}
	}
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d transactions failed during %d reloads; first: %v", n, workers*perWorker, reloads, firstErr.Load())
	}
	if reloads < 10 {
		t.Errorf("only %d reloads happened during the load", reloads)
	}
	t.Logf("%d requests, %d reloads, no failure", workers*perWorker, reloads)
	h.tap.waitRequests(t, workers*perWorker)
	ms := h.scrape(t)
	testutil.ExpectMetric(t, ms, "authproxy_requests_total", testutil.Labels{"status": "200"}, workers*perWorker)
}
