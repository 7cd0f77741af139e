package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
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
// upstream to the client. Its parts, embedded so that each field reads as
// f.field: where the request came from (origin), where it goes
// (destination), the challenge exchange (answering) and how it ended
// (report).
type forwarding struct {
	p   *Proxy
	rt  *routing        // the configuration this request started with
	log *slog.Logger    // the request's logger (method, Call-ID)
	ctx context.Context // bounds sends (a TCP dial) and waits for DNS
	own bool            // authproxy's own request (trunk registration, hang-up), re-sent as built
	origin
	destination
	answering
	report
}

// origin is the request as it arrived and who sent it.
type origin struct {
	req      *sip.Request
	tx       sip.ServerTransaction
	start    time.Time
	src      netip.Addr   // the sender's address
	group    *ClientGroup // the client group that admitted the request
	toClient bool         // the upstream sent it into a dialog, toward the client
}

// destination is where the request goes.
type destination struct {
	att  attempts  // where the request may go and is (failover.go)
	hop  hop       // the next hop
	up   *upstream // the upstream the request goes to (or comes from, toward a registered client); nil in a dialog toward a client
	dlg  *dialog   // the dialog the request belongs to, if known
	bind *binding  // the registered client an upstream's request goes to (registrar.go)
}

// answering is the challenge exchange: what was sent and answered
// (challenge.go, preemptive.go).
type answering struct {
	user   string          // SIP URI user credentials are looked up for
	key    cseqKey         // the sender's CSeq space
	fwd    *sip.Request    // the request as last sent
	auth   []authAnswer    // answers carried by fwd
	rounds int             // challenges answered
	tries  map[string]bool // protection domains already answered, to stop a loop
	pre    preemptState    // answers sent before any challenge (preemptive.go)
}

// report is how the forwarding ended, for its log line and metrics.
type report struct {
	replied bool          // a final response went to the sender
	status  int           // that response's code
	outcome string        // short word for the log line
	sentAt  time.Time     // when the request first went to the next hop
	hopTime time.Duration // time from sentAt to the final response
	realms  []string      // realms answered
	credIDs []string      // credentials used (never secrets)
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
		p: p, rt: p.rt.Load(), ctx: context.Background(),
		log:    withLazyAttrs(p.log, logMethod, req.Method.String(), logCallID, callID(req)),
		origin: origin{req: req, tx: tx, start: time.Now()},
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
