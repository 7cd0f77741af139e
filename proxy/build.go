package proxy

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Building the forwarded request (RFC 3261 §16.6): the copy sent on, with
// the edits both paths share (forwardEdits; the fast lane makes them in
// the client's bytes, rawsip.go), Record-Route and the CSeq shift.

// build makes f.fwd, the request to send, with the preemptive answers
// (the fast lane sends most requests as edited bytes instead, and builds
// their parsed form only to answer a challenge: buildSent).
func (f *forwarding) build() bool {
	if err := f.buildWithAnswers(); err != nil {
		f.log.Warn("cannot build forwarded request", "error", err)
		f.respondLocal(sip.StatusBadRequest, "Bad Request", "bad-request")
		return false
	}
	return true
}

// buildWithAnswers makes f.fwd from the client's request (buildForward)
// with the preemptive answers and those in f.auth.
func (f *forwarding) buildWithAnswers() error {
	fwd, err := f.buildForward()
	if err != nil {
		return err
	}
	f.addPreemptive()
	appendAuth(fwd, f.auth)
	f.fwd = fwd
	return nil
}

// appendAuth adds each answer as its Authorization or
// Proxy-Authorization header (RFC 3261 §22.2, §22.3).
func appendAuth(r *sip.Request, answers []authAnswer) {
	for _, a := range answers {
		r.AppendHeader(sip.NewHeader(a.header, a.value))
	}
}

// buildForward makes the copy of the request that is sent on (never the
// request itself: it belongs to the server transaction, whose 100 and 487
// are built from it).
func (f *forwarding) buildForward() (*sip.Request, error) {
	req := f.req
	fwd := req.Clone()
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
// fast lane in its bytes): authproxy's own Route entries removed,
// credentials and, for untrusted clients, identity headers removed,
// Max-Forwards decremented, the sender's real address recorded in its
// Via, the CSeq number shifted by what authproxy added upstream in this
// CSeq space.
func (f *forwarding) forwardEdits() (forwardEdits, error) {
	req := f.req
	var e forwardEdits
	e.dropRoutes = f.ownRoutes()
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
		if f.req.Method == sip.REGISTER {
			f.p.loadRegisterOffset(f.key)
		}
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

// ownRoutes is how many of the request's Route entries, from the top,
// name authproxy (§16.4: a proxy removes the Route entries that name it;
// one, or two after a double Record-Route).
func (f *forwarding) ownRoutes() int {
	n := 0
	for _, h := range f.req.Headers() {
		if !strings.EqualFold(h.Name(), "Route") {
			continue
		}
		r, ok := h.(*sip.RouteHeader)
		if !ok || !f.p.isOwnURI(r.Address) {
			break
		}
		n++
	}
	return n
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
	switch top, second := p.recordRouteListeners(clientTransport, client, next); {
	case top == nil:
	case second == nil:
		r.PrependHeader(recordRouteHeader(top))
	default:
		r.PrependHeader(recordRouteHeader(top), recordRouteHeader(second))
	}
}

// recordRouteListeners returns the listeners our Record-Route entries
// name, as addRecordRoute says, top first: none (nil, nil), one (second
// nil), or the upstream-facing one and the client-facing one.
func (p *Proxy) recordRouteListeners(clientTransport string, client netip.Addr, next hop) (top, second *boundListener) {
	cl := p.listenerFor(clientTransport, client)
	ul := p.listenerFor(next.transport, hopAddr(next.addr))
	switch {
	case cl == nil && ul == nil:
		return nil, nil
	case cl == nil || ul == nil || cl == ul:
		if ul == nil {
			return cl, nil
		}
		return ul, nil
	}
	return ul, cl
}

// recordRouteHeader is our Record-Route entry naming listener l.
func recordRouteHeader(l *boundListener) *sip.RecordRouteHeader {
	u := sip.Uri{Scheme: "sip", Host: l.advertise, Port: l.port, UriParams: sip.NewParams()}
	if l.transport != "UDP" {
		u.UriParams.Add("transport", l.uriTransport())
	}
	u.UriParams.Add("lr", "")
	return &sip.RecordRouteHeader{Address: u}
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
