package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// fastLane forwards the out-of-dialog non-INVITE requests clients send
// over UDP (MESSAGE, OPTIONS, PUBLISH: a dialer's bread and butter) without
// sipgo's transactions (sip.FastLane, internal/sipgo patch 11). The
// request is checked, routed and admitted exactly as on the usual path
// (forwarding.check), on the goroutine that parsed it (the UDP read loop,
// or one of its workers at high rates: patch 12), and sent at once, as
// the client's datagram with authproxy's edits made in its bytes
// (forwardBytes, patch 14) or else as a parsed copy (forwarding.build);
// the upstream's response is matched to it by our Via branch and relayed
// as bytes from where it was read (HandleRawResponse, patch 13), or parsed
// when it is a challenge or unusual. No goroutine, FSM,
// timer or channel per request: on a machine whose two cores authproxy
// shares with its PBX, those handoffs are most of its CPU and of the
// latency it adds (docs/performance.md, "The fast lane").
//
// What a client transaction would do is done as follows. Retransmission
// toward the upstream (Timer E) is the client's: each retransmission of
// the request that reaches us while we wait is sent on again (both hops
// are UDP, so the schedule is the client's, RFC 3261 §17.1.2.2's). Timer F
// is UpstreamTimeout, checked by one sweeper for all waiting requests (408
// to the client). A 401/407 takes the request off the lane: a goroutine
// answers the challenge with a sipgo client transaction as the usual path
// does, and so does a next hop over TCP or TLS. The sender's side (Timer J,
// answering retransmissions after the final response) is the
// sip.LiteServerTx's.
type fastLane struct {
	p *Proxy

	mu       sync.Mutex
	byKey    map[string]*laneEntry // server transaction key → request still forwarded
	byBranch map[string]*laneEntry // our Via branch → request waiting on the lane for its response
}

// laneEntry is a request forwarded through the fast lane, from the moment
// its first copy arrives: its key is claimed before anything else, so that
// a retransmission parsed meanwhile by another worker is recognised.
type laneEntry struct {
	key string // the sender's server transaction key
	f   *forwarding
	tx  *sip.LiteServerTx

	// The request as sent when the lane sent the client's datagram on
	// edited (appendForward) instead of f.fwd: its bytes (to f.up's
	// udpAddr) and the CSeq number it carries.
	raw []byte
	seq uint32

	mu       sync.Mutex
	waiting  bool           // sent, its response awaited on the lane (not before, not off the lane, not once answered)
	branch   string         // our Via branch, while waiting
	conn     sip.Connection // the socket the request went out on, while waiting
	deadline time.Time      // Timer F, while waiting
}

func newFastLane(p *Proxy) *fastLane {
	return &fastLane{p: p, byKey: map[string]*laneEntry{}, byBranch: map[string]*laneEntry{}}
}

// TakesRequest takes out-of-dialog requests that create no dialog and are
// no registration: what the lane can forward with no state beyond the
// request's own transaction. Everything else keeps sipgo's transactions.
func (l *fastLane) TakesRequest(req *sip.Request) bool {
	switch req.Method {
	case sip.INVITE, sip.ACK, sip.CANCEL, sip.REGISTER:
		return false
	}
	if createsDialog(req.Method) {
		return false
	}
	_, toTag := tags(req)
	return toTag == ""
}

// HandleRequest forwards req, or sends a retransmission of a request still
// waiting for its response on again.
func (l *fastLane) HandleRequest(req *sip.Request, tx *sip.LiteServerTx) {
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
// here (next hop unreachable). raw is the datagram the request came in,
// if sipgo kept it (patch 14): when it can, the lane sends that on with
// authproxy's edits made in its bytes, instead of a parsed copy
// serialised again.
func (l *fastLane) forward(e *laneEntry, raw []byte) bool {
	f := e.f
	if f.hop.transport != "UDP" {
		if !f.build() {
			return false
		}
		go l.offLane(e, nil)
		return true
	}
	branch := sip.GenerateBranchN(16)
	var err error
	conn := l.forwardBytes(e, raw, branch)
	if conn == nil {
		if !f.build() {
			return false
		}
		f.fwd.PrependHeader(l.p.newVia(f.hop.transport, branch))
		conn, err = l.p.ua.TransportLayer().ClientRequestConnection(context.Background(), f.fwd)
	}
	if err != nil {
		f.log.Warn("next hop unreachable", "error", err)
		f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "unreachable")
		return false
	}
	if err := l.p.pinRequest(branch, f.req.Method, f.hop.transport, f.hop.addr); err != nil {
		conn.TryClose()
		f.log.Warn("next hop unreachable", "error", err)
		f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "unreachable")
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.waiting, e.branch, e.conn = true, branch, conn
	f.sentAt = time.Now()
	e.deadline = f.sentAt.Add(l.p.cfg.UpstreamTimeout)
	// Findable before the request leaves: its response may be read by
	// another worker before WriteMsg returns (and waits for e.mu).
	l.mu.Lock()
	l.byBranch[branch] = e
	l.mu.Unlock()
	if err := e.send(); err != nil {
		l.finish(e)
		f.log.Warn("next hop unreachable", "error", err)
		f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "unreachable")
		return false
	}
	return true
}

// forwardBytes prepares e's request as the client's datagram raw with
// authproxy's edits (forwardEdits, the preemptive answers, our Via with
// branch) made in its bytes, into e.raw, and returns the listening socket
// to send it from. It returns nil when the request must be built as a
// parsed copy instead: no datagram, something other than a plain request
// to an upstream addressed by IP from a listener bound to one, or bytes
// appendForward would not edit. The preemptive answers, once computed,
// are in f.auth either way.
func (l *fastLane) forwardBytes(e *laneEntry, raw []byte, branch string) sip.Connection {
	f, req := e.f, e.f.req
	if raw == nil || f.toClient || f.bind != nil || f.up == nil || f.up.udpAddr == nil ||
		req.Method == sip.REGISTER || req.Route() != nil {
		return nil
	}
	lst := l.p.listenerFor("UDP")
	if lst == nil || lst.ip.IsUnspecified() {
		return nil
	}
	edits, err := f.forwardEdits()
	if err != nil {
		return nil // build answers it
	}
	f.addPreemptive()
	buf := datagramBufs.Get().(*[]byte)
	defer datagramBufs.Put(buf)
	*buf = appendVia((*buf)[:0], lst.advertise, lst.port, branch)
	via := len(*buf)
	out, ok := edits.appendForward(*buf, raw, len(req.Body()), (*buf)[:via], f.auth)
	*buf = out
	if !ok || len(out)-via > sip.UDPMTUSize-200 {
		// The parsed copy carries the answers computed here (build adds
		// f.auth); too large, it fails there as it always did.
		return nil
	}
	conn, err := l.p.ua.TransportLayer().GetConnection("udp", lst.local)
	if err != nil {
		// Not in sipgo's pool (yet): the parsed copy finds or makes one.
		return nil
	}
	e.raw = bytes.Clone(out[via:])
	e.seq = edits.seq
	return conn
}

// send sends the request (again) to the next hop on e.conn (e.mu held).
func (e *laneEntry) send() error {
	if e.raw == nil {
		return e.conn.WriteMsg(e.f.fwd)
	}
	uc, ok := e.conn.(*sip.UDPConnection)
	if !ok {
		return fmt.Errorf("listening socket is a %T", e.conn)
	}
	_, err := uc.WriteTo(e.raw, e.f.up.udpAddr)
	return err
}

// buildSent makes f.fwd, the parsed form of a request the lane sent as
// bytes, for what needs one (answering a challenge): built as buildForward
// builds it, with the answers and the CSeq number that were sent and our
// Via, so that it is the request the upstream received.
func (l *fastLane) buildSent(e *laneEntry) error {
	f := e.f
	fwd, err := f.buildForward()
	if err != nil {
		return err
	}
	for _, a := range f.auth {
		fwd.AppendHeader(sip.NewHeader(a.header, a.value))
	}
	fwd.CSeq().SeqNo = e.seq
	fwd.PrependHeader(l.p.newVia(f.hop.transport, e.branch))
	f.fwd = fwd
	return nil
}

// HandleResponse relays a response to a request waiting on the lane. It
// sees every response sipgo parses, from every transport, before sipgo's
// transactions: one read over TCP or TLS is dropped here (true) unless it
// came on the connection its request went on (pinning.go; datagrams were
// checked before parsing, by the read filter).
func (l *fastLane) HandleResponse(res *sip.Response) bool {
	if res.Transport() != "UDP" && l.p.responseVerdict(res) == pinMismatch {
		from, _ := netip.ParseAddrPort(res.Source())
		l.p.discarded("response-source", "message dropped: carries the branch of a request authproxy sent elsewhere", from)
		return true
	}
	via := res.Via()
	if via == nil {
		return false
	}
	branch, _ := via.Params.Get("branch")
	l.mu.Lock()
	e := l.byBranch[branch]
	l.mu.Unlock()
	if e == nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.waiting {
		return true // answered meanwhile: a retransmission
	}
	f := e.f
	if cs := res.CSeq(); cs == nil || cs.MethodName != f.req.Method {
		return false // RFC 3261 §17.1.3 matches branch and method
	}
	defer l.recoverRelay(e)
	switch {
	case res.StatusCode == sip.StatusTrying:
		// §16.7 step 3: a 100 is not forwarded.
	case res.IsProvisional():
		f.relay(res)
	case !f.toClient && (res.StatusCode == sip.StatusUnauthorized || res.StatusCode == sip.StatusProxyAuthRequired):
		// The challenge is answered off the lane, with a client
		// transaction of sipgo's, as on the usual path.
		l.stopWaiting(e)
		go l.offLane(e, res)
	default:
		f.relay(res)
		l.finish(e)
		f.end()
	}
	return true
}

// HandleRawResponse relays a response to a request waiting on the lane
// as the bytes the upstream sent (sipgo patch 13): our Via line cut out,
// the sender's CSeq number put back, nothing parsed or serialised. A
// challenge, or anything scanResponse cannot read for sure, goes to the
// parser and HandleResponse instead.
func (l *fastLane) HandleRawResponse(data []byte) bool {
	r, ok := scanResponse(data)
	if !ok || r.status == sip.StatusUnauthorized || r.status == sip.StatusProxyAuthRequired {
		return false
	}
	l.mu.Lock()
	e := l.byBranch[string(r.branch)]
	l.mu.Unlock()
	if e == nil || !e.tx.CanRespondRaw() {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.waiting {
		return true // answered meanwhile: a retransmission
	}
	f := e.f
	if string(r.method) != string(f.req.Method) {
		return false // RFC 3261 §17.1.3 matches branch and method
	}
	defer l.recoverRelay(e)
	switch {
	case r.status == sip.StatusTrying:
		// §16.7 step 3: a 100 is not forwarded.
	case r.status < 200:
		f.relayRaw(e.tx, data, &r)
	default:
		f.relayRaw(e.tx, data, &r)
		l.finish(e)
		f.end()
	}
	return true
}

// recoverRelay, deferred while a response to e's request is handled,
// turns a panic into the end of the request (a 500 to its sender unless
// it has its final response) instead of a crash.
func (l *fastLane) recoverRelay(e *laneEntry) {
	if r := recover(); r != nil {
		l.finish(e)
		e.f.panicked(r)
		e.f.end()
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

// offLane forwards the request the usual way, with a sipgo client
// transaction, in a goroutine of its own: first to a next hop over TCP or
// TLS (res nil), or after a challenge (res the 401/407).
func (l *fastLane) offLane(e *laneEntry, res *sip.Response) {
	f := e.f
	defer func() {
		l.mu.Lock()
		delete(l.byKey, e.key)
		l.mu.Unlock()
		f.end()
	}()
	defer f.recoverPanic()
	if res == nil {
		f.sendAndRelay()
		return
	}
	if f.fwd == nil {
		if err := l.buildSent(e); err != nil {
			f.log.Warn("cannot build forwarded request", "error", err)
			f.relay(res)
			return
		}
	}
	next, ok := f.maybeAnswer(res)
	if !ok {
		f.relay(res)
		return
	}
	if next != nil {
		f.relayLoop(next)
	}
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
	l.p.pins.release(e.branch, false, time.Now())
	e.waiting = false
	if e.conn != nil {
		e.conn.TryClose()
		e.conn = nil
	}
}

// finish ends a waiting entry (e.mu held): off the response path and its
// key released.
func (l *fastLane) finish(e *laneEntry) {
	l.stopWaiting(e)
	l.remove(e)
}

// laneSweep is how often the sweeper looks for requests whose upstream
// has not answered within UpstreamTimeout.
const laneSweep = 100 * time.Millisecond

// run answers 408 for the requests whose upstream did not answer in
// UpstreamTimeout (Timer F), until ctx ends.
func (l *fastLane) run(ctx context.Context) {
	t := time.NewTicker(laneSweep)
	defer t.Stop()
	var expired []*laneEntry
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			expired = expired[:0]
			l.mu.Lock()
			for _, e := range l.byBranch {
				if now.After(e.deadline) {
					expired = append(expired, e)
				}
			}
			l.mu.Unlock()
			for _, e := range expired {
				l.timeout(e)
			}
		}
	}
}

func (l *fastLane) timeout(e *laneEntry) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.waiting {
		return
	}
	l.finish(e)
	e.f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
	e.f.end()
}
