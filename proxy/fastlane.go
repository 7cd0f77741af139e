package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
)

// fastLane forwards the out-of-dialog non-INVITE requests clients send
// over UDP (MESSAGE, OPTIONS, PUBLISH: a dialer's bread and butter), and
// a dialog's client's BYE, INFO, MESSAGE, OPTIONS and NOTIFY toward its
// upstream (fastlane_dialog.go: every call's hang-up), without sipgo's
// transactions; over TCP and TLS too, toward a UDP next hop
// (fastlane_stream.go: answered on the client's connection, the lane
// running Timer E for it). A UDP client's ACK for its dialog's 2xx, which
// no transaction answers, is forwarded by the socket with sipgo's ACK
// handler's code (fastlane_ack.go; the ACK for a non-2xx is the INVITE
// server transaction's, RFC 3261 §17.1.1.3). A UDP client's initial
// INVITE is the lane's too: its server transaction is an inviteTx
// (invitetx.go), and toward a UDP target it is forwarded on the lane
// (fastlane_invite.go). Other INVITEs, a CANCEL of none of the lane's,
// REGISTER, what creates or refreshes a dialog or a subscription
// (SUBSCRIBE, REFER, UPDATE), PRACK, and what an upstream sends into a
// dialog keep sipgo's transactions. The UDP listener's socket (laneSocket) offers it every
// request datagram before sipgo reads it; the request is checked, routed
// and admitted exactly as on the usual path (forwarding.check), on the
// goroutine that read it, and sent at once from that socket, as the
// client's datagram edited in its bytes (forwardBytes) or a parsed copy
// (forwarding.build); the upstream's response is matched to it by our Via
// branch and relayed as bytes from where it was read (HandleRawResponse),
// or parsed when it is a challenge or unusual. No goroutine, FSM, timer
// or channel per request: on two cores shared with the PBX, those
// handoffs are most of authproxy's CPU and of the latency it adds
// (docs/performance.md, "The fast lane").
//
// What a client transaction would do is done as follows. Retransmission
// toward the upstream (Timer E) is the client's: each retransmission of
// the request that reaches us while we wait is sent on again (both hops
// are UDP, so the schedule is the client's, RFC 3261 §17.1.2.2's). Timer F
// is UpstreamTimeout, checked by one sweeper for all waiting requests (408
// to the client). A 401/407 is answered on the lane: the authenticated
// re-send goes to the same target from the same socket with a new branch,
// and the request waits for its response under it
// (fastlane_challenge.go). A failover, and a next hop over TCP or TLS,
// take the request off the lane: a goroutine forwards it with a sipgo
// client transaction as the usual path does. The sender's side (Timer J,
// answering retransmissions after the final response) is the liteTx's.
type fastLane struct {
	p *Proxy

	mu       sync.Mutex
	byKey    map[string]*laneEntry // server transaction key → request still forwarded
	byBranch map[string]*laneEntry // our Via branch → request waiting on the lane for its response
	invites  *inviteTable          // UDP clients' initial INVITEs (invitetx.go)
	acks     laneAcks              // ACKs for INVITEs' non-2xx final responses, for Timer D (fastlane_invite_ack.go)

	rrMu    sync.RWMutex
	rrLines map[[2]*boundListener][]authAnswer // our Record-Route lines per pair of listeners (fastLane.recordRoute)
}

// laneEntry is a request forwarded through the fast lane, from the moment
// its first copy arrives: its key is claimed before anything else, so that
// a retransmission parsed meanwhile by another worker is recognised.
type laneEntry struct {
	key string // the sender's server transaction key
	f   *forwarding
	tx  laneTx
	inv *laneInvite // an INVITE's own state (fastlane_invite.go); nil for any other request

	// The request as sent: its bytes (the client's datagram edited by
	// appendForward, or f.fwd serialised), the listening socket they go
	// out on, the target's address they go to and, when sent as edited
	// bytes (f.fwd nil), the CSeq number they carry.
	raw  []byte
	sock *laneSocket
	dst  *net.UDPAddr
	seq  uint32

	mu      sync.Mutex
	waiting bool   // sent, its response awaited on the lane (not before, not off the lane, not once answered)
	branch  string // our Via branch, while waiting
	// deadline is when the attempt times out, in Unix nanoseconds: the
	// failover timeout, then Timer F once it was answered. Atomic: the
	// sweeper reads it holding only the lane's lock.
	deadline atomic.Int64
	// For a request from a stream (reliable) client, which does not
	// retransmit: the lane's own Timer E (fastlane_stream.go). gap is the
	// current interval (e.mu held), resendAt when the next send is due,
	// in Unix nanoseconds (0: none).
	gap      time.Duration
	resendAt atomic.Int64
	ended    atomic.Bool // end ran
}

func newFastLane(p *Proxy) *fastLane {
	return &fastLane{p: p, byKey: map[string]*laneEntry{}, byBranch: map[string]*laneEntry{}, invites: newInviteTable()}
}

// TakesRequest takes out-of-dialog requests that create no dialog and are
// no registration, what the lane can forward with no state beyond the
// request's own transaction, and a dialog's client's BYE, INFO, MESSAGE,
// OPTIONS and NOTIFY toward its upstream (takesInDialog). Everything else
// keeps sipgo's transactions.
func (l *fastLane) TakesRequest(req *sip.Request) bool {
	switch req.Method {
	case sip.INVITE, sip.ACK, sip.CANCEL, sip.REGISTER:
		return false
	}
	if createsDialog(req.Method) {
		return false
	}
	fromTag, toTag := tags(req)
	if toTag != "" {
		return l.takesInDialog(req, fromTag, toTag) // fastlane_dialog.go
	}
	return true
}

// HandleRequest forwards req, or sends a retransmission of a request still
// waiting for its response on again.
func (l *fastLane) HandleRequest(req *sip.Request, tx laneTx) {
	key := tx.Key()
	l.mu.Lock()
	if old := l.byKey[key]; old != nil {
		l.mu.Unlock()
		old.retransmitted()
		return
	}
	e := &laneEntry{key: key} // only for a first copy: retransmissions allocate nothing here
	l.byKey[key] = e
	l.mu.Unlock()
	f := l.p.newForwarding(req, tx)
	e.f, e.tx = f, tx
	if !f.begin() {
		l.remove(e)
		return
	}
	forwarded := false
	defer func() {
		if r := recover(); r != nil {
			forwarded = false
			f.panicked(r)
		}
		if !forwarded {
			l.remove(e)
			f.end()
		}
	}()
	if !f.check() {
		return
	}
	forwarded = l.forward(e, tx.Raw())
}

// forward sends e's request and reports whether it is now in the lane's
// hands (waiting, or handed to a goroutine); false when it was answered
// here (next hop unreachable). raw is the datagram the request came in:
// when it can, the lane sends that on with authproxy's edits made in its
// bytes, instead of a parsed copy serialised again.
func (l *fastLane) forward(e *laneEntry, raw []byte) bool {
	f := e.f
	if f.toClient || !f.pickCachedTarget() || f.hop.transport != "UDP" || !l.hasSocketFor(f.hop.addr) {
		// A name not resolved yet (the wait for it must not hold up this
		// goroutine), a next hop over TCP or TLS, or none a UDP listener
		// can reach: the usual way. So too a request route sent toward
		// a client (a dialog recorded since TakesRequest looked).
		go l.offLane(e, nil, false)
		return true
	}
	branch := sip.GenerateBranchN(16)
	if !l.forwardBytes(e, raw, branch) {
		if !f.build() {
			return false
		}
		f.fwd.PrependHeader(l.p.newVia(f.hop.transport, hopAddr(f.hop.addr), branch))
		l.prepareParsed(e)
	}
	if err := l.p.pinRequest(branch, f.req.Method, f.hop.transport, f.hop.addr); err != nil {
		f.log.Warn("next hop unreachable", "error", err)
		f.unreachable()
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.waiting, e.branch = true, branch
	f.sentAt = time.Now()
	f.att.tried++
	e.deadline.Store(f.sentAt.Add(f.attemptTimeout()).UnixNano())
	// Findable before the request leaves: its response may be read by
	// another worker before WriteMsg returns (and waits for e.mu).
	l.mu.Lock()
	l.byBranch[branch] = e
	l.mu.Unlock()
	e.newAttempt()
	if err := e.send(); err != nil {
		l.finish(e)
		f.log.Warn("next hop unreachable", "error", err)
		f.unreachable()
		return false
	}
	return true
}

// hasSocketFor reports whether a UDP listener's socket can send to addr
// ("ip:port"): the lane sends from the socket its responses come back to.
func (l *fastLane) hasSocketFor(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return false
	}
	lst := l.p.listenerFor("UDP", ap.Addr().Unmap())
	return lst != nil && lst.sock != nil
}

// prepareParsed prepares f.fwd, the parsed copy with our Via on top, to be
// sent from the UDP listener's socket toward the next hop (hasSocketFor
// said there is one): serialised once into e.raw, so that the client's
// retransmissions go on as the same bytes.
func (l *fastLane) prepareParsed(e *laneEntry) {
	f := e.f
	ap, _ := netip.ParseAddrPort(f.hop.addr)
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	e.sock = l.p.listenerFor("UDP", ap.Addr()).sock
	e.dst = net.UDPAddrFromAddrPort(ap)
	e.raw = []byte(f.fwd.String())
}

// forwardBytes prepares e's request as the client's datagram raw with
// authproxy's edits (forwardEdits, the preemptive answers, our Via with
// branch) made in its bytes, into e.raw, with the listening socket to send
// it from, and reports whether it did. It reports false when the request
// must be built as a parsed copy instead: no datagram, something other
// than a plain request to an upstream addressed by IP from a listener
// bound to one, or bytes appendForward would not edit. The preemptive
// answers, once computed, are in f.auth either way.
func (l *fastLane) forwardBytes(e *laneEntry, raw []byte, branch string) bool {
	f, req := e.f, e.f.req
	if raw == nil || f.toClient || f.bind != nil || f.up == nil || req.Method == sip.REGISTER {
		return false
	}
	dst := f.up.udpAddr // an IP literal's, computed once
	if f.up.literal == nil {
		t, ok := f.target()
		if !ok {
			return false
		}
		dst = net.UDPAddrFromAddrPort(t.Addr)
	}
	lst := l.p.listenerFor("UDP", dst.AddrPort().Addr())
	if lst == nil || lst.ip.IsUnspecified() || lst.sock == nil {
		return false
	}
	extra, ok := l.recordRoute(f)
	if !ok {
		return false
	}
	edits, err := f.forwardEdits()
	if err != nil {
		return false // build answers it
	}
	f.addPreemptive()
	if len(f.auth) > 0 && !requestLineURIIs(raw, req.Recipient.String()) {
		// The answers' digest uri is the Request-URI as the parser renders
		// it (RFC 3261 §22.4: the request's own); the client's line spells
		// it otherwise (a scheme in capitals, a port with a leading zero),
		// and an upstream comparing the two would refuse them. The parsed
		// copy carries that rendering on its request line.
		return false
	}
	buf := datagramBufs.Get().(*[]byte)
	defer datagramBufs.Put(buf)
	*buf = appendVia((*buf)[:0], lst.advertise, lst.port, branch)
	via := len(*buf)
	if extra != nil {
		extra = append(extra, f.auth...)
	} else {
		extra = f.auth
	}
	out, ok := edits.appendForward(*buf, raw, len(req.Body()), (*buf)[:via], extra)
	*buf = out
	if !ok || len(out)-via > sip.UDPMTUSize-200 {
		// The parsed copy carries the answers computed here (build adds
		// f.auth); too large, it fails there as it always did.
		return false
	}
	e.raw = bytes.Clone(out[via:])
	e.seq = edits.seq
	e.dst = dst
	e.sock = lst.sock
	return true
}

// requestLineURIIs reports whether the request line of the datagram raw
// carries uri, byte for byte.
func requestLineURIIs(raw []byte, uri string) bool {
	line, _, _ := bytes.Cut(raw, []byte("\r\n"))
	_, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		return false
	}
	got, _, ok := bytes.Cut(rest, []byte(" "))
	return ok && string(got) == uri
}

// send sends the request (again) to the next hop from e.sock (e.mu held).
func (e *laneEntry) send() error {
	if len(e.raw) > sip.UDPMTUSize-200 {
		return sip.ErrUDPMTUCongestion
	}
	if _, err := e.sock.WriteTo(e.raw, e.dst); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	e.scheduleResend()
	return nil
}

// takeResponse offers the lane a response datagram a UDP listener read
// (from addr, checked against the pins already) and reports whether it
// took it: relayed as bytes (HandleRawResponse), or parsed and relayed
// (HandleResponse) when a branch in it is one the lane waits on. Anything
// else is sipgo's.
func (l *fastLane) takeResponse(data []byte, addr net.Addr) bool {
	if l.HandleRawResponse(data) {
		return true
	}
	if !l.waitsOnBranchIn(data) {
		return false
	}
	msg, err := l.p.parser.ParseSIP(data)
	if err != nil {
		return false // sipgo logs it, unparsable.go counts it
	}
	res, ok := msg.(*sip.Response)
	if !ok {
		return false
	}
	res.SetTransport("UDP")
	res.SetSource(addr.String())
	return l.HandleResponse(res)
}

// waitsOnBranchIn reports whether a branch in data is that of a request
// waiting on the lane.
func (l *fastLane) waitsOnBranchIn(data []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.byBranch) == 0 {
		return false
	}
	return !forEachBranch(data, func(b []byte) bool { return l.byBranch[string(b)] == nil })
}

// HandleResponse relays a parsed response to a request waiting on the
// lane and reports whether it took it.
func (l *fastLane) HandleResponse(res *sip.Response) bool {
	via := res.Via()
	if via == nil {
		return false
	}
	branch, _ := via.Params.Get("branch")
	method := sip.RequestMethod("")
	if cs := res.CSeq(); cs != nil {
		method = cs.MethodName
	}
	e, took := l.claim(branch, string(method), false)
	if e == nil {
		return took
	}
	defer e.mu.Unlock()
	f := e.f
	defer l.recoverRelay(e)
	if e.inv != nil {
		l.inviteResponse(e, res) // fastlane_invite.go
		return true
	}
	l.answered(e)
	if _, failover := f.failoverOnStatus(res.StatusCode); failover {
		// The request fails over to its next target or upstream off the
		// lane, with a client transaction of sipgo's, as on the usual
		// path.
		l.stopWaiting(e)
		go l.offLane(e, res, false)
		return true
	}
	if !f.toClient && isChallenge(res) {
		l.challenged(e, res) // fastlane_challenge.go
		return true
	}
	l.deliver(e, res.StatusCode, func() { f.relay(res) })
	return true
}

// HandleRawResponse relays a response to a request waiting on the lane
// as the bytes the upstream sent: our Via line cut out,
// the sender's CSeq number put back, nothing parsed or serialised. A
// challenge, or anything scanResponse cannot read for sure, goes to the
// parser and HandleResponse instead.
func (l *fastLane) HandleRawResponse(data []byte) bool {
	r, ok := scanResponse(data)
	if ok && r.status >= 300 && l.reAck(r.branch) {
		return true // a retransmitted final response to an INVITE: ACKed again
	}
	if !ok || r.status == sip.StatusUnauthorized || r.status == sip.StatusProxyAuthRequired || r.status == sip.StatusServiceUnavailable {
		return false // a 503 is relayed as 500 or failed over: HandleResponse
	}
	e, took := l.claim(string(r.branch), string(r.method), true)
	if e == nil {
		return took
	}
	defer e.mu.Unlock()
	f := e.f
	if e.inv != nil {
		defer l.recoverRelay(e)
		return l.inviteRaw(e, data, &r) // fastlane_invite.go
	}
	if _, failover := f.failoverOnStatus(r.status); failover {
		return false // HandleResponse fails it over
	}
	defer l.recoverRelay(e)
	l.answered(e)
	l.deliver(e, r.status, func() { f.relayRaw(e.tx, data, &r) })
	return true
}

// claim finds the request waiting on the lane under branch for a response
// to it, and returns its entry locked (e.mu held; the caller unlocks), or
// nil and whether the response is the lane's all the same (a
// retransmission of one already answered). RFC 3261 §17.1.3 matches a
// response by branch and method. raw asks for a request whose server
// transaction can send the response's bytes as they are.
func (l *fastLane) claim(branch, method string, raw bool) (*laneEntry, bool) {
	l.mu.Lock()
	e := l.byBranch[branch]
	l.mu.Unlock()
	if e == nil || (raw && !e.tx.CanRespondRaw()) {
		return nil, false
	}
	e.mu.Lock()
	if !e.waiting {
		e.mu.Unlock()
		return nil, true // answered meanwhile: a retransmission
	}
	if method != string(e.f.req.Method) {
		e.mu.Unlock()
		return nil, false
	}
	return e, true
}

// deliver relays a response the lane took (e.mu held) with relay: a 100
// is not forwarded (§16.7 step 3), a provisional response is, and a final
// one ends the request.
func (l *fastLane) deliver(e *laneEntry, status int, relay func()) {
	switch {
	case status == sip.StatusTrying:
	case status < 200:
		relay()
	default:
		relay()
		if e.inv != nil && status >= 300 {
			e.f.p.cseq.remove(e.f.key) // no dialog came of the INVITE: its CSeq offset goes
		}
		l.finish(e)
		e.end()
	}
}

// recoverRelay, deferred while a response to e's request is handled,
// turns a panic into the end of the request (a 500 to its sender unless
// it has its final response) instead of a crash.
func (l *fastLane) recoverRelay(e *laneEntry) {
	if r := recover(); r != nil {
		l.finish(e)
		e.f.panicked(r)
		e.end()
	}
}

// retransmitted sends the request on again while it waits for its
// response on the lane (the client's Timer E stands in for ours); off the
// lane sipgo's client transaction retransmits by itself.
func (e *laneEntry) retransmitted() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.waiting {
		return
	}
	if err := e.send(); err != nil {
		e.f.log.Debug("cannot send a retransmission on", "error", err)
	}
}

// answered notes a response to e's current attempt (e.mu held): the
// attempt's wait becomes Timer F, and no timeout moves it on any more.
func (l *fastLane) answered(e *laneEntry) {
	f := e.f
	if !f.att.answered {
		f.att.answered = true
		e.deadline.Store(f.sentAt.Add(l.p.cfg.UpstreamTimeout).UnixNano())
	}
}

// offLane forwards the request the usual way, with a sipgo client
// transaction, in a goroutine of its own: first (res nil; to a next hop
// over TCP or TLS, or to an upstream whose name has no result yet), or
// failing over to the next target or upstream (res a response that moves
// it on, or timedOut). A challenge to a request sent off the lane is
// answered there (relayLoop).
func (l *fastLane) offLane(e *laneEntry, res *sip.Response, timedOut bool) {
	if e.inv != nil {
		l.offLaneInvite(e, res, timedOut) // fastlane_invite.go
		return
	}
	f := e.f
	defer func() {
		l.mu.Lock()
		delete(l.byKey, e.key)
		l.mu.Unlock()
		f.end()
	}()
	defer f.recoverPanic()
	switch {
	case timedOut:
		if tx, ok := f.failover(f.ctx, "timeout", nil); ok {
			f.relayLoop(tx)
			return
		}
		f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
		return
	case res == nil:
		if f.pickTarget(f.ctx) && (f.fwd != nil || f.build()) {
			f.sendAndRelay()
		}
		return
	}
	why, _ := f.failoverOn(res) // HandleResponse's decision: it fails over
	if tx, ok := f.failover(f.ctx, why, res); ok {
		f.relayLoop(tx)
		return
	}
	f.relay(res)
}

// remove drops e's claim on its key (and its branch, if any).
func (l *fastLane) remove(e *laneEntry) {
	l.mu.Lock()
	delete(l.byKey, e.key)
	if e.branch != "" {
		delete(l.byBranch, e.branch)
	}
	l.mu.Unlock()
}

// stopWaiting takes a waiting entry (e.mu held) off the response path:
// branch forgotten, socket released. Its key stays claimed.
func (l *fastLane) stopWaiting(e *laneEntry) {
	l.mu.Lock()
	delete(l.byBranch, e.branch)
	l.mu.Unlock()
	l.p.pins.release(e.branch, e.inv != nil, time.Now()) // an INVITE's lingers for late 2xx (pinLinger)
	e.waiting = false
}

// finish ends a waiting entry (e.mu held): off the response path and its
// key released.
func (l *fastLane) finish(e *laneEntry) {
	l.stopWaiting(e)
	l.remove(e)
}
