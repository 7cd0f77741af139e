package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Trunk registrations: REGISTERs authproxy keeps up itself, for trunks that
// want a registration no phone makes. Each one registers at start,
// answers 401/407 with the normal credential lookup (server = its
// upstream, user = the AOR's user), refreshes before the binding expires,
// follows 423 Min-Expires, backs off with jitter after a failure, and
// unregisters (Expires: 0) at shutdown. Requests the upstream sends to the
// registered contact go to the registration's local target.

// Registration is one registration authproxy maintains with an upstream.
type Registration struct {
	// Upstream is the name of a configured upstream.
	Upstream string
	// AOR is the address-of-record registered, "sip:user@domain"; the
	// REGISTER's To and From, its Request-URI "sip:domain".
	AOR string
	// ContactUser is the user part of the Contact authproxy registers (at
	// its own address). Default: the AOR's user.
	ContactUser string
	// Expires is the lifetime asked for. Zero means 3600s.
	Expires time.Duration
	// Target is where requests the upstream sends to the registered
	// contact go: a SIP URI ("sip:1001@10.0.0.5:5060;transport=tcp") or
	// "host:port" (UDP).
	Target string
}

// key identifies a registration across reloads.
func (r Registration) key() string {
	return r.Upstream + "\x00" + r.AOR + "\x00" + r.contactUser()
}

func (r Registration) contactUser() string {
	if r.ContactUser != "" {
		return r.ContactUser
	}
	var u sip.Uri
	if sip.ParseUri(r.AOR, &u) == nil {
		return u.User
	}
	return ""
}

// RegistrationState is what a trunk registration is doing, for the log,
// /status and metrics.
type RegistrationState struct {
	Upstream string
	AOR      string
	Contact  string
	// State is "registering", "registered", "failing" or "stopped".
	State string
	// LastStatus is the status of the last final response (0: none yet, or
	// no response).
	LastStatus int
	// LastError says why the last attempt failed ("" after a success).
	LastError string
	// Expires is when the current binding ends (zero when not registered).
	Expires time.Time
	// NextAttempt is when the next REGISTER (refresh or retry) is due.
	NextAttempt time.Time
	// Failures counts consecutive failed attempts.
	Failures int
	// Holder is the instance holding the registration's lease in a
	// shared store ("" without one).
	Holder string
}

// Registration states.
const (
	RegStateRegistering = "registering"
	RegStateRegistered  = "registered"
	RegStateFailing     = "failing"
	RegStateStopped     = "stopped"
	// RegStateStandby: another instance of the cluster holds it.
	RegStateStandby = "standby"
)

// Timing of trunk registrations.
const (
	defaultRegExpires = 3600 * time.Second
	// defaultRegRetryMin and defaultRegRetryMax bound the backoff after a
	// failure: it doubles from the minimum up to the maximum.
	defaultRegRetryMin = 2 * time.Second
	defaultRegRetryMax = 5 * time.Minute
	// rejectedMinBackoff is the least wait after the registrar rejected our
	// credentials: retrying a wrong password quickly only locks the account.
	rejectedMinBackoff = 30 * time.Second
	// refreshMargin: refresh this long before expiry, or at half the
	// lifetime when that is shorter.
	refreshMargin = 60 * time.Second
	// unregisterWait bounds each Expires: 0 at shutdown.
	unregisterWait = 2 * time.Second
	// max423 bounds how many 423s in a row one attempt follows.
	max423 = 3
)

// regManager runs the trunk registrations. reconcile adds and removes
// registrations without touching the others.
type regManager struct {
	p *Proxy

	mu      sync.Mutex
	ctx     context.Context // nil until start
	running map[string]*trunkReg
	wg      sync.WaitGroup
}

func newRegManager(p *Proxy) *regManager {
	return &regManager{p: p, running: map[string]*trunkReg{}}
}

// start runs the configured registrations until ctx ends; stop then
// unregisters them.
func (m *regManager) start(ctx context.Context, regs []Registration) {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	m.reconcile(regs)
}

// reconcile makes the running registrations those of regs: new ones
// start, removed ones unregister and stop, unchanged ones (same upstream,
// AOR and contact user) keep running, with a changed expiry or target
// picked up.
func (m *regManager) reconcile(regs []Registration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	want := map[string]Registration{}
	for _, r := range regs {
		want[r.key()] = r
	}
	for k, tr := range m.running {
		if _, ok := want[k]; !ok {
			tr.cancel()
			delete(m.running, k)
		}
	}
	if m.ctx == nil {
		return // not started: start applies regs
	}
	for k, r := range want {
		if tr, ok := m.running[k]; ok {
			tr.setConfig(r)
			continue
		}
		tr := newTrunkReg(m.p, r)
		ctx, cancel := context.WithCancel(m.ctx)
		tr.cancel = cancel
		m.running[k] = tr
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			tr.run(ctx)
		}()
	}
}

// wait returns once every registration goroutine has ended (after their
// context was cancelled and their unregister finished).
func (m *regManager) wait() { m.wg.Wait() }

// states returns a snapshot of every running registration.
func (m *regManager) states() []RegistrationState {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]RegistrationState, 0, len(m.running))
	for _, tr := range m.running {
		out = append(out, tr.snapshot())
	}
	return out
}

// target returns the synthetic binding for a request an upstream sends to
// a trunk registration's contact (user = contact user, host = us).
func (m *regManager) target(up *upstream, ruri sip.Uri, own bool) *binding {
	if !own || ruri.User == "" {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, tr := range m.running {
		if b := tr.targetFor(up, ruri); b != nil {
			return b
		}
	}
	return nil
}

// Registrations returns the state of every trunk registration.
func (p *Proxy) Registrations() []RegistrationState { return p.regs.states() }

// trunkReg is one registration's loop and state.
type trunkReg struct {
	p      *Proxy
	cancel context.CancelFunc
	callID string
	tag    string
	cseq   uint32 // last CSeq sent
	// reserved is the highest CSeq written to the store before it was
	// used: whoever resumes the registration starts above it.
	reserved uint32
	// replace is a contact another instance registered for this trunk,
	// removed (expires=0) by the next REGISTER, so that the registrar
	// never holds two contacts for it.
	replace string
	// resumeAt, when set, is the refresh time of a registration restored
	// from the store: no REGISTER before it.
	resumeAt time.Time
	// token is the fencing token of the lease held (shared store).
	token uint64
	// known is the last state of the registration this instance wrote
	// or read (shared store): restore falls back on it when the store has
	// none.
	known *storedTrunk

	mu    sync.Mutex
	cfg   Registration
	state RegistrationState
}

func newTrunkReg(p *Proxy, r Registration) *trunkReg {
	tr := &trunkReg{p: p, cfg: r, callID: "authproxy-reg-" + sip.GenerateTagN(16), tag: sip.GenerateTagN(10), cseq: uint32(rand.IntN(1000))}
	tr.state = RegistrationState{Upstream: r.Upstream, AOR: r.AOR, State: RegStateRegistering}
	return tr
}

func (tr *trunkReg) setConfig(r Registration) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.cfg = r
}

func (tr *trunkReg) config() Registration {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.cfg
}

func (tr *trunkReg) snapshot() RegistrationState {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.state
}

func (tr *trunkReg) update(fn func(*RegistrationState)) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	fn(&tr.state)
}

// targetFor returns the binding to the local target when ruri is this
// registration's contact and up its upstream.
func (tr *trunkReg) targetFor(up *upstream, ruri sip.Uri) *binding {
	r := tr.config()
	if up == nil || up.Name != r.Upstream || ruri.User != r.contactUser() || r.Target == "" {
		return nil
	}
	tu, tp, addr, err := parseTarget(r.Target, ruri.User)
	if err != nil {
		return nil
	}
	return &binding{aor: r.AOR, contact: tu, alias: ruri.User, upstream: r.Upstream, transport: tp, addr: addr, expires: time.Now().Add(time.Hour)}
}

// parseTarget reads a registration's target: a SIP URI, or "host:port"
// (UDP; the Request-URI user is kept).
func parseTarget(target, user string) (sip.Uri, string, string, error) {
	var u sip.Uri
	if strings.HasPrefix(strings.ToLower(target), "sip:") {
		if err := sip.ParseUri(target, &u); err != nil {
			return u, "", "", fmt.Errorf("target %q: %w", target, err)
		}
	} else {
		host, port, err := splitHostPort(target)
		if err != nil {
			return u, "", "", fmt.Errorf("target %q: %w", target, err)
		}
		u = sip.Uri{Scheme: "sip", User: user, Host: host, Port: port}
	}
	tp := "UDP"
	if v, ok := u.UriParams.Get("transport"); ok {
		t, err := normTransport(v)
		if err != nil {
			return u, "", "", fmt.Errorf("target %q: %w", target, err)
		}
		tp = t
	}
	port := u.Port
	if port == 0 {
		port = 5060
	}
	return u, tp, net.JoinHostPort(strings.Trim(u.Host, "[]"), strconv.Itoa(port)), nil
}

// errRejected marks an attempt whose credentials the registrar refused.
var errRejected = errors.New("credentials rejected")

// serve keeps the registration up until hold ends (ctx ended, or the
// lease was lost), then unregisters, unless the store is shared: another
// instance takes the registration over, and unregistering first would
// leave the trunk unreachable meanwhile.
func (tr *trunkReg) serve(ctx, hold context.Context) {
	log := tr.p.log.With("registration", tr.cfg.AOR, logUpstream, tr.cfg.Upstream)
	failures := 0
	var registered bool
	defer func() {
		unregistered := false
		if registered && !tr.p.store.shared {
			uctx, cancel := context.WithTimeout(context.Background(), unregisterWait)
			_, _, err := tr.attempt(uctx, log, 0)
			cancel()
			if err != nil {
				log.Warn("unregister failed", "error", err)
			} else {
				log.Info("unregistered")
				unregistered = true
			}
		}
		tr.update(func(s *RegistrationState) {
			s.State, s.Expires, s.NextAttempt = RegStateStopped, time.Time{}, time.Time{}
		})
		if unregistered {
			// The registrar holds nothing now: the next start registers
			// at once instead of resuming a schedule.
			tr.save()
		}
	}()
	if wait := time.Until(tr.resumeAt); !tr.resumeAt.IsZero() && wait > 0 {
		// Restored from the store: the registrar holds our binding until
		// its expiry; refresh when it was due.
		registered = true
		log.Info("registration resumed from the state store", "refresh_in", wait.Round(time.Second).String())
		t := time.NewTimer(wait)
		select {
		case <-hold.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	tr.resumeAt = time.Time{}
	ctx = hold
	for {
		cfg := tr.config()
		expires := cfg.Expires
		if expires <= 0 {
			expires = defaultRegExpires
		}
		granted, status, err := tr.attempt(ctx, log, int(expires/time.Second))
		if ctx.Err() != nil {
			// Stopped during the attempt: the registrar may have bound us
			// before the answer was abandoned, so unregister anyway.
			registered = true
			return
		}
		now := time.Now()
		var wait time.Duration
		if err == nil {
			registered = true
			failures = 0
			wait = refreshIn(granted)
			tr.mu.Lock()
			tr.replace = ""
			tr.mu.Unlock()
			tr.update(func(s *RegistrationState) {
				s.State, s.LastStatus, s.LastError, s.Failures = RegStateRegistered, status, "", 0
				s.Expires, s.NextAttempt = now.Add(granted), now.Add(wait)
			})
			tr.save()
			log.Info("registered", "expires", granted.String(), "refresh_in", wait.String())
		} else {
			failures++
			wait = tr.p.backoff(failures)
			if errors.Is(err, errRejected) && wait < tr.p.cfg.RegistrationRejectedBackoff {
				wait = tr.p.cfg.RegistrationRejectedBackoff
			}
			tr.update(func(s *RegistrationState) {
				s.State, s.LastStatus, s.LastError, s.Failures = RegStateFailing, status, err.Error(), failures
				if !s.Expires.IsZero() && now.After(s.Expires) {
					s.Expires = time.Time{}
				}
				s.NextAttempt = now.Add(wait)
			})
			tr.save()
			log.Warn("registration failed", "error", err.Error(), logStatus, status, "failures", failures, "retry_in", wait.Round(time.Millisecond).String())
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// refreshIn is when a registration granted for granted is refreshed:
// refreshMargin before it expires, or at half its lifetime when the
// lifetime is too short for that margin.
func refreshIn(granted time.Duration) time.Duration {
	return max(granted/2, granted-refreshMargin)
}

// backoff is the wait after n consecutive failures: doubling from the
// minimum to the maximum, with ±25% jitter so that many registrations
// failing together (the registrar restarted) do not retry in step.
func (p *Proxy) backoff(n int) time.Duration {
	d := p.cfg.RegistrationRetryMin
	for i := 1; i < n && d < p.cfg.RegistrationRetryMax; i++ {
		d *= 2
	}
	d = min(d, p.cfg.RegistrationRetryMax)
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return d + jitter
}

// attempt sends one REGISTER asking for expires seconds (0 unregisters),
// answering challenges and following 423, and returns the lifetime
// granted and the final status.
func (tr *trunkReg) attempt(ctx context.Context, log *slog.Logger, expires int) (time.Duration, int, error) {
	cfg := tr.config()
	rt := tr.p.rt.Load()
	var up *upstream
	for _, u := range rt.upstreams {
		if u.Name == cfg.Upstream {
			up = u
		}
	}
	if up == nil {
		return 0, 0, fmt.Errorf("upstream %q is not configured", cfg.Upstream)
	}
	var aor sip.Uri
	if err := sip.ParseUri(cfg.AOR, &aor); err != nil {
		return 0, 0, fmt.Errorf("aor %q: %w", cfg.AOR, err)
	}
	contact, err := tr.contact(up, cfg)
	if err != nil {
		return 0, 0, err
	}
	tr.update(func(s *RegistrationState) { s.Contact = contact.String() })
	for range max423 + 1 {
		res, f, err := tr.send(ctx, log, rt, up, aor, contact, expires)
		if err != nil {
			return 0, 0, err
		}
		switch {
		case res.StatusCode == sip.StatusIntervalToBrief && expires > 0:
			// RFC 3261 §10.2.8: ask again for at least Min-Expires.
			minExp := 0
			if h := res.GetHeader("Min-Expires"); h != nil {
				minExp, _ = strconv.Atoi(strings.TrimSpace(h.Value()))
			}
			if minExp <= expires {
				return 0, res.StatusCode, fmt.Errorf("423 without a usable Min-Expires (%d)", minExp)
			}
			log.Info("registrar wants a longer expiry", "min_expires", minExp)
			expires = minExp
			tr.update(func(s *RegistrationState) { s.LastStatus = res.StatusCode })
			continue
		case res.IsSuccess():
			if expires == 0 {
				return 0, res.StatusCode, nil
			}
			granted := grantedFor(res, contact, expires)
			if granted <= 0 {
				return 0, res.StatusCode, errors.New("registrar did not keep the binding")
			}
			return granted, res.StatusCode, nil
		case f.outcome == "rejected" || res.StatusCode == sip.StatusForbidden:
			return 0, res.StatusCode, fmt.Errorf("%d %s: %w", res.StatusCode, res.Reason, errRejected)
		default:
			return 0, res.StatusCode, fmt.Errorf("%d %s", res.StatusCode, res.Reason)
		}
	}
	return 0, sip.StatusIntervalToBrief, errors.New("too many 423 responses")
}

// send sends one REGISTER and answers its challenges through the same code
// as forwarded requests; it returns the final response.
func (tr *trunkReg) send(ctx context.Context, log *slog.Logger, rt *routing, up *upstream, aor, contact sip.Uri, expires int) (*sip.Response, *forwarding, error) {
	tr.mu.Lock()
	tr.cseq++
	seq := tr.cseq
	replace := tr.replace
	reserve := seq >= tr.reserved
	tr.mu.Unlock()
	if reserve {
		tr.reserveCSeq(seq)
	}
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: aor.Host, Port: aor.Port})
	from := &sip.FromHeader{Address: *aor.Clone(), Params: sip.NewParams()}
	from.Params.Add("tag", tr.tag)
	to := &sip.ToHeader{Address: *aor.Clone(), Params: sip.NewParams()}
	cid := sip.CallIDHeader(tr.callID)
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: sip.REGISTER})
	req.AppendHeader(&mf)
	req.AppendHeader(&sip.ContactHeader{Address: contact})
	if old, ok := oldContact(replace, contact); ok && expires > 0 {
		// RFC 3261 §10.2.2: expires=0 on a Contact removes that binding,
		// in the same request that adds ours.
		p := sip.NewParams()
		p.Add("expires", "0")
		req.AppendHeader(&sip.ContactHeader{Address: old, Params: p})
	}
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(expires)))
	req.AppendHeader(sip.NewHeader("User-Agent", "authproxy"))
	req.SetBody(nil)
	f := &forwarding{
		p: tr.p, rt: rt, log: log, ctx: ctx, own: true,
		origin:      origin{req: req, tx: discardTx{}, start: time.Now()},
		destination: destination{up: up},
		answering:   answering{user: aor.User, key: cseqKey{callID: tr.callID, fromTag: tr.tag}, fwd: req},
	}
	defer func() {
		// The re-sends answering challenges took CSeq numbers of ours.
		tr.mu.Lock()
		if n := f.fwd.CSeq().SeqNo; n > tr.cseq {
			tr.cseq = n
		}
		tr.mu.Unlock()
		tr.p.cseq.remove(f.key)
	}()
	// Resolved and failed over like any request, within ctx (at shutdown
	// the unregistration's own bounded context).
	if err := f.firstTarget(ctx); err != nil {
		return nil, f, fmt.Errorf("no target: %w", err)
	}
	tr.p.setHop(req, f.hop)
	clTx, err := f.send(req)
	if err != nil {
		var ok bool
		if clTx, ok = f.failover(ctx, "transport-error", nil); !ok {
			return nil, f, fmt.Errorf("send: %w", err)
		}
	}
	res, end := f.exchange(clTx, nil, nil)
	switch {
	case res != nil:
		return res, f, nil
	case end == endStopped:
		return nil, f, ctx.Err()
	case end == endTimeout:
		return nil, f, errors.New("no response: timeout")
	}
	return nil, f, fmt.Errorf("no response: %s", end)
}
