package proxy

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// A CANCEL and an ACK end or confirm what another request started; they
// carry no credentials of their own and are never challenged (RFC 3261
// §22.1), so what admits them is where they come from. A CANCEL must come
// from where its INVITE came from (over the same transport, from the same
// address: the INVITE's sender is the only one who may cancel it), and an
// ACK for a 2xx from the client of its dialog (ack.go). Otherwise anyone
// who saw, or guessed, an INVITE's Via, Call-ID, tags and CSeq could end
// an admitted client's call: sipgo matches a CANCEL to the INVITE's server
// transaction by those alone (§9.2) and answers it before any handler
// runs. So the CANCEL is checked before sipgo reads it: on a UDP listener
// by the socket authproxy reads for sipgo (laneSocket), on a TCP or TLS
// connection by the connection guard's message inspector
// (tcpguard.Config.Inspect).

// inviteSources remembers where each INVITE came from, under every RFC
// 3261 branch its bytes carry (wherever one appears, so that no reading of
// the headers other than the parser's can hide the top Via's), first
// sender first: a later copy from elsewhere changes nothing. An entry goes
// when the INVITE's handler returns (its final response sent: a CANCEL
// then cancels nothing), or else lives from one to two spans (the longest
// an INVITE server transaction can wait for its final response: Timer C),
// kept in two generations. Entries hold no pointer (a hash of the branch,
// the address as bytes), so the garbage collector does not mark them.
type inviteSources struct {
	span time.Duration

	mu       sync.Mutex
	cur, old map[uint64]inviteSource // by hashKey of the branch
	started  time.Time
}

// inviteSource is an INVITE's transport and source address.
type inviteSource struct {
	transport byte // 'U', 'T' or 'L' (TLS)
	addr      [16]byte
	port      uint16
}

func newInviteSources(span time.Duration) *inviteSources {
	return &inviteSources{span: span, cur: map[uint64]inviteSource{}, old: map[uint64]inviteSource{}}
}

func makeInviteSource(transport string, from netip.AddrPort) inviteSource {
	src := inviteSource{transport: 'U', addr: from.Addr().As16(), port: from.Port()}
	switch transport {
	case "TCP":
		src.transport = 'T'
	case "TLS":
		src.transport = 'L'
	}
	return src
}

func (s inviteSource) String() string {
	t := map[byte]string{'U': "UDP", 'T': "TCP", 'L': "TLS"}[s.transport]
	return t + " " + netip.AddrPortFrom(netip.AddrFrom16(s.addr).Unmap(), s.port).String()
}

// note remembers that the INVITE data came over transport from from.
func (s *inviteSources) note(data []byte, transport string, from netip.AddrPort, now time.Time) {
	src := makeInviteSource(transport, from)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotate(now)
	forEachBranch(data, func(branch []byte) bool {
		h := hashKey(branch)
		if _, ok := s.old[h]; !ok {
			if _, ok := s.cur[h]; !ok {
				s.cur[h] = src
			}
		}
		return true
	})
}

// source returns where the first INVITE carrying branch came from.
func (s *inviteSources) source(branch string, now time.Time) (inviteSource, bool) {
	h := hashKey(branch)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotate(now)
	if src, ok := s.cur[h]; ok {
		return src, true
	}
	src, ok := s.old[h]
	return src, ok
}

// forget drops the INVITE whose top Via branch is branch.
func (s *inviteSources) forget(branch string) {
	h := hashKey(branch)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.cur, h)
	delete(s.old, h)
}

// len is the number of branches remembered.
func (s *inviteSources) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.cur) + len(s.old)
}

// rotate drops the older generation once a span passed (s.mu held).
func (s *inviteSources) rotate(now time.Time) {
	switch d := now.Sub(s.started); {
	case d < s.span:
	case d < 2*s.span:
		s.old, s.cur, s.started = s.cur, map[uint64]inviteSource{}, now
	default:
		clear(s.old)
		clear(s.cur)
		s.started = now
	}
}

// cancelRefused reports whether cancel, received over transport from
// from, is refused: its top Via branch is that of an INVITE that came from
// elsewhere. A refused CANCEL is counted and logged (throttled); the
// caller answers it (403, or nothing with Limits.Drop over UDP) and never
// hands it to sipgo, so the call goes on. A CANCEL matching no INVITE
// goes on to sipgo and handleCancel.
func (p *Proxy) cancelRefused(cancel *sip.Request, transport string, from netip.AddrPort) bool {
	invite, ok := p.invites.source(topViaBranch(cancel), time.Now())
	if !ok || invite == makeInviteSource(transport, from) {
		return false
	}
	p.cfg.Observer.Refused("cancel-source")
	if ok, suppressed := p.inputLog.allow("cancel-source", time.Now()); ok {
		p.log.Warn("request refused", logMethod, "CANCEL", "reason", "cancel-source",
			"source", from.String(), "invite_source", invite.String(), "suppressed", suppressed)
	}
	return true
}

// cancelRefusal is the answer to a refused CANCEL: 403 (RFC 3261 §21.4.4).
func cancelRefusal(cancel *sip.Request) []byte {
	return []byte(sip.NewResponseFromRequest(cancel, sip.StatusForbidden, "Forbidden (not the INVITE's source)", nil).String())
}

// handleCancel answers a CANCEL that matched no pending INVITE (sipgo
// answers the ones that do, once cancelRefused let them): 481 (RFC 3261
// §9.2) to a source authproxy admits, and to any other what every request
// from it gets, 403 (or nothing, with Limits.Drop over UDP).
func (p *Proxy) handleCancel(req *sip.Request, tx sip.ServerTransaction) {
	src := sourceAddr(req.Source())
	code, reason := sip.StatusCallTransactionDoesNotExists, "Call/Transaction Does Not Exist"
	if rt := p.rt.Load(); rt.groupFor(src) == nil && rt.fromUpstream(src) == nil {
		p.cfg.Observer.Refused("source-denied")
		p.refusalLog(p.log.With(logMethod, "CANCEL"), "source not admitted", src)
		if p.limiter.drop() && req.Transport() == "UDP" {
			return
		}
		code, reason = sip.StatusForbidden, "Forbidden"
	}
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	if err := tx.Respond(res); err != nil {
		p.log.Debug("cannot answer CANCEL", "error", err)
	}
}

// sendCancel cancels the INVITE authproxy has outstanding upstream: same
// Request-URI, Call-ID, From, To, Route, top Via (our branch) and CSeq
// number as that INVITE — after an answered challenge, the authenticated
// re-send, not the client's original (RFC 3261 §9.1).
func (f *forwarding) sendCancel(inv *sip.Request) {
	c := sip.NewRequest(sip.CANCEL, *inv.Recipient.Clone())
	c.SipVersion = inv.SipVersion
	c.AppendHeader(inv.Via().Clone())
	for _, r := range inv.GetHeaders("Route") {
		c.AppendHeader(sip.HeaderClone(r))
	}
	mf := sip.MaxForwardsHeader(70)
	c.AppendHeader(&mf)
	c.AppendHeader(sip.HeaderClone(inv.From()))
	c.AppendHeader(sip.HeaderClone(inv.To()))
	c.AppendHeader(sip.HeaderClone(inv.CallID()))
	c.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL})
	c.SetBody(nil)
	c.SetTransport(inv.Transport())
	c.SetDestination(inv.Destination())
	c.Laddr = inv.Laddr
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.tlsReady(ctx); err != nil {
		f.log.Warn("cannot send CANCEL upstream", "error", err)
		return
	}
	tx, err := f.p.client.TransactionRequest(ctx, c, keepAsIs)
	if err != nil {
		f.log.Warn("cannot send CANCEL upstream", "error", err)
		return
	}
	go drainTransaction(tx)
}

// keepAsIs is a client request option that changes nothing: passing any
// option stops sipgo from filling in headers of its own.
func keepAsIs(*sipgo.Client, *sip.Request) error { return nil }

// drainTransaction reads a client transaction's responses until it ends,
// so that sipgo never blocks passing one up.
func drainTransaction(tx sip.ClientTransaction) {
	for {
		select {
		case <-tx.Responses():
		case <-tx.Done():
			return
		}
	}
}
