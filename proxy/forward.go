package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
	cseqDialogTTL = 2 * time.Hour   // INVITE dialogs until the calls work takes over their lifetime
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

// forwarding is the state of one client request while it is forwarded.
type forwarding struct {
	p     *Proxy
	req   *sip.Request
	tx    sip.ServerTransaction
	up    *upstream
	creds Credentials
	log   *slog.Logger
	start time.Time

	user    string        // SIP URI user credentials are looked up for
	key     cseqKey       // the client's CSeq space
	fwd     *sip.Request  // the request as last sent upstream
	auth    []authAnswer  // answers carried by fwd
	rounds  int           // challenges answered
	realms  []string      // realms answered, for the log
	credIDs []string      // credentials used, for the log (never secrets)
	replied bool          // a final response went to the client
	status  int           // that response's code
	outcome string        // short word for the log line
	tries   map[string]bool
}

// authAnswer is one Authorization/Proxy-Authorization value we send, with
// the protection domain it answers.
type authAnswer struct {
	key    string
	header string
	value  string
}

// handle is the sipgo handler for every forwarded request. It returns only
// once a final response went to the client: sipgo terminates the server
// transaction when a handler returns (see ../shared notes §1.2).
func (p *Proxy) handle(req *sip.Request, tx sip.ServerTransaction) {
	f := &forwarding{
		p: p, req: req, tx: tx, start: time.Now(),
		creds: p.creds.Load().Credentials,
		log: p.log.With(logMethod, req.Method.String(), logCallID, callID(req)),
	}
	defer func() {
		if r := recover(); r != nil {
			f.log.Error("panic while handling request", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			if !f.replied {
				f.respondLocal(sip.StatusInternalServerError, "Internal Server Error", "panic")
			}
		}
	}()
	if !p.flight.enter() {
		f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "shutting down", sip.NewHeader("Retry-After", "5"))
		return
	}
	defer p.flight.leave()
	f.run()
	f.logDone()
}

func (f *forwarding) run() {
	p, req := f.p, f.req
	// RFC 3261 §16.3 step 3: Max-Forwards.
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		if req.Method == sip.OPTIONS && p.isOwnURI(req.Recipient) {
			f.respondLocal(sip.StatusOK, "OK", "local")
			return
		}
		f.respondLocal(sip.StatusTooManyHops, "Too Many Hops", "max-forwards")
		return
	}
	// §16.3 step 4: loop detection. authproxy only forwards to configured
	// upstreams, so a request carrying our own sent-by came back to us.
	for _, h := range req.GetHeaders("Via") {
		if v, ok := h.(*sip.ViaHeader); ok && p.isOwnVia(v) {
			f.respondLocal(sip.StatusLoopDetected, "Loop Detected", "loop")
			return
		}
	}
	// §16.3 step 5: we support no extension a proxy must understand.
	if pr := req.GetHeaders("Proxy-Require"); len(pr) > 0 {
		vals := make([]string, 0, len(pr))
		for _, h := range pr {
			vals = append(vals, h.Value())
		}
		f.respondLocal(sip.StatusBadExtension, "Bad Extension", "proxy-require",
			sip.NewHeader("Unsupported", strings.Join(vals, ", ")))
		return
	}

	// §16.4: remove our own Route; §16.5: the target is the next Route, else
	// the Request-URI, and it must be a configured upstream.
	routes := req.GetHeaders("Route")
	ownRoute := false
	if len(routes) > 0 {
		if r, ok := routes[0].(*sip.RouteHeader); ok && p.isOwnURI(r.Address) {
			ownRoute = true
			routes = routes[1:]
		}
	}
	if len(routes) > 0 {
		r, ok := routes[0].(*sip.RouteHeader)
		if ok {
			f.up = p.matchUpstream(r.Address)
		}
		if f.up == nil {
			f.respondLocal(sip.StatusNotFound, "No Upstream For Route", "no-route")
			return
		}
	} else {
		f.up = p.matchUpstream(req.Recipient)
		if f.up == nil && p.isOwnURI(req.Recipient) && req.Recipient.User == "" && req.Method == sip.OPTIONS {
			f.respondLocal(sip.StatusOK, "OK", "local")
			return
		}
		if f.up == nil {
			f.up = p.defaultUpstream()
		}
		if f.up == nil {
			f.respondLocal(sip.StatusNotFound, "No Upstream For Request-URI", "no-route")
			return
		}
	}
	f.log = f.log.With(logUpstream, f.up.Name)

	// The SIP user credentials are chosen for: the To user for REGISTER (the
	// AOR being registered), the From user otherwise.
	if req.Method == sip.REGISTER {
		if to := req.To(); to != nil {
			f.user = to.Address.User
		}
	} else if from := req.From(); from != nil {
		f.user = from.Address.User
	}
	f.key = cseqKey{callID: callID(req)}
	if from := req.From(); from != nil {
		f.key.fromTag, _ = from.Params.Get("tag")
	}

	fwd, err := f.buildForward(ownRoute)
	if err != nil {
		f.log.Warn("cannot build upstream request", "error", err)
		f.respondLocal(sip.StatusBadRequest, "Bad Request", "bad-request")
		return
	}
	f.fwd = fwd
	clTx, err := f.send(fwd)
	if err != nil {
		f.log.Warn("upstream unreachable", "error", err)
		f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "unreachable")
		return
	}
	f.relayLoop(clTx)
}

// buildForward makes the upstream copy of the client's request (never the
// request itself: it belongs to the server transaction, whose 100 and 487
// are built from it).
func (f *forwarding) buildForward(ownRoute bool) (*sip.Request, error) {
	req, up := f.req, f.up
	fwd := req.Clone()
	if ownRoute {
		removeFirst(fwd, "Route")
	}
	fwd.SetDestination(net.JoinHostPort(up.host, strconv.Itoa(up.port)))
	fwd.SetTransport(up.transport)
	fwd.Laddr = sip.Addr{}
	if up.transport == "UDP" {
		if l := f.p.listenerFor("UDP"); l != nil && !l.ip.IsUnspecified() {
			// Send from the listening socket: the upstream then sees the
			// address it can reach us on.
			fwd.Laddr = sip.Addr{IP: l.ip, Port: l.port}
		}
	}
	// Clients hold no passwords; whatever they send is not ours to forward.
	removeAll(fwd, "Authorization")
	removeAll(fwd, "Proxy-Authorization")

	// §16.6 step 3: decrement Max-Forwards, 70 when absent. The clone shares
	// the MaxForwardsHeader pointer with the original, so replace, never Dec.
	mf := sip.MaxForwardsHeader(70)
	if old := req.MaxForwards(); old != nil {
		mf = sip.MaxForwardsHeader(old.Val() - 1)
		fwd.ReplaceHeader(&mf)
	} else {
		fwd.AppendHeader(&mf)
	}

	// RFC 3581: record where the client really sent from in its Via.
	if v := fwd.Via(); v != nil {
		srcHost, srcPort, err := net.SplitHostPort(req.Source())
		if err == nil {
			if rp, ok := v.Params.Get("rport"); ok && rp == "" {
				v.Params.Add("rport", srcPort)
				v.Params.Add("received", srcHost)
			} else if !strings.EqualFold(strings.Trim(v.Host, "[]"), srcHost) {
				v.Params.Add("received", srcHost)
			}
		}
	}

	cseq := fwd.CSeq()
	if cseq == nil {
		return nil, errors.New("request has no CSeq")
	}
	if off := f.p.cseq.offset(f.key); off > 0 {
		cseq.SeqNo += off
		f.p.cseq.touch(f.key, time.Now(), f.cseqTTL(nil))
	}
	return fwd, nil
}

// send starts a client transaction for r with our Via on top (§16.6 step 8).
func (f *forwarding) send(r *sip.Request) (sip.ClientTransaction, error) {
	ctx, cancel := context.WithTimeout(f.p.runCtx, 10*time.Second) // bounds a TCP dial
	defer cancel()
	return f.p.client.TransactionRequest(ctx, r, f.p.addVia(f.up))
}

// addVia returns the option that prepends our Via for a request to up.
func (p *Proxy) addVia(up *upstream) sipgo.ClientRequestOption {
	return func(_ *sipgo.Client, r *sip.Request) error {
		via := &sip.ViaHeader{
			ProtocolName:    "SIP",
			ProtocolVersion: "2.0",
			Transport:       up.transport,
			Params:          sip.NewParams(),
		}
		if l := p.listenerFor(up.transport); l != nil {
			via.Host, via.Port = l.advertise, l.port
		} else if l := p.listenerFor("UDP"); l != nil && up.transport == "TCP" {
			// No TCP listener: responses come back on the connection we
			// open; advertise our host, the port is filled from the socket.
			via.Host = l.advertise
		}
		via.Params.Add("branch", sip.GenerateBranchN(16))
		via.Params.Add("rport", "")
		r.PrependHeader(via)
		return nil
	}
}

// relayLoop reads the upstream's responses until the client has its final
// response, answering challenges on the way.
func (f *forwarding) relayLoop(clTx sip.ClientTransaction) {
	timeout := time.NewTimer(f.p.cfg.UpstreamTimeout)
	defer timeout.Stop()
	defer func() { clTx.Terminate() }()
	for {
		select {
		case res := <-clTx.Responses():
			if res.StatusCode == sip.StatusTrying {
				// §16.7 step 3: a 100 is not forwarded; sipgo sent ours.
				continue
			}
			if res.IsProvisional() {
				f.relay(res)
				continue
			}
			if res.StatusCode == sip.StatusUnauthorized || res.StatusCode == sip.StatusProxyAuthRequired {
				next, err := f.answer(res)
				if err != nil {
					f.log.Warn("upstream unreachable on retry", "error", err)
					f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "unreachable")
					return
				}
				if next != nil {
					clTx = next
					if !timeout.Stop() {
						<-timeout.C
					}
					timeout.Reset(f.p.cfg.UpstreamTimeout)
					continue
				}
			}
			f.relay(res)
			return
		case <-clTx.Done():
			err := clTx.Err()
			if errors.Is(err, sip.ErrTransactionTimeout) {
				f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
			} else {
				f.log.Warn("upstream transaction failed", "error", err)
				f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "unreachable")
			}
			return
		case <-timeout.C:
			f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
			return
		case <-f.tx.Done():
			// The client side ended first (transport error, or CANCEL of an
			// INVITE, which sipgo answered with 487 itself).
			f.outcome = "client-gone"
			return
		}
	}
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
	if len(chs) == 0 {
		f.outcome = "no-challenge"
		return nil, nil
	}
	if f.rounds >= f.p.cfg.MaxChallenges {
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
		cred := f.creds.Lookup(f.up.Address, c.Realm, f.user)
		if !canAnswer(c, cred) {
			continue
		}
		if f.tries[k] && !c.Stale {
			// We answered this realm and got challenged again without
			// stale=true: the credentials were rejected.
			f.outcome = "rejected"
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
		nc := f.p.nonces.next(f.up.Address, pk.ch.Realm, pk.ch.Nonce, now)
		val, err := computeAuthorization(pk.ch, pk.cred, next.Method.String(), next.Recipient.String(), next.Body(), nc, newCnonce())
		if err != nil {
			// canAnswer vetted the challenge; this is a bug, not an input.
			return nil, fmt.Errorf("compute digest for realm %q: %w", pk.ch.Realm, err)
		}
		answers = append(answers, authAnswer{key: pk.ch.key(), header: pk.ch.authHeaderName(), value: val})
		f.tries[pk.ch.key()] = true
		f.realms = append(f.realms, pk.ch.Realm)
		f.credIDs = append(f.credIDs, pk.cred.String())
	}
	for _, a := range answers {
		next.AppendHeader(sip.NewHeader(a.header, a.value))
	}
	f.auth = answers
	f.rounds++
	f.p.cseq.add(f.key, 1, now, f.cseqTTL(nil))
	f.fwd = next
	f.log.Debug("answering challenge", logStatus, res.StatusCode, logRealms, f.realms, logCredential, f.credIDs)
	return f.send(next)
}

// relay sends an upstream response to the client: our Via removed (§16.7
// step 3), the client's own CSeq number restored.
func (f *forwarding) relay(res *sip.Response) {
	if v := res.Via(); v != nil && f.p.isOwnVia(v) {
		removeFirst(res, "Via")
	}
	if cs := res.CSeq(); cs != nil {
		cs.SeqNo = f.req.CSeq().SeqNo
	}
	if f.req.Transport() == "UDP" {
		res.SetDestination(f.req.Source())
	}
	if res.IsSuccess() {
		f.p.cseq.touch(f.key, time.Now(), f.cseqTTL(res))
	}
	if err := f.tx.Respond(res); err != nil {
		f.log.Warn("cannot send response to client", logStatus, res.StatusCode, "error", err)
	}
	if !res.IsProvisional() {
		f.replied = true
		f.status = res.StatusCode
		if f.outcome == "" {
			f.outcome = "relayed"
		}
	}
}

// respondLocal answers the client ourselves.
func (f *forwarding) respondLocal(code int, reason, outcome string, hdrs ...sip.Header) {
	res := sip.NewResponseFromRequest(f.req, code, reason, nil)
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
	lvl := slog.LevelInfo
	if f.status >= 500 || !f.replied {
		lvl = slog.LevelWarn
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
	GetHeader(name string) sip.Header
	GetHeaders(name string) []sip.Header
	RemoveHeader(name string) bool
}

// removeAll removes every header called name, compared case-insensitively.
// sipgo's RemoveHeader removes only the first header whose name matches
// case-sensitively, so a received "authorization:" would survive it.
func removeAll(m headerEditor, name string) {
	for _, h := range m.GetHeaders(name) {
		m.RemoveHeader(h.Name())
	}
}

// removeFirst removes the first header called name (case-insensitive).
func removeFirst(m headerEditor, name string) {
	if h := m.GetHeader(name); h != nil {
		m.RemoveHeader(h.Name())
	}
}

// handleAck forwards an ACK for a 2xx (end to end, a transaction of its own;
// the ACK for a non-2xx is hop-by-hop and never reaches this handler on UDP).
// The CSeq is shifted like every request of the dialog.
func (p *Proxy) handleAck(req *sip.Request, _ sip.ServerTransaction) {
	log := p.log.With(logMethod, "ACK", logCallID, callID(req))
	routes := req.GetHeaders("Route")
	ownRoute := false
	if len(routes) > 0 {
		if r, ok := routes[0].(*sip.RouteHeader); ok && p.isOwnURI(r.Address) {
			ownRoute = true
			routes = routes[1:]
		}
	}
	var up *upstream
	if len(routes) > 0 {
		if r, ok := routes[0].(*sip.RouteHeader); ok {
			up = p.matchUpstream(r.Address)
		}
	} else if up = p.matchUpstream(req.Recipient); up == nil {
		up = p.defaultUpstream()
	}
	if up == nil {
		log.Debug("dropping ACK with no upstream")
		return
	}
	f := &forwarding{p: p, req: req, up: up}
	f.key = cseqKey{callID: callID(req)}
	if from := req.From(); from != nil {
		f.key.fromTag, _ = from.Params.Get("tag")
	}
	fwd, err := f.buildForward(ownRoute)
	if err != nil {
		log.Debug("dropping malformed ACK", "error", err)
		return
	}
	if err := p.client.WriteRequest(fwd, p.addVia(up)); err != nil {
		log.Warn("cannot forward ACK", logUpstream, up.Name, "error", err)
	}
}

// handleCancel answers a CANCEL that matched no pending INVITE (sipgo itself
// handles the ones that do): RFC 3261 §9.2, 481.
func (p *Proxy) handleCancel(req *sip.Request, tx sip.ServerTransaction) {
	res := sip.NewResponseFromRequest(req, sip.StatusCallTransactionDoesNotExists, "Call/Transaction Does Not Exist", nil)
	if err := tx.Respond(res); err != nil {
		p.log.Debug("cannot answer CANCEL", "error", err)
	}
}
