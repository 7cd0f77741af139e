package e2e

// Operations tests in process: metrics after a scripted scenario, health
// checks flipping readiness, reloads during a call and under load. The
// harness here is startHarness's twin with the metrics observer, the admin
// listener and health checks wired in, as cmd/authproxy wires them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/admin"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/metrics"
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

// httpGet returns the status code and body of GET url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return res.StatusCode, string(b)
}

// sample is one line of the Prometheus text exposition.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseExposition parses the Prometheus text format's sample lines.
func parseExposition(t *testing.T, text string) []sample {
	t.Helper()
	var out []sample
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := sample{labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(rest, "{ "); i >= 0 && rest[i] == '{' {
			s.name = rest[:i]
			rest = rest[i+1:]
			for !strings.HasPrefix(rest, "}") {
				k, after, ok := strings.Cut(rest, `="`)
				if !ok {
					t.Fatalf("bad metric line %q", line)
				}
				var v strings.Builder
				j := 0
				for ; j < len(after) && after[j] != '"'; j++ {
					if after[j] == '\\' && j+1 < len(after) {
						j++
					}
					v.WriteByte(after[j])
				}
				s.labels[k] = v.String()
				rest = strings.TrimPrefix(after[j+1:], ",")
			}
			rest = strings.TrimSpace(rest[1:])
		} else {
			name, after, _ := strings.Cut(rest, " ")
			s.name, rest = name, after
		}
		valStr, _, _ := strings.Cut(rest, " ")
		v, err := strconv.ParseFloat(valStr, 64)
		if err != nil {
			t.Fatalf("bad value in %q: %v", line, err)
		}
		s.value = v
		out = append(out, s)
	}
	return out
}

// metricsSnapshot is a scrape of /metrics.
type metricsSnapshot []sample

// sum adds the values of the samples called name whose labels include
// every pair of match; found is false when none matched.
func (ms metricsSnapshot) sum(name string, match map[string]string) (total float64, found bool) {
	for _, s := range ms {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range match {
			if s.labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			total += s.value
			found = true
		}
	}
	return total, found
}

func (h *opsHarness) scrape(t *testing.T) metricsSnapshot {
	t.Helper()
	code, body := httpGet(t, h.admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	return parseExposition(t, body)
}

// expectMetric fails unless samples match and their sum is want; a
// missing series fails, whatever want is.
func expectMetric(t *testing.T, ms metricsSnapshot, name string, match map[string]string, want float64) {
	t.Helper()
	got, found := ms.sum(name, match)
	if !found {
		t.Errorf("%s%v: no sample, want %v", name, match, want)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, match, got, want)
	}
}

// expectMetricZeroOrAbsent fails unless the matching samples sum to 0 or
// there are none: for a labelled counter, which exists only once counted.
func expectMetricZeroOrAbsent(t *testing.T, ms metricsSnapshot, name string, match map[string]string) {
	t.Helper()
	if got, _ := ms.sum(name, match); got != 0 {
		t.Errorf("%s%v = %v, want 0 or no sample", name, match, got)
	}
}

type lbl = map[string]string

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
		if res := h.final(t, "udp", clientRequest{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}); res.StatusCode != 200 {
			t.Fatalf("MESSAGE %d to pbx-a: %d", i, res.StatusCode)
		}
	}
	for i := range registersB {
		if res := h.final(t, "tcp", clientRequest{Method: sip.REGISTER, RequestURI: "sip:pbx-b.example.com", FromUser: "2001"}); res.StatusCode != 200 {
			t.Fatalf("REGISTER %d to pbx-b: %d", i, res.StatusCode)
		}
	}
	if res := h.final(t, "udp", clientRequest{Method: sip.MESSAGE, RequestURI: "sip:2001@pbx-b.example.com", FromUser: "2999"}); res.StatusCode != 407 {
		t.Fatalf("MESSAGE with refused credentials: %d, want 407", res.StatusCode)
	}
	if res := h.final(t, "udp", clientRequest{Method: sip.MESSAGE, RequestURI: "sip:1@nowhere.example.net", FromUser: "1001"}); res.StatusCode != 404 {
		t.Fatalf("MESSAGE to an unknown host: %d, want 404", res.StatusCode)
	}
	if res := h.final(t, "udp", clientRequest{Method: "FROBNICATE", RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}); res.StatusCode == 0 {
		t.Fatal("no answer to an invented method")
	}
	const sent = messagesA + registersB + 3
	const toA = messagesA + 1   // an invented method is still forwarded: to pbx-a
	h.tap.waitRequests(t, sent) // RequestDone runs after the response is sent

	ms := h.scrape(t)
	expectMetric(t, ms, "authproxy_requests_total", lbl{"method": "MESSAGE", "upstream": "pbx-a", "status": "200"}, messagesA)
	expectMetric(t, ms, "authproxy_requests_total", lbl{"method": "REGISTER", "upstream": "pbx-b", "status": "200"}, registersB)
	expectMetric(t, ms, "authproxy_requests_total", lbl{"method": "MESSAGE", "upstream": "pbx-b", "status": "407"}, 1)
	expectMetric(t, ms, "authproxy_requests_total", lbl{"method": "MESSAGE", "upstream": "none", "status": "404"}, 1)
	expectMetric(t, ms, "authproxy_requests_total", lbl{"method": "other", "upstream": "pbx-a", "status": "200"}, 1) // no label per invented method
	expectMetric(t, ms, "authproxy_requests_total", lbl{}, sent)
	// pbx-a: challenge + stale challenge per request; pbx-b: one per
	// REGISTER and one for the refused MESSAGE.
	expectMetric(t, ms, "authproxy_challenges_answered_total", lbl{"upstream": "pbx-a", "realm": "asterisk"}, 2*toA)
	expectMetric(t, ms, "authproxy_challenges_answered_total", lbl{"upstream": "pbx-b", "realm": "asterisk"}, registersB+1)
	expectMetric(t, ms, "authproxy_stale_retries_total", lbl{"upstream": "pbx-a"}, toA)
	expectMetricZeroOrAbsent(t, ms, "authproxy_stale_retries_total", lbl{"upstream": "pbx-b"})
	expectMetric(t, ms, "authproxy_retries_total", lbl{"upstream": "pbx-a"}, 2*toA)
	expectMetric(t, ms, "authproxy_retries_total", lbl{"upstream": "pbx-b"}, registersB+1)
	expectMetric(t, ms, "authproxy_auth_failures_total", lbl{"upstream": "pbx-b", "reason": "rejected"}, 1)
	expectMetricZeroOrAbsent(t, ms, "authproxy_auth_failures_total", lbl{"upstream": "pbx-a"})
	expectMetric(t, ms, "authproxy_request_outcomes_total", lbl{"upstream": "none", "outcome": "no-route"}, 1)
	expectMetric(t, ms, "authproxy_request_duration_seconds_count", lbl{"method": "MESSAGE"}, messagesA+2)
	expectMetric(t, ms, "authproxy_request_duration_seconds_count", lbl{"method": "REGISTER"}, registersB)
	expectMetric(t, ms, "authproxy_upstream_request_duration_seconds_count", lbl{"method": "MESSAGE", "upstream": "pbx-a"}, messagesA)
	expectMetric(t, ms, "authproxy_upstream_request_duration_seconds_count", lbl{"method": "REGISTER", "upstream": "pbx-b"}, registersB)
	expectMetric(t, ms, "authproxy_dialogs", lbl{}, 0)
	if _, ok := ms.sum("authproxy_active_transactions", nil); !ok {
		t.Error("authproxy_active_transactions missing")
	}
	if _, ok := ms.sum("authproxy_upstream_up", nil); ok {
		t.Error("authproxy_upstream_up reported with health checks off")
	}
	// No label value may carry a username, a Call-ID or a password.
	for _, s := range ms {
		for k, v := range s.labels {
			for _, bad := range []string{"alice", "bob", "carol", "1001", "2001", "2999", alicePassword, bobPassword, "@"} {
				if strings.Contains(v, bad) {
					t.Errorf("%s has label %s=%q", s.name, k, v)
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
		code, body := httpGet(t, h.admin+path)
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

// responder is a minimal SIP upstream on UDP that answers every request
// 200 (INVITE 486), or nothing while silent; with holdMessages, MESSAGEs
// only once released, and with ignoreUnregister, no REGISTER with
// Expires: 0. It records what it received.
type responder struct {
	pc      net.PacketConn
	silent  atomic.Bool
	options struct {
		answered, ignored atomic.Int64
	}
	holdMessages     atomic.Bool
	ignoreUnregister atomic.Bool
	held             chan struct{} // closed by releaseMessages
	releaseOnce      sync.Once
	messages         chan struct{} // a MESSAGE arrived (non-blocking send)
	mu               sync.Mutex
	received         []string // "METHOD Call-ID" of every request, retransmissions included
	wg               sync.WaitGroup
	stop             chan struct{}
}

func startResponder(t *testing.T, host string) *responder {
	t.Helper()
	pc, err := net.ListenPacket("udp4", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	r := &responder{pc: pc, messages: make(chan struct{}, 16), held: make(chan struct{}), stop: make(chan struct{})}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(func() {
		close(r.stop)
		_ = pc.Close()
		r.wg.Wait()
	})
	return r
}

func (r *responder) addr() string { return r.pc.LocalAddr().String() }

// releaseMessages answers the MESSAGEs held so far, and later ones at once.
func (r *responder) releaseMessages() { r.releaseOnce.Do(func() { close(r.held) }) }

// methods returns the distinct "METHOD Call-ID" pairs received, in order.
func (r *responder) methods() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.received {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

func (r *responder) serve() {
	defer r.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := r.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		msg, err := sip.ParseMessage(append([]byte(nil), buf[:n]...))
		req, ok := msg.(*sip.Request)
		if err != nil || !ok || req.IsAck() {
			continue
		}
		cid := ""
		if h := req.CallID(); h != nil {
			cid = h.Value()
		}
		r.mu.Lock()
		r.received = append(r.received, string(req.Method)+" "+cid)
		r.mu.Unlock()
		if req.Method == sip.OPTIONS {
			if r.silent.Load() {
				r.options.ignored.Add(1)
				continue
			}
			r.options.answered.Add(1)
		} else if r.silent.Load() {
			continue
		}
		if req.Method == sip.REGISTER && r.ignoreUnregister.Load() && isUnregister(req) {
			continue
		}
		code, reason, hold := 200, "OK", false
		switch req.Method {
		case sip.INVITE:
			code, reason = 486, "Busy Here"
		case sip.MESSAGE:
			hold = r.holdMessages.Load()
			select {
			case r.messages <- struct{}{}:
			default:
			}
		}
		res := sip.NewResponseFromRequest(req, code, reason, nil)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if hold {
				select {
				case <-r.held:
				case <-r.stop:
					return
				}
			}
			_, _ = r.pc.WriteTo([]byte(res.String()), from)
		}()
	}
}

// isUnregister reports whether a REGISTER asks for expiry 0.
func isUnregister(req *sip.Request) bool {
	if h := req.GetHeader("Expires"); h != nil && strings.TrimSpace(h.Value()) == "0" {
		return true
	}
	for _, h := range req.GetHeaders("Contact") {
		if c, ok := h.(*sip.ContactHeader); ok {
			if v, ok := c.Params.Get("expires"); ok && strings.TrimSpace(v) == "0" {
				return true
			}
		}
	}
	return false
}

// pingTimeout is how long the health tests' pings wait for an answer:
// long enough that a busy machine does not turn a late answer into a
// failure (the silent upstreams are marked down a little later for it).
const pingTimeout = 2 * time.Second

// TestOpsReadinessFollowsUpstreamHealth: with OPTIONS health checks on,
// /readyz fails once the only upstream has missed down_after pings in a
// row, and recovers after up_after answered ones.
func TestOpsReadinessFollowsUpstreamHealth(t *testing.T) {
	r := startResponder(t, "127.0.0.6")
	const downAfter, upAfter = 2, 3
	h := startOps(t, opsOptions{
		Upstreams: []proxy.Upstream{{Name: "flaky", Address: r.addr(), Transport: "udp", Default: true}},
		Health:    proxy.HealthCheck{Interval: 30 * time.Millisecond, Timeout: pingTimeout, DownAfter: downAfter, UpAfter: upAfter},
	})

	h.tap.waitState(t, "flaky", true, 1) // unknown -> up on the first answer
	if code, body := httpGet(t, h.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz with the upstream up: %d %s", code, body)
	}

	r.silent.Store(true)
	h.tap.waitState(t, "flaky", false, 2)
	if n := r.options.ignored.Load(); n < downAfter {
		t.Errorf("marked down after %d unanswered pings, want at least %d", n, downAfter)
	}
	code, body := httpGet(t, h.admin+"/readyz")
	if code != 503 || !strings.Contains(body, "every upstream is down") || !strings.Contains(body, "flaky") {
		t.Fatalf("/readyz with the upstream down: %d %q", code, body)
	}
	if code, _ := httpGet(t, h.admin+"/healthz"); code != 200 {
		t.Errorf("/healthz: %d, want 200 whatever the upstreams", code)
	}
	var st admin.Status
	_, sb := httpGet(t, h.admin+"/status")
	if err := json.Unmarshal([]byte(sb), &st); err != nil {
		t.Fatal(err)
	}
	if st.Ready || len(st.Upstreams) != 1 || st.Upstreams[0].State != "down" || st.Upstreams[0].LastError == "" || st.TrunkRegistrations == nil {
		t.Fatalf("/status with the upstream down:\n%s", sb)
	}
	ms := h.scrape(t)
	expectMetric(t, ms, "authproxy_upstream_up", lbl{"upstream": "flaky"}, 0)
	expectMetric(t, ms, "authproxy_upstream_state_changes_total", lbl{"upstream": "flaky", "state": "down"}, 1)

	answeredBefore := r.options.answered.Load()
	r.silent.Store(false)
	h.tap.waitState(t, "flaky", true, 3)
	if n := r.options.answered.Load() - answeredBefore; n < upAfter {
		t.Errorf("marked up after %d answered pings, want at least %d (hysteresis)", n, upAfter)
	}
	if code, body := httpGet(t, h.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz after recovery: %d %s", code, body)
	}
	expectMetric(t, h.scrape(t), "authproxy_upstream_up", lbl{"upstream": "flaky"}, 1)
}

// TestOpsHealthChallengingUpstreams: an upstream that challenges the
// OPTIONS (as Asterisk does) is alive; the pings carry no credentials and
// one unreachable upstream among several keeps the proxy ready.
func TestOpsHealthChallengingUpstreams(t *testing.T) {
	dead := startResponder(t, "127.0.0.7")
	dead.silent.Store(true)
	h := startOps(t, opsOptions{Health: proxy.HealthCheck{Interval: 30 * time.Millisecond, Timeout: pingTimeout, DownAfter: 1}})
	h.tap.waitState(t, "pbx-a", true, 1)
	h.tap.waitState(t, "pbx-b", true, 1)

	// A reload adds an upstream that never answers.
	cfg := h.base
	cfg.Upstreams = append(cfg.Upstreams, proxy.Upstream{Name: "dead", Address: dead.addr(), Transport: "udp", Domains: []string{"dead.example.com"}})
	if err := h.Proxy.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	h.tap.waitState(t, "dead", false, 1)
	if code, body := httpGet(t, h.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz with one upstream of three down: %d %s", code, body)
	}
	var st admin.Status
	_, sb := httpGet(t, h.admin+"/status")
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
	expectMetric(t, ms, "authproxy_upstream_up", lbl{"upstream": "pbx-a"}, 1)
	expectMetric(t, ms, "authproxy_upstream_up", lbl{"upstream": "dead"}, 0)
	if v, _ := ms.sum("authproxy_upstream_pings_total", lbl{"upstream": "pbx-a", "result": "answered"}); v < 1 {
		t.Errorf("pings answered by pbx-a = %v", v)
	}
	// Health pings are not client requests.
	expectMetricZeroOrAbsent(t, ms, "authproxy_requests_total", lbl{})

	// With the dead upstream the only one left, every upstream is down:
	// not ready.
	cfg.Upstreams = cfg.Upstreams[len(cfg.Upstreams)-1:]
	if err := h.Proxy.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if err := h.Proxy.Readiness(); !errors.Is(err, proxy.ErrNoUpstreamUp) {
		t.Fatalf("Readiness with every upstream down: %v, want %v", err, proxy.ErrNoUpstreamUp)
	}
	if code, body := httpGet(t, h.admin+"/readyz"); code != 503 {
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
	if code, body := httpGet(t, h.admin+"/readyz"); code != 200 {
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
	ph := startPhone(t, "1001", "udp", h.Addr["udp"])

	c1 := ph.dial("sip:2001@pbx-a.example.com", testSDP)
	if res := c1.waitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("call 1: %d", res.StatusCode)
	}
	c1.ack()
	c2 := ph.dial("sip:2002@pbx-a.example.com", testSDP)
	if res := c2.waitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("call 2: %d", res.StatusCode)
	}
	c2.ack()
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
	if res := c1.request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE of call 1: %d", res.StatusCode)
	}
	// Callee hangs up call 2.
	if code := h.A.HangUp(t, c2.callID); code != 200 {
		t.Fatalf("callee BYE of call 2: %d", code)
	}
	ph.waitReceived(sip.BYE, 5*time.Second)

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
		if c.CallID != c1.callID {
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
			reqs[w] = append(reqs[w], clientRequest{Method: m, RequestURI: ruriFor(m, target, user), FromUser: user}.build(t))
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
				res, err := sendRequest(h.client, h.Addr[transport], transport, req)
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
	expectMetric(t, ms, "authproxy_requests_total", lbl{"status": "200"}, workers*perWorker)
}

// sendRequest sends req to addr over transport and returns the final
// response; safe to call from any goroutine (it reports, never fails the
// test).
func sendRequest(client *sipgo.Client, addr, transport string, req *sip.Request) (*sip.Response, error) {
	req.SetDestination(addr)
	req.SetTransport(strings.ToUpper(transport))
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	tx, err := client.TransactionRequest(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		return nil, fmt.Errorf("send %s: %w", req.Method, err)
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if !res.IsProvisional() {
				return res, nil
			}
		case <-tx.Done():
			return nil, fmt.Errorf("%s: transaction ended without a final response: %v", req.Method, tx.Err())
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: no final response", req.Method)
		}
	}
}
