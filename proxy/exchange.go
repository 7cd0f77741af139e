package proxy

import (
	"context"
	"net/netip"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// Sending a request upstream and following its non-INVITE exchange:
// challenges answered, failover (failover.go), the final response.

// sendAndRelay sends f.fwd in a sipgo client transaction and relays its
// responses until the sender has its final response. A send that fails at
// once (a TCP connection refused) fails over like any transport error.
func (f *forwarding) sendAndRelay() {
	var cw *cancelWatch
	if f.req.Method == sip.INVITE {
		cw = f.watchCancel()
		if cw.fired.Load() {
			f.notSent()
			return
		}
	}
	f.sentAt = time.Now()
	f.att.tried++
	clTx, err := f.send(f.fwd)
	if err != nil {
		f.log.Warn("next hop unreachable", "target", f.hop.addr, "error", err)
		var ok bool
		if clTx, ok = f.failover(f.ctx, "transport-error", nil); !ok {
			f.unreachable()
			return
		}
	}
	if cw != nil {
		f.inviteLoop(clTx, cw)
		return
	}
	f.relayLoop(clTx)
}

// send starts a client transaction for r with our Via on top (§16.6 step 8).
// The destination set on r is the target's IP:port (setHop) before addVia
// runs.
func (f *forwarding) send(r *sip.Request) (sip.ClientTransaction, error) {
	ctx, cancel := context.WithTimeout(f.ctx, 10*time.Second) // bounds a TCP dial
	defer cancel()
	if err := f.tlsReady(ctx); err != nil {
		return nil, err
	}
	if isWebSocket(f.hop.transport) && !f.p.webSocketOpen(f.hop.transport, f.hop.addr) {
		// sipgo would dial the browser, which accepts no connection.
		return nil, ErrFlowClosed
	}
	return f.p.request(ctx, r, f.hop.transport)
}

// tlsReady makes sure a request to a TLS target has a connection verified
// for its upstream's name (tlsconn.go), and with capture on, that one to a
// TCP target has a connection authproxy made (tcpconn.go); nothing to do
// otherwise.
func (f *forwarding) tlsReady(ctx context.Context) error {
	if f.hop.transport != "TLS" && f.hop.transport != "TCP" || f.toClient || f.up == nil {
		return nil
	}
	t, ok := f.target()
	if !ok {
		return ErrNoTarget
	}
	return f.p.tlsReady(ctx, f.up, t)
}

// tlsReady is forwarding.tlsReady for target t of u.
func (p *Proxy) tlsReady(ctx context.Context, u *upstream, t resolve.Target) error {
	switch {
	case t.Transport == "TLS" && p.tlsConn != nil:
		return p.tlsConn.ensure(ctx, u, t)
	case t.Transport == "TCP" && p.tcpConn != nil:
		return p.tcpConn.ensure(ctx, t.Addr.String())
	}
	return nil
}

// addVia returns the option that prepends our Via for a request sent over
// transport to its destination (an IP:port, set before: setHop), its
// branch pinned to that destination (pinning.go; an ACK gets no response
// and no pin).
func (p *Proxy) addVia(transport string) sipgo.ClientRequestOption {
	return func(_ *sipgo.Client, r *sip.Request) error {
		if r.Method == sip.ACK {
			r.PrependHeader(p.newVia(transport, hopAddr(r.Destination()), statelessBranch(r)))
			return nil
		}
		branch := sip.GenerateBranchN(16)
		if err := p.pinRequest(branch, r.Method, transport, r.Destination()); err != nil {
			return err
		}
		r.PrependHeader(p.newVia(transport, hopAddr(r.Destination()), branch))
		return nil
	}
}

// newVia is our Via for a request sent over transport to dst (§16.6 step
// 8): the address of the listener of dst's family.
func (p *Proxy) newVia(transport string, dst netip.Addr, branch string) *sip.ViaHeader {
	if l := p.listenerFor(transport, dst); l != nil {
		return ourVia(transport, l.advertise, l.port, branch)
	}
	host := ""
	if len(p.listeners) > 0 {
		// No listener of this transport: responses come back on the
		// connection we open; advertise our host, sipgo fills the port
		// from the socket.
		host = p.listeners[0].advertise
	}
	return ourVia(transport, host, 0, branch)
}

// ourVia is the Via authproxy puts on a request it sends from host:port
// (port 0: none) over transport; appendVia writes the same as bytes.
func ourVia(transport, host string, port int, branch string) *sip.ViaHeader {
	via := &sip.ViaHeader{
		ProtocolName:    "SIP",
		ProtocolVersion: "2.0",
		Transport:       transport,
		Host:            host,
		Port:            port,
		Params:          sip.NewParams(),
	}
	via.Params.Add("branch", branch)
	via.Params.Add("rport", "")
	return via
}

// relayLoop reads the responses to a non-INVITE request until the sender
// has its final response, answering challenges and failing over on the
// way.
func (f *forwarding) relayLoop(clTx sip.ClientTransaction) {
	res, end := f.exchange(clTx, f.tx.Done(), func(r *sip.Response) { _ = f.relay(r) })
	if res != nil {
		f.relay(res)
		return
	}
	f.ended(end)
}

// Ways an exchange ends without a final response to relay.
const (
	endTimeout     = "timeout"     // no final response in time: 408
	endUnreachable = "unreachable" // transport error, nothing left to try: 503
	endClientGone  = "client-gone" // the sender's side ended first
	endAnswered    = "answered"    // the sender was answered already
	endStopped     = "stopped"     // f.ctx ended
)

// exchange follows the client transaction clTx of a non-INVITE request
// until its final response, which it returns: it answers challenges (each
// a new client transaction to the same target), fails over to the next
// target or upstream (failover.go), and hands provisional responses but
// 100 (§16.7 step 3: not forwarded) to provisional. It returns nil and how
// it ended when there is no response to relay. The current attempt waits
// attemptTimeout for a first response, then Timer F from it.
func (f *forwarding) exchange(clTx sip.ClientTransaction, clientGone <-chan struct{}, provisional func(*sip.Response)) (*sip.Response, string) {
	timeout := time.NewTimer(f.attemptTimeout())
	defer timeout.Stop()
	defer func() { clTx.Terminate() }()
	next := func(why string, res *sip.Response) bool {
		clTx.Terminate()
		tx, ok := f.failover(f.ctx, why, res)
		if ok {
			clTx = tx
			resetTimer(timeout, f.attemptTimeout())
		}
		return ok
	}
	for {
		select {
		case res := <-clTx.Responses():
			if f.p.misdirectedOnStream(res) {
				continue
			}
			if !f.att.answered {
				f.att.answered = true
				resetTimer(timeout, f.p.cfg.UpstreamTimeout)
			}
			if res.IsProvisional() {
				if res.StatusCode != sip.StatusTrying && provisional != nil {
					provisional(res)
				}
				continue
			}
			if why, ok := f.failoverOn(res); ok && next(why, res) {
				continue
			}
			if isChallenge(res) && !f.toClient {
				tx, err := f.answer(res)
				if err != nil {
					f.log.Warn("upstream unreachable on retry", "error", err)
					if next("transport-error", nil) {
						continue
					}
					return nil, endUnreachable
				}
				if tx != nil {
					clTx.Terminate()
					clTx = tx
					resetTimer(timeout, f.p.cfg.UpstreamTimeout)
					continue
				}
			}
			return res, ""
		case <-clTx.Done():
			why := transactionFailure(clTx)
			if (!f.att.answered || why == "transport-error") && next(why, nil) {
				continue
			}
			if why == "timeout" {
				return nil, endTimeout
			}
			f.log.Warn("transaction failed", "error", clTx.Err())
			return nil, endUnreachable
		case <-timeout.C:
			if !f.att.answered && next("timeout", nil) {
				continue
			}
			return nil, endTimeout
		case <-clientGone:
			return nil, endClientGone
		case <-f.ctx.Done():
			return nil, endStopped
		}
	}
}

// ended answers the sender of a request whose exchange ended without a
// final response: 408 on timeout (Timer B/F), 503 when unreachable.
func (f *forwarding) ended(end string) {
	switch end {
	case endTimeout:
		f.respondLocal(sip.StatusRequestTimeout, "Request Timeout", "timeout")
	case endUnreachable:
		f.unreachable()
	case endClientGone:
		f.outcome = "client-gone"
	}
}

// isChallenge reports whether res is a 401 or 407.
func isChallenge(res *sip.Response) bool {
	return res.StatusCode == sip.StatusUnauthorized || res.StatusCode == sip.StatusProxyAuthRequired
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(d)
}
