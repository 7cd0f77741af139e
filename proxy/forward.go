package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/credentials"
)

// Log keys, constant so that log processing can rely on them.
const (
	logMethod     = "method"
	logCallID     = "call_id"
	logUpstream   = "upstream"
	logStatus     = "status"
	logDuration   = "duration"
	logRealms     = "realms_answered"
	logChallenges = "challenges"
	logOutcome    = "outcome"
	logCredential = "credential"
)

// Idle lifetimes of CSeq offsets (see cseqTable).
const (
	cseqIdleTTL   = 5 * time.Minute // out-of-dialog requests reusing a Call-ID (MESSAGE sessions)
	cseqDialogTTL = 2 * time.Hour   // INVITE dialogs; removed earlier at the 2xx to BYE or a failed INVITE
	cseqExpiryPad = 64 * time.Second
)

// methods the proxy registers a handler for; anything else reaches the
// same handler through OnNoRoute.
var forwardedMethods = []sip.RequestMethod{
	sip.INVITE, sip.BYE, sip.REGISTER, sip.OPTIONS, sip.MESSAGE, sip.SUBSCRIBE,
	sip.NOTIFY, sip.REFER, sip.INFO, sip.UPDATE, sip.PRACK, sip.PUBLISH,
}

func (p *Proxy) registerHandlers(srv *sipgo.Server) {
	for _, m := range forwardedMethods {
		srv.OnRequest(m, p.handle)
	}
	srv.OnNoRoute(p.handle)
	srv.OnAck(p.handleAck)
	srv.OnCancel(p.handleCancel)
}

// forwarding is the state of one request while it is forwarded, either
// from a client to an upstream or, inside an established dialog, from the
// upstream to the client.
type forwarding struct {
	p     *Proxy
	rt    *routing // the configuration this request started with
	req   *sip.Request
	tx    sip.ServerTransaction
	log   *slog.Logger
	start time.Time
	ctx   context.Context // bounds sends (a TCP dial) and waits for DNS
	own   bool            // authproxy's own request (trunk registration, hang-up), re-sent as built
	att   attempts        // where the request may go and is (failover.go)

	hop      hop          // where the request goes
	up       *upstream    // the upstream the request goes to (or comes from, toward a registered client); nil in a dialog toward a client
	dlg      *dialog      // the dialog the request belongs to, if known
	bind     *binding     // the registered client an upstream's request goes to (registrar.go)
	group    *ClientGroup // the client group that admitted the request
	src      netip.Addr   // the sender's address
	toClient bool         // the upstream sent it into a dialog, toward the client

	user    string        // SIP URI user credentials are looked up for
	key     cseqKey       // the sender's CSeq space
	fwd     *sip.Request  // the request as last sent
	auth    []authAnswer  // answers carried by fwd
	rounds  int           // challenges answered
	realms  []string      // realms answered, for the log
	credIDs []string      // credentials used, for the log (never secrets)
	replied bool          // a final response went to the sender
	status  int           // that response's code
	outcome string        // short word for the log line
	sentAt  time.Time     // when the request first went to the next hop
	hopTime time.Duration // time from sentAt to the final response
	tries   map[string]bool
	pre     preemptState // answers sent before any challenge (preemptive.go)
}

// authAnswer is one Authorization/Proxy-Authorization value we send, with
// the protection domain it answers.
type authAnswer struct {
	key    string
	header string
	value  string
}

// hop is the next hop of a forwarded request.
type hop struct {
	transport string // "UDP" / "TCP"
	addr      string // host:port
}

// handle is the sipgo handler for every forwarded request. It returns only
// once a final response went to the client: sipgo terminates the server
// transaction when a handler returns (see ../shared notes §1.2).
func (p *Proxy) handle(req *sip.Request, tx sip.ServerTransaction) {
	f := p.newForwarding(req, tx)
	if !f.begin() {
		return
	}
	defer f.end()
	defer f.recoverPanic()
	if req.Method == sip.INVITE {
		// Its final response went out when run returns: a CANCEL cancels
		// nothing from then on (cancel.go).
		defer p.invites.forget(topViaBranch(req))
	}
	f.run()
}

// newForwarding starts the forwarding of req, answered through tx.
func (p *Proxy) newForwarding(req *sip.Request, tx sip.ServerTransaction) *forwarding {
	return &forwarding{
		p: p, req: req, tx: tx, start: time.Now(), rt: p.rt.Load(), ctx: context.Background(),
		log: withLazyAttrs(p.log, logMethod, req.Method.String(), logCallID, callID(req)),
	}
}

// begin lets the request in: not while shutting down, not past the
// source's limits. It answers (or drops) the request itself and returns
// false when it is refused; otherwise end must follow.
func (f *forwarding) begin() bool {
	p := f.p
	if !p.flight.enter() {
		f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "shutting down", sip.NewHeader("Retry-After", "5"))
		return false
	}
	f.src = sourceAddr(f.req.Source())
	if v := p.limiter.enter(f.src, f.start); v != limitOK {
		p.flight.leave()
		p.refusalLog(f.log, string(v), f.src)
		if f.refuse(sip.StatusServiceUnavailable, "Service Unavailable", string(v), sip.NewHeader("Retry-After", "5")) {
			f.logDone()
		}
		return false
	}
	return true
}

// end logs the request's outcome and lets go of what begin took.
func (f *forwarding) end() {
	f.logDone()
	f.p.limiter.leave(f.src)
	f.p.flight.leave()
}

// recoverPanic, deferred, turns a panic while forwarding into a 500 to the
// sender (when it has no final response yet) and an error log with the
// stack, instead of a crash of the whole proxy.
func (f *forwarding) recoverPanic() {
	if r := recover(); r != nil {
		f.panicked(r)
	}
}

// panicked logs a recovered panic and answers 500 unless the sender has
// its final response.
func (f *forwarding) panicked(r any) {
	f.log.Error("panic while handling request", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	if !f.replied {
		f.respondLocal(sip.StatusInternalServerError, "Internal Server Error", "panic")
	}
}

// refuse answers a request that is not admitted, or drops it unanswered on
// UDP when Limits.Drop asks for that. It reports whether it answered.
func (f *forwarding) refuse(code int, reason, outcome string, hdrs ...sip.Header) bool {
	f.p.cfg.Observer.Refused(outcome)
	if f.p.limiter.drop() && f.req.Transport() == "UDP" {
		f.outcome = outcome
		return false
	}
	f.respondLocal(code, reason, outcome, hdrs...)
	return true
}

// refusalLog logs a refusal, at most once a second, so that a flood cannot
// turn into a log flood.
func (p *Proxy) refusalLog(log *slog.Logger, why string, src netip.Addr) {
	now := time.Now().UnixNano()
	last := p.lastRefusalLog.Load()
	if now-last < int64(time.Second) || !p.lastRefusalLog.CompareAndSwap(last, now) {
		return
	}
	log.Warn("request refused", "reason", why, "source", src.String())
}

// admit applies access control to a request routed toward an upstream:
// the source must belong to a client group, the group may use the
// upstream, and, when the group has users, the client must answer
// authproxy's own challenge. It answers the client and returns false when
// the request is not admitted; no upstream traffic results.
func (f *forwarding) admit() bool {
	g := f.rt.groupFor(f.src)
	if g == nil {
		f.p.refusalLog(f.log, "source not admitted", f.src)
		f.refuse(sip.StatusForbidden, "Forbidden", "source-denied")
		return false
	}
	f.group = g
	if f.att.group != nil {
		// A group: the upstreams this client may use, in order; none is
		// refused as a single upstream would be.
		members := f.p.chooseMembers(f.att.group, g)
		if len(members) > 0 {
			f.up, f.att.rest = members[0], members[1:]
			f.log = f.log.With(logUpstream, f.up.Name)
		}
	}
	if !g.allows(f.up.Name) {
		// Per-client scope: whatever Request-URI, Route or From the client
		// sends, it cannot make authproxy use another trunk's credentials.
		f.log.Warn("upstream not allowed for client group", "group", g.Name, "source", f.src.String())
		f.refuse(sip.StatusForbidden, "Forbidden", "scope-denied")
		return false
	}
	if len(g.Users) == 0 || f.req.Method == sip.ACK || f.req.Method == sip.CANCEL {
		return true
	}
	if f.dlg != nil && f.dlg.clientAddr == f.req.Source() {
		// In a dialog its authenticated INVITE created, from the same
		// address: already admitted.
		return true
	}
	realm := g.Realm
	if realm == "" {
		realm = "authproxy"
	}
	now := time.Now()
	verdict, user := f.p.local.verify(f.req, g, realm, f.src, now)
	switch verdict {
	case authOK:
		f.p.limiter.authSucceeded(f.src)
		f.log = f.log.With("client_user", user)
		return true
	case authBad:
		f.p.cfg.Observer.Refused("local-auth-failed")
		if f.p.limiter.authFailed(f.src, now) {
			f.log.Warn("source blocked after failed authentications", "source", f.src.String(), "for", f.p.limiter.blockFor())
		}
		f.log.Info("local authentication failed", "source", f.src.String(), "client_user", user)
	}
	f.respondLocal(sip.StatusProxyAuthRequired, "Proxy Authentication Required", "local-challenge",
		sip.NewHeader("Proxy-Authenticate", f.p.local.challenge(realm, f.src, verdict == authStale, now)))
	return false
}

func (f *forwarding) run() {
	if !f.prepare() {
		return
	}
	f.sendAndRelay()
}

// notSent ends an INVITE whose server transaction was cancelled, or had
// ended, before anything went upstream: the client has its 487 (sipgo sent
// it) or is gone, and no branch may be created now (RFC 3261 §16.10).
func (f *forwarding) notSent() {
	if !errors.Is(f.tx.Err(), sip.ErrTransactionCanceled) {
		f.outcome = "client-gone"
		return
	}
	f.outcome, f.status, f.replied = "cancelled", sip.StatusRequestTerminated, true
	f.rememberNon2xxFinal()
}

// prepare checks the request (§16.3), routes it, admits its sender, picks
// its first target and builds f.fwd, the request to send. It answers the
// sender itself and returns false when the request goes no further.
func (f *forwarding) prepare() bool {
	return f.check() && f.pickTarget(f.ctx) && f.build()
}

// build makes f.fwd, the request to send, with the preemptive answers
// (the fast lane sends most requests as edited bytes instead and builds
// f.fwd only if it needs it after all: buildSent).
func (f *forwarding) build() bool {
	fwd, err := f.buildForward()
	if err != nil {
		f.log.Warn("cannot build forwarded request", "error", err)
		f.respondLocal(sip.StatusBadRequest, "Bad Request", "bad-request")
		return false
	}
	f.addPreemptive()
	for _, a := range f.auth {
		fwd.AppendHeader(sip.NewHeader(a.header, a.value))
	}
	f.fwd = fwd
	return true
}

// check checks the request (§16.3), routes it and admits its sender. It
// answers the sender itself and returns false when the request goes no
// further.
func (f *forwarding) check() bool {
	p, req := f.p, f.req
	if code, reason := malformedRequest(req); code != 0 {
		f.refuseMalformed(code, reason)
		return false
	}
	if p.lateRetransmission(req) {
		// Nothing to answer (RFC 6026 §7.1 absorbs it in the Accepted
		// state that has just ended): logged as handled, not as a failure.
		f.outcome, f.replied = "retransmission-absorbed", true
		f.log.Debug("absorbing an INVITE retransmitted after its 2xx was relayed")
		return false
	}
	// RFC 3261 §16.3 step 3: Max-Forwards.
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		if req.Method == sip.OPTIONS && p.isOwnURI(req.Recipient) {
			f.respondLocal(sip.StatusOK, "OK", "local")
			return false
		}
		f.respondLocal(sip.StatusTooManyHops, "Too Many Hops", "max-forwards")
		return false
	}
	// §16.3 step 4: loop detection. authproxy only forwards to configured
	// upstreams and to clients in known dialogs, so a request carrying our
	// own sent-by came back to us.
	for _, h := range headersNamed(req, "Via") {
		if v, ok := h.(*sip.ViaHeader); ok && p.isOwnVia(v) {
			f.respondLocal(sip.StatusLoopDetected, "Loop Detected", "loop")
			return false
		}
	}
	// §16.3 step 5: we support no extension a proxy must understand.
	if pr := headersNamed(req, "Proxy-Require"); len(pr) > 0 {
		vals := make([]string, 0, len(pr))
		for _, h := range pr {
			vals = append(vals, h.Value())
		}
		f.respondLocal(sip.StatusBadExtension, "Bad Extension", "proxy-require",
			sip.NewHeader("Unsupported", strings.Join(vals, ", ")))
		return false
	}
	if !f.route() {
		return false
	}
	if f.toClient {
		// Only the dialog's own upstream address may send into it toward
		// the client (routeInbound checked the source of a request to a
		// registered client).
		if f.dlg != nil && !f.dlg.fromItsUpstream(f.src) {
			f.p.refusalLog(f.log, "request into a dialog from another address than its upstream's", f.src)
			f.refuse(sip.StatusForbidden, "Forbidden", "source-denied")
			return false
		}
	} else if !f.admit() {
		return false
	}
	return true
}

// buildForward makes the copy of the request that is sent on (never the
// request itself: it belongs to the server transaction, whose 100 and 487
// are built from it).
func (f *forwarding) buildForward() (*sip.Request, error) {
	req := f.req
	fwd := req.Clone()
	// §16.4: remove the Route entries that name us.
	for {
		r := fwd.Route()
		if r == nil || !f.p.isOwnURI(r.Address) {
			break
		}
		removeFirst(fwd, "Route")
	}
	f.p.setHop(fwd, f.hop)
	e, err := f.forwardEdits()
	if err != nil {
		return nil, err
	}
	e.applyToRequest(fwd)
	if !f.toClient {
		if e.off > 0 && f.req.Method == sip.PRACK {
			shiftRAck(fwd, e.off)
		}
		if _, toTag := tags(req); toTag == "" && createsDialog(req.Method) {
			f.p.addRecordRoute(fwd, req.Transport(), f.src, f.hop)
		}
		if req.Method == sip.REGISTER {
			f.prepareRegister(fwd)
		}
	} else {
		f.prepareInbound(fwd)
	}
	return fwd, nil
}

// forwardEdits decides what buildForward changes in the request (or the
// fast lane in its bytes): credentials and, for untrusted clients,
// identity headers removed, Max-Forwards decremented, the sender's real
// address recorded in its Via, the CSeq number shifted by what authproxy
// added upstream in this CSeq space.
func (f *forwarding) forwardEdits() (forwardEdits, error) {
	req := f.req
	var e forwardEdits
	if !f.toClient {
		// Clients hold no passwords; whatever they send (including answers
		// to authproxy's own challenge) is not ours to forward.
		e.dropAuth = true
		e.dropIdentity = f.group == nil || !f.group.Trusted
	}
	// §16.6 step 3: decrement Max-Forwards, 70 when absent.
	e.maxForwards, e.addMF = 70, true
	if old := req.MaxForwards(); old != nil {
		e.maxForwards, e.addMF = old.Val()-1, false
	}
	// RFC 3581: record where the sender really sent from in its Via.
	if v := req.Via(); v != nil {
		srcHost, srcPort, err := net.SplitHostPort(req.Source())
		if err == nil {
			if rp, ok := v.Params.Get("rport"); ok && rp == "" {
				e.rport, e.received = srcPort, srcHost
			} else if !strings.EqualFold(strings.Trim(v.Host, "[]"), srcHost) {
				e.received = srcHost
			}
		}
	}
	cseq := req.CSeq()
	if cseq == nil {
		return e, errors.New("request has no CSeq")
	}
	e.seq = cseq.SeqNo
	if !f.toClient {
		if off := f.p.cseq.offset(f.key); off > 0 {
			// Every request after an answered challenge is shifted by the
			// numbers authproxy added upstream (§12.2.1.1, §10.3 step 7).
			e.seq += off
			e.off = off
			f.p.cseq.touch(f.key, time.Now(), f.cseqTTL(nil))
		}
	}
	return e, nil
}

// createsDialog reports whether an out-of-dialog request of this method
// may create a dialog, so that authproxy Record-Routes it (§16.6 step 4):
// later requests of the dialog must cross authproxy for their CSeq to be
// shifted and their challenges answered.
func createsDialog(m sip.RequestMethod) bool {
	switch m {
	case sip.INVITE, sip.SUBSCRIBE, sip.REFER:
		return true
	}
	return false
}

// addRecordRoute puts our Record-Route on r: one entry when the client and
// upstream sides use the same listener, else two (RFC 5658 double
// Record-Route), the upstream-facing one on top, so that each side's route
// set starts with the address it can reach us on.
func (p *Proxy) addRecordRoute(r *sip.Request, clientTransport string, client netip.Addr, next hop) {
	cl := p.listenerFor(clientTransport, client)
	ul := p.listenerFor(next.transport, hopAddr(next.addr))
	mk := func(l *boundListener) *sip.RecordRouteHeader {
		u := sip.Uri{Scheme: "sip", Host: l.advertise, Port: l.port, UriParams: sip.NewParams()}
		if l.transport != "UDP" {
			u.UriParams.Add("transport", strings.ToLower(l.transport))
		}
		u.UriParams.Add("lr", "")
		return &sip.RecordRouteHeader{Address: u}
	}
	switch {
	case cl == nil && ul == nil:
		return
	case cl == nil || ul == nil || cl == ul:
		l := ul
		if l == nil {
			l = cl
		}
		r.PrependHeader(mk(l))
	default:
		r.PrependHeader(mk(ul), mk(cl))
	}
}

// shiftRAck adds off to the CSeq number inside a PRACK's RAck header
// ("RSeq CSeq-num Method", RFC 3262 §7.2), which names the INVITE in the
// upstream's numbering.
func shiftRAck(r *sip.Request, off uint32) {
	h := r.GetHeader("RAck")
	if h == nil {
		return
	}
	parts := strings.Fields(h.Value())
	if len(parts) != 3 {
		return
	}
	n, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return
	}
	removeAll(r, "RAck")
	r.AppendHeader(sip.NewHeader("RAck", parts[0]+" "+strconv.FormatUint(n+uint64(off), 10)+" "+parts[2]))
}

// tags returns the From and To tags of m.
func tags(m *sip.Request) (from, to string) {
	if h := m.From(); h != nil {
		from, _ = h.Params.Get("tag")
	}
	if h := m.To(); h != nil {
		to, _ = h.Params.Get("tag")
	}
	return from, to
}

// answer handles a 401/407. It returns the client transaction of the
// authenticated re-send, or nil when the response must be relayed instead:
// no usable challenge, credentials just rejected (RFC 3261 §22.1: never
// retry them unless the nonce was stale), or the challenge budget spent.
func (f *forwarding) answer(res *sip.Response) (sip.ClientTransaction, error) {
	chs, perrs := collectChallenges(res)
	for _, e := range perrs {
		f.log.Debug("ignoring challenge", "error", e)
	}
	f.preemptiveChallenged(chs)
	if len(chs) == 0 {
		f.outcome = "no-challenge"
		return nil, nil
	}
	if f.rounds >= f.rt.maxChallenges {
		f.outcome = "challenge-limit"
		return nil, nil
	}
	if f.tries == nil {
		f.tries = map[string]bool{}
	}
	type chosen struct {
		ch   challenge
		cred credentials.Credential
	}
	var picks []chosen
	picked := map[string]bool{}
	for _, c := range chs {
		k := c.key()
		if picked[k] {
			continue // RFC 8760 §2.4: the topmost supported challenge per realm
		}
		cred := f.rt.creds.Lookup(f.up.Address, c.Realm, f.user)
		if !canAnswer(c, cred) {
			continue
		}
		if f.hop.transport != "TLS" && f.rt.scopedToTLS(cred.Server) {
			// A credential meant for a TLS upstream never crosses a plain
			// transport, even to the same host.
			f.log.Warn("not answering over a plain transport with a credential scoped to a tls upstream", logCredential, cred.String())
			continue
		}
		if f.tries[k] && !c.Stale {
			// We answered this realm and got challenged again without
			// stale=true: the credentials were rejected.
			f.outcome = "rejected"
			f.p.cfg.Observer.AuthRejected(f.up.Name)
			return nil, nil
		}
		picked[k] = true
		picks = append(picks, chosen{c, cred})
	}
	if len(picks) == 0 {
		f.outcome = "no-usable-challenge"
		return nil, nil
	}

	next := f.fwd.Clone()
	removeFirst(next, "Via") // ours; addVia puts a new one with a new branch
	removeAll(next, "Authorization")
	removeAll(next, "Proxy-Authorization")
	// §22.1/§8.1.3.5: the re-send is a new transaction with CSeq+1.
	next.CSeq().SeqNo++
	now := time.Now()
	answers := make([]authAnswer, 0, len(f.auth)+len(picks))
	for _, old := range f.auth {
		if !picked[old.key] {
			answers = append(answers, old) // still valid for realms not re-challenged
		}
	}
	for _, pk := range picks {
		nc := f.p.nonces.next(f.nonceServer(), pk.ch.Realm, pk.ch.Nonce, now)
		val, err := computeAuthorization(pk.ch, pk.cred, next.Method.String(), next.Recipient.String(), next.Body(), nc, newCnonce())
		if err != nil {
			// canAnswer vetted the challenge; this is a bug, not an input.
			return nil, fmt.Errorf("compute digest for realm %q: %w", pk.ch.Realm, err)
		}
		answers = append(answers, authAnswer{key: pk.ch.key(), header: pk.ch.authHeaderName(), value: val})
		f.rememberChallenge(pk.ch, pk.cred.Username, next.Method.String(), nc, now)
		f.tries[pk.ch.key()] = true
		f.p.cfg.Observer.ChallengeAnswered(f.up.Name, pk.ch.Realm, pk.ch.Stale)
		f.realms = append(f.realms, pk.ch.Realm)
		f.credIDs = append(f.credIDs, pk.cred.String())
	}
	for _, a := range answers {
		next.AppendHeader(sip.NewHeader(a.header, a.value))
	}
	f.auth = answers
	f.rounds++
	f.p.cfg.Observer.RequestResent(f.up.Name)
	f.p.cseq.add(f.key, 1, now, f.cseqTTL(nil))
	f.fwd = next
	f.log.Debug("answering challenge", logStatus, res.StatusCode, logRealms, f.realms, logCredential, f.credIDs)
	return f.send(next)
}

// relay sends a response back to the request's sender: our Via removed
// (§16.7 step 3), the sender's own CSeq number restored, dialog state
// updated. It returns the error sending it (already logged).
func (f *forwarding) relay(res *sip.Response) error {
	f.preemptiveDone(res.StatusCode)
	f.prepareRelay(res)
	if res.StatusCode == sip.StatusServiceUnavailable && !f.toClient {
		// RFC 3261 §16.7 step 6: a 503 from the next hop says that hop is
		// unavailable, not authproxy; relayed as is, the client would
		// take authproxy for unavailable (and fail over away from it).
		res.StatusCode, res.Reason = sip.StatusInternalServerError, "Server Internal Error"
	}
	if res.IsSuccess() {
		if f.req.Method == sip.REGISTER && !f.toClient {
			f.registered(res)
		}
		if _, toTag := tags(f.req); toTag == "" && f.req.Method != sip.INVITE && createsDialog(f.req.Method) {
			// A subscription (or REFER's implicit one): the NOTIFYs the
			// upstream sends into it must find their way to the client.
			f.recordDialog(res, nil, 0)
		}
		f.p.cseq.touch(f.key, time.Now(), f.cseqTTL(res))
	}
	f.byeAnswered(res.StatusCode)
	err := f.tx.Respond(res)
	f.relayed(res.StatusCode, err)
	return err
}

// relayed notes a response sent on to the sender (err from sending it).
func (f *forwarding) relayed(status int, err error) {
	if err != nil {
		f.log.Warn("cannot send response", logStatus, status, "error", err)
	}
	if status >= 200 {
		f.replied = true
		f.status = status
		if !f.sentAt.IsZero() {
			f.hopTime = time.Since(f.sentAt)
		}
		if f.outcome == "" {
			f.outcome = "relayed"
		}
	}
}

// relayRaw relays a response to a fast lane request as the bytes the
// upstream sent (scanned by scanResponse): what relay does for the
// requests the lane takes (no REGISTER, nothing creating a dialog, never
// toward a client), on bytes instead of a parsed message.
func (f *forwarding) relayRaw(tx *liteTx, data []byte, r *scannedResponse) {
	f.preemptiveDone(r.status)
	if r.status >= 200 && r.status < 300 {
		f.p.cseq.touch(f.key, time.Now(), f.cseqTTL(nil))
	}
	buf := datagramBufs.Get().(*[]byte)
	*buf = r.relayBytes((*buf)[:0], data, f.req.CSeq().SeqNo)
	err := tx.RespondRaw(*buf, r.status >= 200)
	datagramBufs.Put(buf)
	f.relayed(r.status, err)
}

// prepareRelay rewrites a response for the sender of f.req. It reads only
// what does not change during the forwarding, so it is also safe from
// sipgo's retransmission callback.
func (f *forwarding) prepareRelay(res *sip.Response) {
	// §16.7 step 3: the topmost Via is ours — sipgo matched the response
	// to our client transaction by its branch.
	removeFirst(res, "Via")
	if cs := res.CSeq(); cs != nil {
		cs.SeqNo = f.req.CSeq().SeqNo
	}
	if f.req.Transport() == "UDP" {
		res.SetDestination(f.req.Source())
	}
}

// byeAnswered ends the dialog of a BYE answered with a final status, in
// either direction: a 2xx ends it, and so do a 408 (also authproxy's own,
// when the BYE got no answer) and a 481, after which the UAC must consider
// the dialog terminated (RFC 3261 §15.1.1). Other failures leave it: the
// UAC may send the BYE again.
func (f *forwarding) byeAnswered(status int) {
	if f.req.Method != sip.BYE || f.dlg == nil {
		return
	}
	if status/100 != 2 && status != sip.StatusRequestTimeout && status != sip.StatusCallTransactionDoesNotExists {
		return
	}
	f.p.dialogs.end(f.dlg.key, time.Now())
	f.p.cseq.remove(cseqKey{callID: f.dlg.key.callID, fromTag: f.dlg.key.callerTag})
}

// respondLocal answers the client ourselves.
func (f *forwarding) respondLocal(code int, reason, outcome string, hdrs ...sip.Header) {
	f.byeAnswered(code)
	res := sip.NewResponseFromRequest(f.req, code, reason, nil)
	res.SipVersion = "SIP/2.0" // the only version authproxy speaks, whatever the request's (§21.5.6)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	if err := f.tx.Respond(res); err != nil {
		f.log.Warn("cannot send response to client", logStatus, code, "error", err)
	}
	f.replied = true
	f.status = code
	f.outcome = outcome
}

// cseqTTL is how long a CSeq offset must outlive its last use: for a
// registration or subscription its expiry, for a dialog its idle bound.
func (f *forwarding) cseqTTL(res *sip.Response) time.Duration {
	switch f.req.Method {
	case sip.INVITE:
		return cseqDialogTTL
	case sip.REGISTER, sip.SUBSCRIBE:
		ttl := cseqIdleTTL
		if res != nil {
			if exp := expiresOf(res); exp+cseqExpiryPad > ttl {
				ttl = exp + cseqExpiryPad
			}
		}
		return ttl
	}
	return cseqIdleTTL
}

func (f *forwarding) logDone() {
	upName := ""
	if f.up != nil {
		upName = f.up.Name
	} else if f.dlg != nil {
		upName = f.dlg.up.Name
	}
	f.p.cfg.Observer.RequestDone(f.req.Method.String(), upName, f.status, f.outcome, time.Since(f.start), f.hopTime)
	lvl := slog.LevelInfo
	if f.status >= 500 || !f.replied {
		lvl = slog.LevelWarn
	}
	if !f.log.Enabled(context.Background(), lvl) {
		return
	}
	f.log.Log(context.Background(), lvl, "request",
		logStatus, f.status,
		logOutcome, f.outcome,
		logChallenges, f.rounds,
		logRealms, f.realms,
		logDuration, time.Since(f.start).Round(time.Microsecond).String(),
	)
}

// expiresOf returns the largest registration/subscription lifetime a 2xx
// grants: the Expires header or any Contact's expires parameter.
func expiresOf(res *sip.Response) time.Duration {
	var secs int
	if h := res.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Value())); err == nil && n > secs {
			secs = n
		}
	}
	for _, h := range res.GetHeaders("Contact") {
		if c, ok := h.(*sip.ContactHeader); ok {
			if v, ok := c.Params.Get("expires"); ok {
				if n, err := strconv.Atoi(v); err == nil && n > secs {
					secs = n
				}
			}
		}
	}
	return time.Duration(secs) * time.Second
}

func callID(m sip.Message) string {
	if c := m.CallID(); c != nil {
		return c.Value()
	}
	return ""
}

// headerEditor is what *sip.Request and *sip.Response share for editing
// headers (sip.Message lacks RemoveHeader).
type headerEditor interface {
	Headers() []sip.Header
	RemoveHeader(name string) bool
}

// headersNamed returns m's headers called name, compared
// case-insensitively (RFC 3261 §7.3.1). sipgo's GetHeaders lowercases the
// name of every header it looks at, an allocation for each name outside
// its table, on every lookup; this compares in place.
func headersNamed(m interface{ Headers() []sip.Header }, name string) []sip.Header {
	var out []sip.Header
	for _, h := range m.Headers() {
		if strings.EqualFold(h.Name(), name) {
			out = append(out, h)
		}
	}
	return out
}

// headerNamed returns m's first header called name (case-insensitive), nil
// if none; see headersNamed.
func headerNamed(m interface{ Headers() []sip.Header }, name string) sip.Header {
	for _, h := range m.Headers() {
		if strings.EqualFold(h.Name(), name) {
			return h
		}
	}
	return nil
}

// removeAll removes every header called name, compared case-insensitively.
// sipgo's RemoveHeader removes only the first header whose name matches
// case-sensitively, so a received "authorization:" would survive it.
func removeAll(m headerEditor, name string) {
	for _, h := range headersNamed(m, name) {
		m.RemoveHeader(h.Name())
	}
}

// removeFirst removes the first header called name (case-insensitive).
func removeFirst(m headerEditor, name string) {
	if h := headerNamed(m, name); h != nil {
		m.RemoveHeader(h.Name())
	}
}

// handleAck forwards an ACK for a 2xx: end to end, a transaction of its
// own, shifted in CSeq like every request of the dialog and carrying the
// credentials its INVITE was accepted with (RFC 3261 §22.1: a server must
// accept them and must not challenge an ACK). The ACK for a non-2xx is hop
// by hop: on UDP sipgo absorbs it in the INVITE server transaction, on TCP
// it arrives here and is dropped, our client transaction having ACKed the
// upstream itself.
func (p *Proxy) handleAck(req *sip.Request, _ sip.ServerTransaction) {
	log := p.log.With(logMethod, "ACK", logCallID, callID(req))
	if code, _ := malformedRequest(req); code != 0 {
		from, _ := netip.ParseAddrPort(req.Source())
		p.discarded("malformed-ack", "malformed ACK dropped", from)
		return
	}
	if v := req.Via(); v != nil {
		if b, ok := v.Params.Get("branch"); ok && p.finals.has(b) {
			log.Debug("absorbing the ACK for a non-2xx final")
			return
		}
	}
	f := &forwarding{p: p, req: req, rt: p.rt.Load(), log: log, src: sourceAddr(req.Source()), ctx: context.Background()}
	if !f.routeQuiet() {
		log.Debug("dropping ACK with no next hop")
		return
	}
	if f.toClient {
		if f.dlg != nil && !f.dlg.fromItsUpstream(f.src) {
			f.ackRefused()
			return
		}
	} else if g := f.rt.groupFor(f.src); g == nil || !g.allows(f.up.Name) {
		f.ackRefused()
		return
	} else {
		f.group = g
	}
	if !f.ackFromDialogClient() {
		return
	}
	if !f.toClient && !f.pickCachedTarget() {
		log.Debug("dropping ACK: its upstream has no known target")
		return
	}
	fwd, err := f.buildForward()
	if err != nil {
		log.Debug("dropping malformed ACK", "error", err)
		return
	}
	if f.dlg != nil && !f.toClient {
		if cs := fwd.CSeq(); f.dlg.inviteUpCSeq != 0 && req.CSeq().SeqNo == f.dlg.inviteCSeq {
			cs.SeqNo = f.dlg.inviteUpCSeq
		}
		for _, a := range f.dlg.inviteAuth {
			fwd.AppendHeader(sip.NewHeader(a.header, a.value))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // bounds a TLS dial
	defer cancel()
	if err := f.tlsReady(ctx); err != nil {
		log.Warn("cannot forward ACK", "error", err)
		return
	}
	if err := p.client.WriteRequest(fwd, p.addVia(f.hop.transport)); err != nil {
		log.Warn("cannot forward ACK", "error", err)
	}
}

// routeQuiet is route for requests that get no response (ACK).
func (f *forwarding) routeQuiet() bool {
	f.tx = discardTx{}
	return f.route()
}

// discardTx stands in for a server transaction where none exists (ACK):
// responses to it go nowhere.
type discardTx struct{ sip.ServerTransaction }

func (discardTx) Respond(*sip.Response) error { return nil }
