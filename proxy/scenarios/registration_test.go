package scenarios

import (
	"context"
	"log/slog"
	"net"
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
)

// regPhone is a phone that registers through authproxy and is then called:
// it answers INVITEs as a UAS (its own To tag and Contact), every other
// request with 200, and keeps what it received. Its requests go out from
// another socket than the one its Contact names (sipgo opens one toward
// the proxy), as behind a NAT: authproxy must answer to where they come
// from.
type regPhone struct{ *siptest.Phone }

func startRegPhone(t *testing.T, user, transport, proxyAddr string) *regPhone {
	t.Helper()
	return &regPhone{siptest.StartPhone(t, user, transport, proxyAddr)}
}

// request sends req to the proxy and returns its final response.
func (ph *regPhone) request(req *sip.Request) *sip.Response {
	ph.T.Helper()
	req.SetDestination(ph.Proxy)
	req.SetTransport(ph.Transport)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := ph.Client.TransactionRequest(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		ph.T.Fatalf("send %s: %v", req.Method, err)
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if !res.IsProvisional() {
				return res
			}
		case <-tx.Done():
			ph.T.Fatalf("%s: no final response: %v", req.Method, tx.Err())
		case <-ctx.Done():
			ph.T.Fatalf("%s: no final response", req.Method)
		}
	}
}

// register binds the phone's Contact for expires seconds (0 removes it)
// at domain, through authproxy.
func (ph *regPhone) register(callID, domain string, cseq uint32, expires string) *sip.Response {
	ph.T.Helper()
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: domain})
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: ph.User, Host: domain}, Params: sip.NewParams()}
	from.Params.Add("tag", "reg"+ph.Tag)
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: ph.User, Host: domain}, Params: sip.NewParams()}
	cid := sip.CallIDHeader(callID)
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: sip.REGISTER})
	req.AppendHeader(&mf)
	req.AppendHeader(ph.Contact())
	req.AppendHeader(sip.NewHeader("Expires", expires))
	req.SetBody(nil)
	return ph.request(req)
}

// waitReceived waits for the n-th (1-based) request of method m.
func (ph *regPhone) waitReceived(m sip.RequestMethod, n int) *sip.Request {
	ph.T.Helper()
	deadline := time.After(5 * time.Second)
	for {
		ph.Mu.Lock()
		seen := 0
		for _, r := range ph.Received {
			if r.Method == m {
				seen++
				if seen == n {
					ph.Mu.Unlock()
					return r
				}
			}
		}
		ch := ph.Changed
		ph.Mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			ph.T.Fatalf("phone %s: no %s #%d", ph.User, m, n)
		}
	}
}

// hangUp sends BYE in the dialog of the INVITE it received (it is the
// callee: its route set is the INVITE's Record-Route in order, RFC 3261
// §12.1.1).
func (ph *regPhone) hangUp(inv *sip.Request) *sip.Response {
	ph.T.Helper()
	target := inv.Contact().Address
	req := sip.NewRequest(sip.BYE, *target.Clone())
	for _, h := range inv.GetHeaders("Record-Route") {
		req.AppendHeader(&sip.RouteHeader{Address: *h.(*sip.RecordRouteHeader).Address.Clone()})
	}
	from := &sip.FromHeader{Address: inv.To().Address, Params: sip.NewParams()}
	from.Params.Add("tag", ph.Tag)
	to := &sip.ToHeader{Address: inv.From().Address, Params: inv.From().Params.Clone()}
	cid := sip.CallIDHeader(inv.CallID().Value())
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.BYE})
	req.AppendHeader(&mf)
	req.SetBody(nil)
	return ph.request(req)
}

// TestRegisterThenInboundCall: a phone registers through authproxy (the
// registrar sees a Path naming authproxy and Supported: path), then the
// PBX calls it through that Path; the call is answered and ACKed, and the
// phone's BYE (it is the callee) goes back to the PBX through authproxy.
// The same with the PBX hanging up, and with Contact rewriting for
// registrars without Path support.
func TestRegisterThenInboundCall(t *testing.T) {
	for _, tc := range []struct {
		name, transport, mode string
		pbxHangsUp            bool
		profile               pbxProfile
	}{
		{"path/udp", "udp", "path", false, asteriskProfile},
		{"path/tcp", "tcp", "path", false, asteriskProfile},
		{"path/udp/pbx-hangs-up", "udp", "", true, asteriskProfile},
		{"contact/udp", "udp", "contact", false, asteriskProfile},
		{"contact/tcp/pbx-hangs-up", "tcp", "contact", true, asteriskProfile},
		{"kamailio/path/tcp", "tcp", "path", false, kamailioProfile},
		{"kamailio/contact/udp/pbx-hangs-up", "udp", "contact", true, kamailioProfile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, harnessOptions{RegisterMode: tc.mode, Profile: tc.profile})
			ph := startRegPhone(t, "1001", tc.transport, h.Addr[tc.transport])
			if res := ph.register(uuid.NewString(), "pbx-a.example.com", 1, "300"); res.StatusCode != 200 {
				t.Fatalf("REGISTER: %d", res.StatusCode)
			}
			regs := h.A.Requests()
			raw := regs[len(regs)-1].Raw
			bs := h.A.Bindings("1001")
			if len(bs) != 1 {
				t.Fatalf("registrar has %d bindings, want 1", len(bs))
			}
			if tc.mode == "contact" {
				if strings.Contains(raw, "Path:") || bs[0].Contact.User == "1001" || !strings.HasPrefix(bs[0].Contact.User, "ap-") {
					t.Fatalf("contact mode: registrar got contact %s:\n%s", bs[0].Contact.String(), raw)
				}
			} else {
				if !strings.Contains(raw, "Supported: path") || len(bs[0].Path) == 0 {
					t.Fatalf("REGISTER without Path / Supported: path:\n%s", raw)
				}
				if got, want := bs[0].Contact.String(), ph.Contact().Address.String(); got != want {
					t.Fatalf("registrar bound %s, want the phone's own %s", got, want)
				}
				if p := bs[0].Path[0]; net.JoinHostPort(p.Host, strconv.Itoa(p.Port)) != h.Addr["udp"] {
					t.Fatalf("Path %s does not name authproxy's upstream-facing listener %s", p.String(), h.Addr["udp"])
				}
			}
			pb := h.Proxy.Bindings()
			if len(pb) != 1 || !strings.EqualFold(pb[0].Transport, tc.transport) {
				t.Fatalf("proxy bindings %+v", pb)
			}

			call := h.A.CallUser(t, "1001")
			if call.Status != 200 {
				t.Fatalf("PBX's INVITE to the registered phone: %d", call.Status)
			}
			inv := ph.waitReceived(sip.INVITE, 1)
			if inv.Recipient.User != "1001" {
				t.Fatalf("phone got Request-URI %s, want its own contact", inv.Recipient.String())
			}
			if len(inv.GetHeaders("Record-Route")) == 0 {
				t.Fatalf("INVITE to the phone is not Record-Routed:\n%s", inv.String())
			}
			ph.waitReceived(sip.ACK, 1)
			if h.Proxy.DialogCount() != 1 {
				t.Fatalf("proxy tracks %d dialogs, want 1", h.Proxy.DialogCount())
			}
			if tc.pbxHangsUp {
				if code := h.A.HangUp(t, call.CallID); code != 200 {
					t.Fatalf("PBX's BYE: %d", code)
				}
				ph.waitReceived(sip.BYE, 1)
			} else {
				if res := ph.hangUp(inv); res.StatusCode != 200 {
					t.Fatalf("phone's BYE: %d", res.StatusCode)
				}
				waitCallState(t, h.A, call.CallID, fakepbx.StateTerminated)
			}
			waitDialogs(t, h, 0)
			assertNoCallErrors(t, h.A)
		})
	}
}

// TestInboundMessageToRegisteredPhone: a MESSAGE and an OPTIONS from the
// PBX to a registered contact reach the phone; after the phone
// unregisters (Expires: 0) the same request is no longer forwarded to it.
func TestInboundMessageToRegisteredPhone(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	ph := startRegPhone(t, "1001", "udp", h.Addr["udp"])
	callID := uuid.NewString()
	if res := ph.register(callID, "pbx-a.example.com", 1, "300"); res.StatusCode != 200 {
		t.Fatalf("REGISTER: %d", res.StatusCode)
	}
	b := h.A.Bindings("1001")[0]
	for _, m := range []sip.RequestMethod{sip.MESSAGE, sip.OPTIONS, sip.NOTIFY} {
		if res := h.A.SendTo(t, b, m); res == nil || res.StatusCode != 200 {
			t.Fatalf("%s from the PBX: %v", m, res)
		}
		ph.waitReceived(m, 1)
	}
	// A client (not an upstream's address) cannot reach the phone through
	// its binding: the request is routed as any client request (no
	// upstream has the phone's address: 404).
	if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: ph.Contact().Address.String(), FromUser: "1002"}); res.StatusCode == 200 {
		t.Fatalf("client MESSAGE to a registered contact: %d", res.StatusCode)
	}
	if n := countReceived(ph, sip.MESSAGE); n != 1 {
		t.Fatalf("phone got %d MESSAGEs, want 1 (only the upstream's)", n)
	}
	if res := ph.register(callID, "pbx-a.example.com", 2, "0"); res.StatusCode != 200 {
		t.Fatalf("un-REGISTER: %d", res.StatusCode)
	}
	if n := len(h.Proxy.Bindings()); n != 0 {
		t.Fatalf("%d bindings after Expires: 0", n)
	}
	// No binding: the request is routed as any other (no upstream has the
	// phone's address: 404), never to the phone.
	if res := h.A.SendTo(t, b, sip.MESSAGE); res == nil || res.StatusCode == 200 {
		t.Fatalf("MESSAGE after unregistering: %v", res)
	}
	if n := countReceived(ph, sip.MESSAGE); n != 1 {
		t.Fatalf("phone got %d MESSAGEs, want 1", n)
	}
}

func countReceived(ph *regPhone, m sip.RequestMethod) int {
	ph.Mu.Lock()
	defer ph.Mu.Unlock()
	n := 0
	for _, r := range ph.Received {
		if r.Method == m {
			n++
		}
	}
	return n
}

// testRegistrar is a minimal registrar for the trunk registration tests:
// no authentication, its answer chosen by mode, every REGISTER kept with
// its arrival time.
type testRegistrar struct {
	addr string

	mu      sync.Mutex
	mode    string // "ok", "silent", "min-expires" (423 below 5s), "reject" (403)
	regs    []*sip.Request
	at      []time.Time
	changed chan struct{}
}

func startTestRegistrar(t *testing.T, host string) *testRegistrar {
	t.Helper()
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("e2e-registrar"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	r := &testRegistrar{addr: pc.LocalAddr().String(), mode: "ok", changed: make(chan struct{})}
	srv.OnRegister(func(req *sip.Request, tx sip.ServerTransaction) {
		r.mu.Lock()
		r.regs = append(r.regs, req)
		r.at = append(r.at, time.Now())
		close(r.changed)
		r.changed = make(chan struct{})
		mode := r.mode
		r.mu.Unlock()
		exp := 0
		if h := req.GetHeader("Expires"); h != nil {
			exp, _ = strconv.Atoi(strings.TrimSpace(h.Value()))
		}
		var res *sip.Response
		switch {
		case mode == "silent":
			return
		case mode == "reject":
			res = sip.NewResponseFromRequest(req, 403, "Forbidden", nil)
		case mode == "min-expires" && exp > 0 && exp < 5:
			res = sip.NewResponseFromRequest(req, 423, "Interval Too Brief", nil)
			res.AppendHeader(sip.NewHeader("Min-Expires", "5"))
		default:
			res = sip.NewResponseFromRequest(req, 200, "OK", nil)
			if exp > 0 {
				c := req.Contact().Clone()
				c.Params.Add("expires", strconv.Itoa(exp))
				res.AppendHeader(c)
			}
		}
		_ = tx.Respond(res)
	})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeUDP(pc) }()
	t.Cleanup(func() { _ = pc.Close(); _ = ua.Close(); <-done })
	return r
}

func (r *testRegistrar) setMode(m string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mode = m
}

// waitFor waits until cond holds for the REGISTERs received so far.
func (r *testRegistrar) waitFor(t *testing.T, timeout time.Duration, what string, cond func([]*sip.Request) bool) []*sip.Request {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		regs := append([]*sip.Request(nil), r.regs...)
		ch := r.changed
		r.mu.Unlock()
		if cond(regs) {
			return regs
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("registrar: %s not seen within %s (%d REGISTERs)", what, timeout, len(regs))
		}
	}
}

func (r *testRegistrar) times() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.at...)
}

func expiresOf(r *sip.Request) string {
	if h := r.GetHeader("Expires"); h != nil {
		return strings.TrimSpace(h.Value())
	}
	return ""
}

// trunkProxy runs authproxy with one upstream at addr and one trunk
// registration; stop cancels it and waits for Run to return.
type trunkProxy struct {
	p    *proxy.Proxy
	cfg  proxy.Config
	stop func()
	addr map[string]string
}

func startTrunkProxy(t *testing.T, upAddr string, reg proxy.Registration, creds []credentials.Entry, mut func(*proxy.Config)) *trunkProxy {
	t.Helper()
	store, err := credentials.NewStore(creds)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("authproxy log:\n%s", logs.String())
		}
	})
	cfg := proxy.Config{
		Listeners:     []proxy.Listener{{Transport: "udp", Address: "127.0.0.1:0"}},
		Upstreams:     []proxy.Upstream{{Name: "trunk", Address: upAddr}},
		Credentials:   store,
		Clients:       clientsOr(nil),
		Registrations: []proxy.Registration{reg},
		// Fast retries for the tests; jitter keeps them within ±25%.
		RegistrationRetryMin:        100 * time.Millisecond,
		RegistrationRetryMax:        400 * time.Millisecond,
		RegistrationRejectedBackoff: 1500 * time.Millisecond,
		UpstreamTimeout:             500 * time.Millisecond,
		ShutdownGrace:               time.Second,
		Logger:                      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Ready:                       func() { close(ready) },
	}
	if mut != nil {
		mut(&cfg)
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
		t.Fatalf("proxy stopped: %v", err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("proxy did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return &trunkProxy{p: p, cfg: cfg, stop: stop, addr: p.ListenAddrs()}
}

func regState(t *testing.T, p *proxy.Proxy) proxy.RegistrationState {
	t.Helper()
	rs := p.Registrations()
	if len(rs) != 1 {
		t.Fatalf("%d registrations, want 1", len(rs))
	}
	return rs[0]
}

// TestTrunkRegistrationRefreshRecoverUnregister: with a 1s expiry the
// registration is refreshed at least twice; a registrar that stops
// answering makes it fail (and back off), and it registers again once the
// registrar answers; at shutdown it unregisters with Expires: 0.
func TestTrunkRegistrationRefreshRecoverUnregister(t *testing.T) {
	reg := startTestRegistrar(t, "127.0.0.4")
	tp := startTrunkProxy(t, reg.addr, proxy.Registration{
		Upstream: "trunk", AOR: "sip:trunk1@127.0.0.4", Expires: time.Second,
	}, nil, nil)
	reg.waitFor(t, 30*time.Second, "three registrations", func(rs []*sip.Request) bool { return len(rs) >= 3 })
	// The refresh is planned before the expiry (when: TestRegistrationTiming);
	// the state is read between two refreshes, not while one is in flight.
	testutil.Eventually(t, "registered with the next attempt before the expiry", func() bool {
		st := regState(t, tp.p)
		return st.State == proxy.RegStateRegistered && !st.Expires.IsZero() && st.NextAttempt.Before(st.Expires)
	})
	rs := reg.waitFor(t, time.Second, "", func([]*sip.Request) bool { return true })
	if c := rs[0].Contact(); c == nil || c.Address.User != "trunk1" || !strings.HasPrefix(tp.addr["udp"], c.Address.Host) {
		t.Fatalf("Contact %v, want trunk1 at authproxy %s", rs[0].Contact(), tp.addr["udp"])
	}

	reg.setMode("silent")
	n := len(reg.times())
	reg.waitFor(t, 30*time.Second, "a REGISTER while silent", func(rs []*sip.Request) bool { return len(rs) > n })
	testutil.Eventually(t, "the registration failing", func() bool { return regState(t, tp.p).State == proxy.RegStateFailing })
	if st := regState(t, tp.p); st.LastError == "" || st.Failures == 0 || st.NextAttempt.IsZero() {
		t.Fatalf("failing state without reason or next attempt: %+v", st)
	}
	reg.setMode("ok")
	testutil.Eventually(t, "the registration registered again", func() bool { return regState(t, tp.p).State == proxy.RegStateRegistered })

	tp.stop()
	rs = reg.waitFor(t, 30*time.Second, "Expires: 0", func(rs []*sip.Request) bool {
		return len(rs) > 0 && expiresOf(rs[len(rs)-1]) == "0"
	})
	if st := regState(t, tp.p); st.State != proxy.RegStateStopped {
		t.Fatalf("state after shutdown %+v", st)
	}
}

// TestTrunkRegistration423: a registrar that wants at least 5s gets a
// REGISTER asking for 5s after its 423.
func TestTrunkRegistration423(t *testing.T) {
	reg := startTestRegistrar(t, "127.0.0.4")
	reg.setMode("min-expires")
	tp := startTrunkProxy(t, reg.addr, proxy.Registration{Upstream: "trunk", AOR: "sip:trunk1@127.0.0.4", Expires: 2 * time.Second}, nil, nil)
	rs := reg.waitFor(t, 5*time.Second, "a REGISTER for 5s", func(rs []*sip.Request) bool {
		return len(rs) >= 2 && expiresOf(rs[len(rs)-1]) == "5"
	})
	if expiresOf(rs[0]) != "2" {
		t.Fatalf("first REGISTER asked for %q, want 2", expiresOf(rs[0]))
	}
	testutil.Eventually(t, "the registration registered", func() bool { return regState(t, tp.p).State == proxy.RegStateRegistered })
	if st := regState(t, tp.p); time.Until(st.Expires) < 3*time.Second {
		t.Fatalf("granted expiry %s, want about 5s", time.Until(st.Expires))
	}
}

// TestTrunkRegistrationRejectedPasswordBacksOff: the registrar (a fake PBX
// with another password) rejects the credentials: authproxy does not
// retry in a tight loop but waits RegistrationRejectedBackoff, and says
// why.
func TestTrunkRegistrationRejectedPasswordBacksOff(t *testing.T) {
	pbx := fakepbx.Start(t, fakepbx.Config{Name: "trunk", Host: "127.0.0.5", Accounts: map[string]string{"trunkuser": "right-password"}})
	creds := []credentials.Entry{{Username: "trunkuser", Password: credentials.NewSecret("wrong-password"), Server: pbx.Addr()}}
	tp := startTrunkProxy(t, pbx.Addr(), proxy.Registration{Upstream: "trunk", AOR: "sip:trunk1@127.0.0.5", Expires: time.Minute}, creds, nil)
	pbx.WaitFor(t, 5*time.Second, func(rs []fakepbx.Request) bool { return len(rs) >= 2 })
	var st proxy.RegistrationState
	testutil.Eventually(t, "the registration failing", func() bool {
		st = regState(t, tp.p)
		return st.State == proxy.RegStateFailing
	})
	if !strings.Contains(st.LastError, "rejected") || st.LastStatus != 401 {
		t.Fatalf("state %+v, want a 401 with credentials rejected", st)
	}
	if st.NextAttempt.IsZero() {
		t.Fatalf("state %+v: no next attempt planned", st)
	}
	// It does try again, and not before the backoff: the wait starts
	// after the rejection arrived, so the retry can only be later than
	// the rejected REGISTER by more than the backoff, however slow the
	// machine.
	rs := pbx.WaitFor(t, 10*time.Second, func(rs []fakepbx.Request) bool { return len(rs) >= 4 })
	if gap := rs[2].At.Sub(rs[1].At); gap < 1500*time.Millisecond {
		t.Fatalf("retry %s after the rejected REGISTER, want at least the 1.5s backoff", gap)
	}
}

// TestTrunkInboundCallToTarget: a trunk registration at a fake PBX with
// the right password; the PBX then calls the registered contact, and the
// INVITE reaches the registration's local target (a phone).
func TestTrunkInboundCallToTarget(t *testing.T) {
	pbx := fakepbx.Start(t, fakepbx.Config{Name: "trunk", Host: "127.0.0.5", Accounts: map[string]string{"trunkuser": "right-password"}})
	creds := []credentials.Entry{{Username: "trunkuser", Password: credentials.NewSecret("right-password"), Server: pbx.Addr()}}
	// The phone's address is known only once it listens; the proxy is
	// configured after.
	var ph *regPhone
	var tp *trunkProxy
	ph = startRegPhone(t, "1001", "udp", "")
	tp = startTrunkProxy(t, pbx.Addr(), proxy.Registration{
		Upstream: "trunk", AOR: "sip:trunk1@127.0.0.5", ContactUser: "trunk1", Expires: time.Minute,
		Target: "sip:1001@" + ph.Addr,
	}, creds, nil)
	ph.Proxy = tp.addr["udp"]
	bs := pbx.WaitFor(t, 5*time.Second, func(rs []fakepbx.Request) bool {
		for _, r := range rs {
			if r.Method == "REGISTER" && r.Authenticated {
				return true
			}
		}
		return false
	})
	_ = bs
	b := pbx.Bindings("trunk1")
	if len(b) != 1 {
		t.Fatalf("registrar bindings %+v", b)
	}
	call := pbx.CallUser(t, "trunk1")
	if call.Status != 200 {
		t.Fatalf("INVITE to the trunk contact: %d", call.Status)
	}
	inv := ph.waitReceived(sip.INVITE, 1)
	if inv.Recipient.User != "1001" {
		t.Fatalf("target got Request-URI %s", inv.Recipient.String())
	}
	ph.waitReceived(sip.ACK, 1)
	if code := pbx.HangUp(t, call.CallID); code != 200 {
		t.Fatalf("BYE: %d", code)
	}
	ph.waitReceived(sip.BYE, 1)
}

// TestTrunkRegistrationReload: a reload that removes one registration and
// adds another unregisters the removed one, registers the new one, and
// leaves the kept one alone (no unregister, no extra REGISTER).
func TestTrunkRegistrationReload(t *testing.T) {
	reg := startTestRegistrar(t, "127.0.0.4")
	keep := proxy.Registration{Upstream: "trunk", AOR: "sip:keep@127.0.0.4", Expires: time.Hour}
	drop := proxy.Registration{Upstream: "trunk", AOR: "sip:drop@127.0.0.4", Expires: time.Hour}
	add := proxy.Registration{Upstream: "trunk", AOR: "sip:add@127.0.0.4", Expires: time.Hour}
	tp := startTrunkProxy(t, reg.addr, keep, nil, func(c *proxy.Config) { c.Registrations = append(c.Registrations, drop) })
	from := func(r *sip.Request) string { return r.From().Address.User }
	count := func(rs []*sip.Request, user, exp string) int {
		n := 0
		for _, r := range rs {
			if from(r) == user && (exp == "" || expiresOf(r) == exp) {
				n++
			}
		}
		return n
	}
	reg.waitFor(t, 5*time.Second, "both registered", func(rs []*sip.Request) bool {
		return count(rs, "keep", "3600") == 1 && count(rs, "drop", "3600") == 1
	})
	cfg := tp.cfg
	cfg.Registrations = []proxy.Registration{keep, add}
	if err := tp.p.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	rs := reg.waitFor(t, 5*time.Second, "drop unregistered and add registered", func(rs []*sip.Request) bool {
		return count(rs, "drop", "0") == 1 && count(rs, "add", "3600") == 1
	})
	if n := count(rs, "keep", ""); n != 1 {
		t.Fatalf("the kept registration sent %d REGISTERs, want 1 (untouched by the reload)", n)
	}
	if got := len(tp.p.Registrations()); got != 2 {
		t.Fatalf("%d registrations after reload, want 2", got)
	}
	tp.stop()
	reg.waitFor(t, 3*time.Second, "keep and add unregistered at shutdown", func(rs []*sip.Request) bool {
		return count(rs, "keep", "0") == 1 && count(rs, "add", "0") == 1
	})
}

// TestBindingExpires: a binding lives as long as the registrar granted
// (here 1s); after that the PBX's request to the contact no longer reaches
// the phone.
func TestBindingExpires(t *testing.T) {
	// A registrar that grants 1s (Asterisk's minimum_expiration is 60).
	h := startHarness(t, harnessOptions{A: fakepbx.Config{MinExpires: 1}})
	ph := startRegPhone(t, "1001", "udp", h.Addr["udp"])
	var b fakepbx.Binding
	// The OPTIONS must go while the binding lives: a machine that stalls
	// past the second registers again and tries once more.
	for try := 1; ; try++ {
		if res := ph.register(uuid.NewString(), "pbx-a.example.com", 1, "1"); res.StatusCode != 200 {
			t.Fatalf("REGISTER: %d", res.StatusCode)
		}
		bs := h.Proxy.Bindings()
		if len(bs) != 1 || time.Until(bs[0].Expires) > time.Second {
			t.Fatalf("bindings %+v, want one expiring within 1s", bs)
		}
		b = h.A.Bindings("1001")[0]
		res := h.A.SendTo(t, b, sip.OPTIONS)
		if res != nil && res.StatusCode == 200 {
			break
		}
		if time.Now().Before(bs[0].Expires) || try == 3 {
			t.Fatalf("OPTIONS while bound: %v", res)
		}
	}
	received := countReceived(ph, sip.OPTIONS)
	testutil.Eventually(t, "the binding to expire", func() bool { return len(h.Proxy.Bindings()) == 0 })
	if res := h.A.SendTo(t, b, sip.OPTIONS); res != nil && res.StatusCode == 200 {
		t.Fatal("OPTIONS after expiry answered 200")
	}
	if n := countReceived(ph, sip.OPTIONS); n != received {
		t.Fatalf("phone got %d OPTIONS, want %d: one reached it after its binding expired", n, received)
	}
}

// rawRegister is a REGISTER for user at pbx-a.example.com sent from local
// (its Via names via, Contact contact) as sendRawFrom builds it.
func rawRegister(user, via, contact string) func(local string) string {
	return func(local string) string {
		if via == "" {
			via = local
		}
		return "REGISTER sip:pbx-a.example.com SIP/2.0\r\n" +
			"Via: SIP/2.0/UDP " + via + ";branch=z9hG4bK-3p" + user + "\r\n" +
			"Max-Forwards: 70\r\n" +
			"From: <sip:" + user + "@pbx-a.example.com>;tag=3p" + user + "\r\n" +
			"To: <sip:" + user + "@pbx-a.example.com>\r\n" +
			"Call-ID: 3p-" + user + "@test\r\n" +
			"CSeq: 1 REGISTER\r\n" +
			"Contact: <" + contact + ">\r\n" +
			"Expires: 300\r\n" +
			"Content-Length: 0\r\n\r\n"
	}
}

// TestThirdPartyRegistration: a REGISTER from 127.0.0.1 for a contact on
// 127.0.0.5 (RFC 3261 §10.2), whose Via is its source address and port,
// makes calls to that contact go to 127.0.0.5; the same with a Via that
// differs from the source (a NAT rewrote it) makes them go to the source.
func TestThirdPartyRegistration(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Accounts: map[string]string{"alice": alicePassword}},
		Credentials: func(a, b string) []credentials.Entry {
			return []credentials.Entry{{Username: "alice", Password: credentials.NewSecret(alicePassword), Server: a}}
		}})
	ph := siptest.StartPhoneAt(t, "127.0.0.5", "tp", "udp", h.Addr["udp"])
	if code := sendRawFrom(t, "127.0.0.1", h.Addr["udp"], rawRegister("tp", "", "sip:tp@"+ph.Addr)); code != 200 {
		t.Fatalf("third-party REGISTER: %d", code)
	}
	if call := h.A.CallUser(t, "tp"); call.Status != 200 {
		t.Fatalf("INVITE to the third-party contact: %d", call.Status)
	}
	ph.WaitReceived(sip.INVITE, 5*time.Second)

	// A Via that is not the source: a NAT is in between; the contact is
	// reached where the REGISTER came from.
	if code := sendRawFrom(t, "127.0.0.1", h.Addr["udp"], rawRegister("natted", "192.0.2.1:5060", "sip:natted@"+ph.Addr)); code != 200 {
		t.Fatalf("REGISTER behind a NAT: %d", code)
	}
	for _, b := range h.Proxy.Bindings() {
		if b.AOR == "natted@pbx-a.example.com" && !strings.HasPrefix(b.Source, "127.0.0.1:") {
			t.Fatalf("binding behind a NAT reached at %s, want its source on 127.0.0.1", b.Source)
		}
		if b.AOR == "tp@pbx-a.example.com" && b.Source != ph.Addr {
			t.Fatalf("third-party binding reached at %s, want its contact %s", b.Source, ph.Addr)
		}
	}
}
