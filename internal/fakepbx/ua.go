package fakepbx

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// The callee user agent. An authenticated INVITE without a To tag creates a
// dialog (a Call) that the fake keeps as a UAS does (RFC 3261 §12.1.1):
//
//   - 180 Ringing (or, with Reliable, a 183 with Require: 100rel, RSeq: 1 and
//     SDP) carries the dialog's To tag, Contact and the INVITE's
//     Record-Route; then the final response: FinalCode (200 with an SDP
//     answer and Contact by default), Forks times for a 2xx.
//   - A 2xx is retransmitted over UDP (T1 doubling up to T2) until its ACK
//     arrives, for at most 64*T1; the ACK's CSeq and credentials are checked.
//   - Requests in the dialog must have a CSeq strictly above the dialog's
//     last one (the INVITE's to begin with): the tap decides it in arrival
//     order, per dialog, so that INVITE -> BYE with an unshifted CSeq gets
//     500 "CSeq out of order". BYE ends the dialog; re-INVITE gets 200 with
//     SDP (and its ACK is awaited like the first); PRACK, UPDATE, INFO,
//     MESSAGE, NOTIFY, REFER and anything else get 200.
//   - CANCEL: see onTapCancel.
//
// Lock order: s.mu is never held while calling into a sipgo transaction
// (sipgo calls OnCancel with its transaction lock held, and that callback
// takes s.mu).

// CallConfig configures the callee UA that answers authenticated INVITEs.
type CallConfig struct {
	// Ring is how long to ring: after authentication the UA sends 180
	// Ringing (with To tag and Contact) and waits this long before the
	// final answer (0: answer right after the 180). sipgo hands every
	// received message to a goroutine of its own, so a peer may process a
	// 180 and a final response sent back to back in either order (its
	// client transaction then drops the late 180): a test that needs to see
	// the 180 sets a Ring of some tens of milliseconds.
	Ring time.Duration
	// NoAnswer sends 180 and never answers, until a CANCEL (answered 487,
	// or 200 with AnswerOnCancel) or the end of the test.
	NoAnswer bool
	// FinalCode is the final status of an authenticated INVITE (default:
	// Config.FinalCode, itself 200 by default). A 2xx carries an SDP
	// answer and Contact.
	FinalCode int
	// Reliable makes the provisional response a reliable 183 Session
	// Progress (RFC 3262: Require: 100rel, RSeq: 1, SDP), retransmitted over
	// UDP until its PRACK, which is awaited for at most 5s before the final
	// answer (Ring then applies). The PRACK gets 200; Call.PRACKOK tells
	// whether its RAck was "1 <the INVITE's CSeq as received> INVITE".
	Reliable bool
	// Forks is the number of 2xx sent for an INVITE answered with a 2xx,
	// each with its own To tag (so each is a dialog and a Call of its own),
	// forkGap apart, all through the INVITE's server transaction (default 1).
	Forks int
	// AnswerOnCancel answers a ringing INVITE with 200 when its CANCEL
	// arrives, before sipgo's transaction layer sees the CANCEL (which then
	// gets 200 and has no other effect): the 2xx crosses the CANCEL
	// deterministically.
	AnswerOnCancel bool
	// NoProvisional sends the final response at once, with no 180 or 183
	// before it: a server that refuses the call outright (a carrier's 503
	// when it is overloaded).
	NoProvisional bool
	// ChallengeInDialog also challenges requests within a dialog (BYE,
	// re-INVITE, PRACK, INFO...; never ACK or CANCEL), like a strict PBX:
	// each must carry valid credentials for a fresh nonce, so the first
	// attempt gets a 407 and the re-sent one is accepted. Asterisk does not.
	ChallengeInDialog bool
}

func (cc CallConfig) validate() error {
	switch {
	case cc.Ring < 0:
		return fmt.Errorf("Call.Ring %v is negative", cc.Ring)
	case cc.FinalCode != 0 && (cc.FinalCode < 200 || cc.FinalCode > 699):
		return fmt.Errorf("Call.FinalCode %d is not a final status", cc.FinalCode)
	case cc.Forks < 0:
		return fmt.Errorf("Call.Forks %d is negative", cc.Forks)
	case cc.NoProvisional && (cc.Reliable || cc.NoAnswer || cc.Ring > 0):
		return fmt.Errorf("Call.NoProvisional excludes Reliable, NoAnswer and Ring")
	}
	return nil
}

// Dialog states (Call.State).
const (
	// StateEarly: a provisional response with the dialog's tag was sent,
	// no final response yet.
	StateEarly = "early"
	// StateConfirmed: a 2xx was sent (whether or not it was ACKed, see
	// Call.Acked).
	StateConfirmed = "confirmed"
	// StateTerminated: BYE (either way) ended it, or the INVITE got a
	// non-2xx final other than a 487 to a CANCEL.
	StateTerminated = "terminated"
	// StateCancelled: a CANCEL made the INVITE end with 487.
	StateCancelled = "cancelled"
)

// Timing and constants of the UA.
const (
	forkGap          = 5 * time.Millisecond // between the 2xx of a forked answer
	prackWait        = 5 * time.Second      // bound on the wait for a PRACK
	inDialogDeadline = 10 * time.Second     // bound on the wait for a response to the UA's requests
	ackWaitFactor    = 64                   // a 2xx is retransmitted for 64*T1 at most
	noFinalYet       = 0                    // inviteTx.final before any final response
	tagLength        = 12                   // of the UA's To tags
	maxInviteCallIDs = 4096                 // bound on Server.inviteCallIDs
	defaultSIPPort   = 5060
	sdpContentType   = "application/sdp"
	methodsAllowed   = "INVITE, ACK, CANCEL, BYE, PRACK, UPDATE, INFO, MESSAGE, NOTIFY, REFER, OPTIONS"
)

// Call is a snapshot of one dialog of the callee UA, or of an INVITE that
// was authenticated but did not establish one.
type Call struct {
	CallID    string
	LocalTag  string // the fake's tag (To of the INVITE's responses)
	RemoteTag string // the caller's tag (From of the INVITE)
	// Fork is the index of this dialog's 2xx among those of a forked answer
	// (0: the dialog of the provisional responses).
	Fork int
	// State is StateEarly, StateConfirmed, StateTerminated or
	// StateCancelled.
	State string
	// FinalCode is the final status sent to the INVITE (0 while ringing).
	FinalCode int
	// InviteCSeq and InviteBranch are the CSeq number and top Via branch of
	// the INVITE as received: the authenticated one.
	InviteCSeq   uint32
	InviteBranch string
	// RemoteTarget is the INVITE's Contact URI (updated by target refresh
	// requests and responses); RouteSet the INVITE's Record-Route URIs in
	// order, as the UAS uses them. The UA's own requests go to the first
	// route (with lr), or to RemoteTarget when RouteSet is empty.
	RemoteTarget string
	RouteSet     []string
	// LocalCSeq is the CSeq of the last request the UA sent in the dialog
	// (it starts at a random number in [100, 1000)).
	LocalCSeq uint32
	// Acked: an ACK for the INVITE's 2xx arrived. AckCSeqOK: every such ACK
	// had the INVITE's CSeq number as received. AckAuthOK: every such ACK
	// carried the same Authorization/Proxy-Authorization credentials as the
	// INVITE (RFC 3261 §22.1), true when the INVITE carried none.
	Acked, AckCSeqOK, AckAuthOK bool
	// PRACKOK: the PRACK for the reliable 183 had RAck "1 <InviteCSeq>
	// INVITE".
	PRACKOK bool
	// Cancelled: a CANCEL for the INVITE transaction (its top Via branch)
	// arrived, at any time; with AnswerOnCancel or after the final response
	// the State is not StateCancelled. The CANCEL is in Requests, with its
	// CSeq and Branch.
	Cancelled bool
	// Retransmissions counts 2xx retransmissions sent while awaiting ACKs.
	// RetransmissionsAcked: they ended because every 2xx of the INVITE
	// transaction was ACKed (not because the UA gave up); none follows.
	Retransmissions      int
	RetransmissionsAcked bool
	// Requests are the requests received in the dialog (ACKs and PRACK
	// included) and the CANCELs of its INVITE, in arrival order; the INVITE
	// itself is not included (see Server.Requests).
	Requests []Request
	// Errors lists protocol violations seen in the dialog: CSeq out of
	// order, unknown dialog (right Call-ID, wrong tags), request in a
	// terminated dialog, ACK CSeq or credentials differing from the
	// INVITE's, ACK missing, PRACK missing or with a wrong RAck, CANCEL
	// with a CSeq other than the INVITE's.
	Errors []string
}

// callState is the UA's record of one dialog. Guarded by Server.mu.
type callState struct {
	Call
	seqs       []uint64 // arrival numbers of Call.Requests
	target     sip.Uri
	routes     []sip.Uri
	local      sip.ToHeader   // the INVITE's To, without tag: From of the UA's requests
	remote     sip.FromHeader // the INVITE's From, without tag: To of the UA's requests
	transport  string         // of the INVITE
	inv        *inviteTx
	ack        *ackWait // the 2xx last sent, awaiting (or having got) its ACK
	sdpSession int
	sdpVersion int
}

// ackWait is a 2xx (to the INVITE or a re-INVITE) awaiting its ACK.
type ackWait struct {
	cseq    uint32
	auth    []string // normalized credentials of the request it answers
	initial bool     // the 2xx to the dialog-creating INVITE
	acked   bool
	notify  chan struct{} // poked at each ACK
}

// inviteTx is an INVITE transaction being handled (challenged or rung).
// Guarded by Server.mu, except the immutable fields.
type inviteTx struct {
	req       *sip.Request
	tx        sip.ServerTransaction
	key       string // rawKey of the INVITE
	ruri      string // its Request-URI as received
	branch    string
	cseq      uint32
	transport string
	source    string
	auth      []string // normalized credentials of the INVITE
	signal    chan struct{}
	notify    chan struct{}
	prack     chan struct{} // closed at the first PRACK

	calls         []*callState // [0] the dialog of the provisional responses, then forks
	final         int          // final status claimed (noFinalYet: none)
	res2xx        *sip.Response
	cancels       []Request
	cancelSeqs    []uint64
	cancelSeen    map[string]bool
	sipgoCanceled bool // sipgo's transaction answered a CANCEL with 487
	pracked       bool
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func callKey(callID, localTag string) string { return callID + "\x00" + localTag }

// registerInvite makes CANCELs of the INVITE (same top Via branch) known to
// onTapCancel while its handler runs, records one that arrived before, and
// learns from sipgo when its transaction answers a CANCEL by itself.
func (s *Server) registerInvite(req *sip.Request, tx sip.ServerTransaction, in *incoming) *inviteTx {
	it := &inviteTx{
		req: req, tx: tx, key: in.key, ruri: in.rec.RequestURI, branch: in.rec.Branch, cseq: in.rec.CSeq,
		transport: in.rec.Transport, source: in.rec.Source, auth: in.auth,
		signal: make(chan struct{}, 1), notify: make(chan struct{}, 1), prack: make(chan struct{}),
		cancelSeen: map[string]bool{},
	}
	cancelKey := rawKey(it.transport, it.source, it.branch, uint64(it.cseq), "CANCEL")
	s.mu.Lock()
	s.invites[it.branch] = it
	if len(s.inviteCallIDs) >= maxInviteCallIDs {
		s.inviteCallIDs = map[string]struct{}{}
	}
	s.inviteCallIDs[in.rec.CallID] = struct{}{}
	s.mu.Unlock()
	// A CANCEL that arrived before the registration; one arriving now is
	// taken either here or by onTapCancel.
	if raw, ok := s.raws.take(cancelKey); ok {
		s.mu.Lock()
		it.cancelSeen[cancelKey] = true
		s.mu.Unlock()
		s.recordCancel(it, raw, it.transport, it.source)
	}
	if !tx.OnCancel(func(*sip.Request) { s.sipgoCanceled(it) }) && errors.Is(tx.Err(), sip.ErrTransactionCanceled) {
		s.sipgoCanceled(it)
	}
	return it
}

func (s *Server) unregisterInvite(it *inviteTx) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.invites[it.branch] == it {
		delete(s.invites, it.branch)
	}
}

// onTapCancel is called by the tap, on the socket's reader goroutine and
// before sipgo parses it, for every new CANCEL. A CANCEL whose top Via
// branch is that of an INVITE being handled is recorded (in Requests() and
// in the INVITE's Calls). If that INVITE is ringing, the UA acts at once:
//
//   - by default it answers the CANCEL 200 and then the INVITE 487, both
//     with the dialog's To tag (sipgo's own 487 would carry a random one),
//     and consumes the CANCEL: sipgo never sees it. Left to sipgo, the
//     CANCEL could be processed after the ACK for the 487, which on TCP ends
//     the INVITE transaction at once (Timer I = 0), and get a 481.
//   - with AnswerOnCancel it answers the INVITE 200 and lets the CANCEL go
//     on to sipgo, which finds the INVITE transaction accepted, answers the
//     CANCEL 200 and does nothing else: on the wire the INVITE's 200
//     precedes the CANCEL's.
//
// Otherwise the CANCEL goes on to sipgo, which answers it 200 if it matches
// a transaction (and 487 to an INVITE with no final response yet, with a
// To tag of its own; sipgoCanceled learns of it), or hands it to the
// handler (481).
func (s *Server) onTapCancel(transport, source string, f rawFields, key string) (consumed bool) {
	s.mu.Lock()
	it := s.invites[f.branch]
	if s.closed || it == nil || it.cancelSeen[key] {
		s.mu.Unlock()
		return false // unknown (sipgo answers it) or a retransmission
	}
	it.cancelSeen[key] = true
	s.mu.Unlock()
	raw, ok := s.raws.take(key)
	if !ok {
		return false
	}
	cancel := s.recordCancel(it, raw, transport, source)
	s.mu.Lock()
	ringing := len(it.calls) > 0 && it.final == noFinalYet
	s.mu.Unlock()
	if !ringing || cancel == nil {
		return false
	}
	if s.cfg.Call.AnswerOnCancel {
		code := s.cfg.Call.finalCode(s.cfg)
		if code >= 300 {
			code = 200
		}
		s.finalize(it, code, nil)
		return false
	}
	stx, ok := it.tx.(*sip.ServerTx)
	if !ok {
		return false
	}
	s.finalize(it, 487, func(tag string) {
		// Where sipgo sends the INVITE's responses, on its connection.
		res := s.newResponse(cancel, 200, "")
		res.To().Params.Add("tag", tag)
		res.SetDestination(s.newResponse(it.req, 100, "").Destination())
		s.remember(key, res) // for a retransmission sipgo would hand over
		if err := stx.Connection().WriteMsg(res); err != nil && s.ctx.Err() == nil {
			s.t.Logf("fakepbx %s: sending 200 to CANCEL: %v", s.name, err)
		}
		consumed = true
	})
	return consumed
}

// recordCancel records a CANCEL of it and returns it parsed (nil if
// unparsable).
func (s *Server) recordCancel(it *inviteTx, raw rawRequest, transport, source string) *sip.Request {
	in := s.incomingFromRaw(raw, transport, source)
	if in == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	insertBySeq(&it.cancels, &it.cancelSeqs, in.rec, in.seq)
	s.recordLocked(in, it.calls...)
	for _, c := range it.calls {
		c.Cancelled = true
		s.cancelCheck(it, c, in.rec)
	}
	return in.req
}

// cancelCheck records in c what is wrong with a CANCEL of it's INVITE: a
// CSeq number other than the INVITE's, and with CheckDialogTarget another
// Request-URI (RFC 3261 §9.1 wants both the same). s.mu must be held.
func (s *Server) cancelCheck(it *inviteTx, c *callState, cancel Request) {
	if cancel.CSeq != c.InviteCSeq {
		c.Errors = append(c.Errors, fmt.Sprintf("CANCEL CSeq %d, the INVITE's is %d", cancel.CSeq, c.InviteCSeq))
	}
	if s.cfg.CheckDialogTarget && cancel.RequestURI != it.ruri {
		c.Errors = append(c.Errors, fmt.Sprintf("CANCEL Request-URI %s, the INVITE's is %s", cancel.RequestURI, it.ruri))
	}
}

// sipgoCanceled runs when sipgo's transaction answered a CANCEL with 487 by
// itself: a CANCEL that onTapCancel did not act upon because the UA was not
// ringing yet. It is called with sipgo's transaction lock held.
func (s *Server) sipgoCanceled(it *inviteTx) {
	s.mu.Lock()
	it.sipgoCanceled = true
	for _, c := range it.calls {
		c.Cancelled = true
	}
	if it.final == noFinalYet && len(it.calls) > 0 {
		s.setFinalLocked(it, 487)
	}
	s.bumpLocked()
	s.mu.Unlock()
	poke(it.signal)
}

// setFinalLocked records that code ended it's INVITE, on its first dialog.
func (s *Server) setFinalLocked(it *inviteTx, code int) {
	it.final = code
	c := it.calls[0]
	c.FinalCode = code
	switch {
	case code < 300:
		c.State = StateConfirmed
	case code == 487 && c.Cancelled:
		c.State = StateCancelled
	default:
		c.State = StateTerminated
	}
	s.bumpLocked()
}

// finalCode is the final status of an authenticated INVITE.
func (cc CallConfig) finalCode(cfg Config) int {
	if cc.FinalCode != 0 {
		return cc.FinalCode
	}
	return cfg.FinalCode
}

// runInvite is the UA's handling of an authenticated dialog-creating
// INVITE (recorded already). It returns once the final response is ACKed,
// or the wait for the ACK is over.
func (s *Server) runInvite(req *sip.Request, tx sip.ServerTransaction, in *incoming, it *inviteTx) {
	cc := s.cfg.Call
	c := s.newCall(it, in, sip.GenerateTagN(tagLength), 0)
	if s.finalOf(it) == noFinalYet && cc.NoProvisional {
		s.finalize(it, cc.finalCode(s.cfg), nil)
	} else if s.finalOf(it) == noFinalYet {
		code := 180
		if cc.Reliable {
			code = 183
		}
		s.mu.Lock()
		prov := s.uaResponse(req, c, code, cc.Reliable)
		s.mu.Unlock()
		if cc.Reliable {
			prov.AppendHeader(sip.NewHeader("Require", "100rel"))
			prov.AppendHeader(sip.NewHeader("RSeq", "1"))
		}
		if err := tx.Respond(prov); err != nil && s.ctx.Err() == nil && !errors.Is(err, sip.ErrTransactionCanceled) {
			s.t.Logf("fakepbx %s: sending %d: %v", s.name, code, err)
		}
		if cc.Reliable {
			s.awaitPRACK(it, c, tx, prov)
		}
		switch {
		case cc.NoAnswer:
			s.ring(it, tx, nil)
		case cc.Ring > 0:
			timer := time.NewTimer(cc.Ring)
			s.ring(it, tx, timer.C)
			timer.Stop()
		}
		if s.ctx.Err() != nil {
			return
		}
		s.finalize(it, cc.finalCode(s.cfg), nil)
	}

	s.mu.Lock()
	final, res := it.final, it.res2xx
	s.mu.Unlock()
	if final >= 300 {
		s.awaitAck(req, tx, c)
		return
	}
	ds := []delivery{{c: c, res: res}}
	for i := 1; i < max(cc.Forks, 1); i++ {
		select {
		case <-time.After(forkGap):
		case <-s.ctx.Done():
			return
		}
		fc := s.newCall(it, in, sip.GenerateTagN(tagLength), i)
		s.mu.Lock()
		fres := s.uaResponse(req, fc, final, true)
		s.mu.Unlock()
		// In the Accepted state (RFC 6026) sipgo's server transaction
		// sends every 2xx it is given, whatever its To tag.
		if err := tx.Respond(fres); err != nil && s.ctx.Err() == nil {
			s.t.Logf("fakepbx %s: sending fork %d: %v", s.name, i, err)
		}
		ds = append(ds, delivery{c: fc, res: fres})
	}
	s.awaitAcks(tx, in.rec.Transport == "UDP", ds, it.notify)
}

func (s *Server) finalOf(it *inviteTx) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return it.final
}

// ring waits until a final response is claimed (CANCEL, BYE), timeout
// fires (nil: never), the transaction ends or the fake stops.
func (s *Server) ring(it *inviteTx, tx sip.ServerTransaction, timeout <-chan time.Time) {
	for {
		select {
		case <-it.signal:
			if s.finalOf(it) != noFinalYet {
				return
			}
		case <-timeout:
			return
		case <-tx.Done():
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// awaitPRACK waits (at most prackWait) for the PRACK of the reliable
// provisional prov, retransmitting it over UDP (T1 doubling up to T2).
func (s *Server) awaitPRACK(it *inviteTx, c *callState, tx sip.ServerTransaction, prov *sip.Response) {
	deadline := time.NewTimer(prackWait)
	defer deadline.Stop()
	interval := sip.T1
	retransmit := time.NewTimer(interval)
	defer retransmit.Stop()
	retransmitC := retransmit.C
	if it.transport != "UDP" {
		retransmitC = nil
	}
	for {
		select {
		case <-it.prack:
			return
		case <-it.signal:
			if s.finalOf(it) != noFinalYet {
				return
			}
		case <-retransmitC:
			_ = tx.Respond(prov)
			interval = min(2*interval, sip.T2)
			retransmit.Reset(interval)
		case <-deadline.C:
			s.addError(c, fmt.Sprintf("no PRACK for the reliable 183 within %v", prackWait))
			return
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *Server) addError(c *callState, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.Errors = append(c.Errors, msg)
	s.bumpLocked()
}

// finalize sends the final response code to it's INVITE on its first
// dialog, unless a final response was claimed already (by a CANCEL, a BYE
// in the early dialog, or sipgo). It reports whether it sent one. before,
// if not nil, runs first, once the final response is claimed, with the
// dialog's tag.
func (s *Server) finalize(it *inviteTx, code int, before func(tag string)) bool {
	s.mu.Lock()
	if it.final != noFinalYet || len(it.calls) == 0 {
		s.mu.Unlock()
		return false
	}
	c := it.calls[0]
	res := s.uaResponse(it.req, c, code, code < 300)
	s.setFinalLocked(it, code)
	if code < 300 {
		it.res2xx = res
		c.ack = &ackWait{cseq: it.cseq, auth: it.auth, initial: true, notify: it.notify}
	}
	tag := c.LocalTag
	s.mu.Unlock()
	poke(it.signal)

	if before != nil {
		before(tag)
	}
	err := s.respond(it.req, it.tx, it.key, res)
	if errors.Is(err, sip.ErrTransactionCanceled) {
		// sipgo's transaction answered a CANCEL (487) just before.
		s.mu.Lock()
		c.Cancelled = true
		it.res2xx, c.ack = nil, nil
		s.setFinalLocked(it, 487)
		s.mu.Unlock()
	}
	return true
}

// newCall creates the dialog with localTag for it's INVITE: fork 0 is the
// early dialog of the provisional responses, the others are confirmed by
// their 2xx at once.
func (s *Server) newCall(it *inviteTx, in *incoming, localTag string, fork int) *callState {
	req := it.req
	c := &callState{transport: in.rec.Transport, inv: it}
	c.CallID, c.LocalTag, c.RemoteTag, c.Fork = in.rec.CallID, localTag, in.rec.FromTag, fork
	c.InviteCSeq, c.InviteBranch = in.rec.CSeq, in.rec.Branch
	c.LocalCSeq = uint32(100 + rand.IntN(900)) // random-ish, small
	c.sdpSession = rand.IntN(1 << 30)
	c.State = StateEarly
	if h := req.To(); h != nil {
		c.local = sip.ToHeader{DisplayName: h.DisplayName, Address: *h.Address.Clone()}
	}
	if h := req.From(); h != nil {
		c.remote = sip.FromHeader{DisplayName: h.DisplayName, Address: *h.Address.Clone()}
	}
	if h := req.Contact(); h != nil {
		c.target = *h.Address.Clone()
	} else {
		// No Contact: the source address is the best guess.
		host, port, _ := net.SplitHostPort(in.rec.Source)
		p, _ := strconv.Atoi(port)
		c.target = sip.Uri{Scheme: "sip", Host: host, Port: p, UriParams: sip.HeaderParams{{K: "transport", V: strings.ToLower(c.transport)}}}
		c.Errors = append(c.Errors, "INVITE without Contact")
	}
	for _, h := range req.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			c.routes = append(c.routes, *rr.Address.Clone())
		}
	}
	s.raws.openDialog(c.CallID, c.RemoteTag, c.LocalTag, uint64(c.InviteCSeq))

	s.mu.Lock()
	defer s.mu.Unlock()
	c.refreshStrings()
	for i, r := range it.cancels {
		insertBySeq(&c.Requests, &c.seqs, r, it.cancelSeqs[i])
		s.cancelCheck(it, c, r)
	}
	c.Cancelled = len(it.cancels) > 0 || it.sipgoCanceled
	it.calls = append(it.calls, c)
	if fork == 0 && it.sipgoCanceled && it.final == noFinalYet {
		s.setFinalLocked(it, 487)
	}
	if fork > 0 {
		c.State, c.FinalCode = StateConfirmed, it.final
		c.ack = &ackWait{cseq: it.cseq, auth: it.auth, initial: true, notify: it.notify}
	}
	s.calls = append(s.calls, c)
	s.callIndex[callKey(c.CallID, c.LocalTag)] = c
	s.bumpLocked()
	return c
}

// refreshStrings updates the exported views of target and routes.
func (c *callState) refreshStrings() {
	c.RemoteTarget = c.target.String()
	c.RouteSet = c.RouteSet[:0]
	for _, r := range c.routes {
		c.RouteSet = append(c.RouteSet, r.String())
	}
}

// uaResponse builds a response of the UA in dialog c: To tag, and for
// 101-299 Contact, Allow and (with sdp) an SDP body. s.mu must be held.
func (s *Server) uaResponse(req *sip.Request, c *callState, code int, sdp bool) *sip.Response {
	res := s.newResponse(req, code, "")
	if to := res.To(); to != nil {
		to.Params.Add("tag", c.LocalTag)
	}
	if code > 100 && code < 300 {
		res.AppendHeader(s.contact(c.transport))
		res.AppendHeader(sip.NewHeader("Allow", methodsAllowed))
		if sdp {
			ct := sip.ContentTypeHeader(sdpContentType)
			res.AppendHeader(&ct)
			res.SetBody(s.sdp(c))
		}
	}
	return res
}

// sdp is the UA's session description for c (audio PCMU/PCMA).
func (s *Server) sdp(c *callState) []byte {
	port := 40000 + 2*(c.sdpSession%1000)
	family := "IP4"
	if strings.Contains(s.cfg.Host, ":") {
		family = "IP6"
	}
	return []byte(fmt.Sprintf("v=0\r\n"+
		"o=fakepbx %d %d IN %s %s\r\n"+
		"s=%s\r\n"+
		"c=IN %s %s\r\n"+
		"t=0 0\r\n"+
		"m=audio %d RTP/AVP 0 8\r\n"+
		"a=rtpmap:0 PCMU/8000\r\n"+
		"a=rtpmap:8 PCMA/8000\r\n"+
		"a=sendrecv\r\n", c.sdpSession, c.sdpVersion, family, s.cfg.Host, s.name, family, s.cfg.Host, port))
}

// delivery is a 2xx awaiting its ACK.
type delivery struct {
	c   *callState
	res *sip.Response
}

// awaitAcks waits until every 2xx of ds is ACKed (the ACKs arrive in
// handleAck, or through tx when they share the INVITE's branch),
// retransmitting the missing ones over UDP (RFC 3261 §13.3.1.4: T1, doubling
// up to T2) for at most 64*T1, then records the missing ACKs as errors.
func (s *Server) awaitAcks(tx sip.ServerTransaction, udp bool, ds []delivery, notify chan struct{}) {
	giveUp := time.NewTimer(ackWaitFactor * sip.T1)
	defer giveUp.Stop()
	interval := sip.T1
	retransmit := time.NewTimer(interval)
	defer retransmit.Stop()
	retransmitC := retransmit.C
	if !udp {
		retransmitC = nil
	}
	acks, done := tx.Acks(), tx.Done()
	for {
		var pending []delivery
		s.mu.Lock()
		for _, d := range ds {
			if d.c.ack != nil && !d.c.ack.acked {
				pending = append(pending, d)
			}
		}
		if len(pending) == 0 {
			for _, d := range ds {
				d.c.RetransmissionsAcked = true
			}
			s.bumpLocked()
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		select {
		case <-notify:
		case ack := <-acks:
			s.handleAck(s.newIncoming(ack, nil))
		case <-done:
			// sipgo's Timer L: the transaction cannot send any more.
			acks, done, retransmitC = nil, nil, nil
		case <-retransmitC:
			for _, d := range pending {
				_ = tx.Respond(d.res)
			}
			s.mu.Lock()
			for _, d := range pending {
				d.c.Retransmissions++
			}
			s.bumpLocked()
			s.mu.Unlock()
			interval = min(2*interval, sip.T2)
			retransmit.Reset(interval)
		case <-giveUp.C:
			for _, d := range pending {
				s.addError(d.c, fmt.Sprintf("no ACK for the 2xx (CSeq %d) within %v", d.res.CSeq().SeqNo, ackWaitFactor*sip.T1))
			}
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// handleAck records an ACK that sipgo handed over outside an INVITE
// transaction (an ACK for a 2xx, normally) and checks it against the dialog
// it belongs to. An ACK with a To tag of no dialog, for a Call-ID that no
// INVITE had, is a stray.
func (s *Server) handleAck(in *incoming) {
	r := in.rec
	c := s.findCall(r.CallID, r.ToTag, r.FromTag)
	s.mu.Lock()
	defer s.mu.Unlock()
	if c == nil {
		if _, known := s.inviteCallIDs[r.CallID]; r.ToTag != "" && !known {
			insertBySeq(&s.strays, &s.straySeqs, r, in.seq)
		}
		s.recordLocked(in)
		return
	}
	s.recordLocked(in, c)
	if s.cfg.CheckDialogTarget && c.FinalCode < 300 {
		// The ACK for a 2xx goes to the dialog's target (that of a
		// non-2xx final goes where the INVITE went).
		if problem := s.dialogTargetProblemLocked(in.req, in, c); problem != "" {
			c.Errors = append(c.Errors, problem)
		}
	}
	w := c.ack
	switch {
	case c.FinalCode >= 300:
		// The ACK of a non-2xx final response, outside its transaction.
	case w == nil:
		c.Errors = append(c.Errors, fmt.Sprintf("ACK (CSeq %d) without a 2xx to acknowledge", r.CSeq))
	default:
		cseqOK := r.CSeq == w.cseq
		authOK := sameCredentials(w.auth, in.auth)
		if !cseqOK {
			c.Errors = append(c.Errors, fmt.Sprintf("ACK CSeq %d, the INVITE answered had %d", r.CSeq, w.cseq))
		}
		if !authOK {
			c.Errors = append(c.Errors, fmt.Sprintf("ACK (CSeq %d) credentials %q differ from the INVITE's %q (RFC 3261 §22.1)", r.CSeq, r.Authorization, w.auth))
		}
		if w.initial {
			if c.Acked {
				c.AckCSeqOK, c.AckAuthOK = c.AckCSeqOK && cseqOK, c.AckAuthOK && authOK
			} else {
				c.AckCSeqOK, c.AckAuthOK = cseqOK, authOK
			}
			c.Acked = true
		}
		w.acked = true
		poke(w.notify)
	}
}

// findCall returns the dialog with these Call-ID and tags.
func (s *Server) findCall(callID, localTag, remoteTag string) *callState {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.callIndex[callKey(callID, localTag)]
	if c == nil || c.RemoteTag != remoteTag {
		return nil
	}
	return c
}

// strayMethods only ever come within an INVITE dialog.
var strayMethods = []string{"INVITE", "BYE", "PRACK", "UPDATE", "INFO"}

// strayRequest records a request (not ACK) with a To tag of no dialog as a
// stray, and reports so, if its Call-ID is that of a Call (which gets an
// "unknown dialog" error) or its method only exists within INVITE dialogs.
// Other methods with an unknown To tag (a SUBSCRIBE refresh, a REGISTER
// that copied a To tag) are handled as before the UA existed.
func (s *Server) strayRequest(in *incoming) bool {
	r := in.rec
	s.mu.Lock()
	defer s.mu.Unlock()
	var same []*callState
	for _, c := range s.calls {
		if c.CallID == r.CallID {
			same = append(same, c)
		}
	}
	if len(same) == 0 && !slices.Contains(strayMethods, r.Method) {
		return false
	}
	for _, c := range same {
		c.Errors = append(c.Errors, fmt.Sprintf("unknown dialog: %s (CSeq %d) with From tag %q, To tag %q", r.Method, r.CSeq, r.FromTag, r.ToTag))
	}
	insertBySeq(&s.strays, &s.straySeqs, r, in.seq)
	s.recordLocked(in)
	s.t.Logf("fakepbx %s: %s with To tag %q matches no dialog: 481", s.name, r.Method, r.ToTag)
	return true
}

// handleInDialog answers a request (not ACK or CANCEL) in dialog c.
func (s *Server) handleInDialog(req *sip.Request, tx sip.ServerTransaction, in *incoming, c *callState) {
	r := &in.rec
	s.mu.Lock()
	state := c.State
	var target string
	if s.cfg.CheckDialogTarget {
		target = s.dialogTargetProblemLocked(req, in, c)
	}
	s.mu.Unlock()
	var res *sip.Response
	var problem string
	switch {
	case state == StateTerminated || state == StateCancelled:
		res = s.newResponse(req, 481, "")
		problem = fmt.Sprintf("%s (CSeq %d) in a %s dialog: 481", r.Method, r.CSeq, state)
	case target != "":
		res = s.newResponse(req, 404, "Not Found (not this dialog's target)")
		problem = target + ": 404"
		s.t.Logf("fakepbx %s: %s", s.name, problem)
	case !in.cseqOK:
		res = s.newResponse(req, 500, "CSeq out of order")
		problem = fmt.Sprintf("%s CSeq %d is not above the dialog's last: 500", r.Method, r.CSeq)
		s.t.Logf("fakepbx %s: %s", s.name, problem)
	case s.cfg.Call.ChallengeInDialog:
		res = s.authenticate(req, in)
	}
	s.mu.Lock()
	if problem != "" {
		c.Errors = append(c.Errors, problem)
	}
	s.recordLocked(in, c)
	s.mu.Unlock()

	var after func()
	if res == nil {
		res, after = s.inDialogAnswer(req, tx, in, c, state)
	}
	err := s.respond(req, tx, in.key, res)
	switch {
	case after != nil && err == nil:
		after()
	case req.IsInvite() && err == nil:
		s.awaitAck(req, tx, c)
	}
}

// inDialogAnswer acts on an accepted in-dialog request and returns its
// response, and what to do once it is sent.
func (s *Server) inDialogAnswer(req *sip.Request, tx sip.ServerTransaction, in *incoming, c *callState, state string) (*sip.Response, func()) {
	r := &in.rec
	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.Method {
	case sip.BYE:
		if state == StateEarly {
			// The caller may end an early dialog with BYE: its INVITE then
			// gets 487.
			it := c.inv
			return s.newResponse(req, 200, ""), func() { s.finalize(it, 487, nil) }
		}
		c.State = StateTerminated
		s.bumpLocked()
		return s.newResponse(req, 200, ""), nil

	case sip.INVITE:
		if state == StateEarly {
			return s.newResponse(req, 491, ""), nil
		}
		s.targetRefreshLocked(c, req)
		c.sdpVersion++
		res := s.uaResponse(req, c, 200, true)
		w := &ackWait{cseq: r.CSeq, auth: in.auth, notify: make(chan struct{}, 1)}
		c.ack = w
		udp := r.Transport == "UDP"
		return res, func() { s.awaitAcks(tx, udp, []delivery{{c: c, res: res}}, w.notify) }

	case sip.PRACK:
		it := c.inv
		if !s.cfg.Call.Reliable || c.Fork != 0 {
			c.Errors = append(c.Errors, "PRACK without a reliable provisional response")
			return s.newResponse(req, 481, ""), nil
		}
		rack := ""
		if h := req.GetHeader("RAck"); h != nil {
			rack = strings.Join(strings.Fields(h.Value()), " ")
		}
		want := fmt.Sprintf("1 %d INVITE", c.InviteCSeq)
		ok := strings.EqualFold(rack, want)
		if !ok {
			c.Errors = append(c.Errors, fmt.Sprintf("PRACK RAck %q, want %q", rack, want))
		}
		if !it.pracked {
			c.PRACKOK = ok
		} else {
			c.PRACKOK = c.PRACKOK && ok
		}
		s.bumpLocked()
		return s.newResponse(req, 200, ""), func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if !it.pracked {
				it.pracked = true
				close(it.prack)
			}
		}

	case sip.UPDATE:
		s.targetRefreshLocked(c, req)
		if ct := req.ContentType(); ct != nil && strings.HasPrefix(strings.ToLower(ct.Value()), sdpContentType) {
			c.sdpVersion++
			return s.uaResponse(req, c, 200, true), nil
		}
		return s.uaResponse(req, c, 200, false), nil
	}
	// INFO, MESSAGE, NOTIFY, REFER, OPTIONS and anything else.
	return s.newResponse(req, 200, ""), nil
}

// targetRefreshLocked takes a new remote target from a target refresh
// request or response (RFC 3261 §12.2).
func (s *Server) targetRefreshLocked(c *callState, m sip.Message) {
	var h *sip.ContactHeader
	switch m := m.(type) {
	case *sip.Request:
		h = m.Contact()
	case *sip.Response:
		h = m.Contact()
	}
	if h == nil {
		return
	}
	c.target = *h.Address.Clone()
	c.refreshStrings()
	s.bumpLocked()
}

// normCredential gives an Authorization or Proxy-Authorization header a
// form that compares equal for the same credentials: the header name and
// its digest parameters, sorted (the raw value when unparsable).
func normCredential(name, value string) string {
	p, err := ParseDigestParams(value)
	if err != nil {
		return strings.ToLower(name) + ": " + strings.TrimSpace(value)
	}
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(strings.ToLower(name) + ": Digest")
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%q", k, p[k])
	}
	return b.String()
}

// sameCredentials reports whether got holds the same credentials as want
// (in any order); anything goes when want is empty.
func sameCredentials(want, got []string) bool {
	if len(want) == 0 {
		return true
	}
	a, b := slices.Clone(want), slices.Clone(got)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// Calls returns a copy of every dialog of the UA (and of every
// authenticated INVITE that got no 2xx), in creation order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.callsLocked()
}

func (s *Server) callsLocked() []Call {
	out := make([]Call, len(s.calls))
	for i, c := range s.calls {
		cp := c.Call
		cp.RouteSet = slices.Clone(c.RouteSet)
		cp.Requests = cloneRequests(c.Requests)
		cp.Errors = slices.Clone(c.Errors)
		out[i] = cp
	}
	return out
}

// WaitCall waits until cond, called with a copy of Calls() after every
// change, returns true, and returns that copy. It fails the test after
// timeout.
func (s *Server) WaitCall(t testing.TB, timeout time.Duration, cond func([]Call) bool) []Call {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		calls := s.callsLocked()
		changed := s.changed
		s.mu.Unlock()
		if cond(calls) {
			return calls
		}
		select {
		case <-changed:
		case <-timer.C:
			var b strings.Builder
			for _, c := range calls {
				fmt.Fprintf(&b, "\n  %s tag %s fork %d: %s final %d acked=%v ackCSeqOK=%v ackAuthOK=%v prackOK=%v cancelled=%v requests=%v errors=%q",
					c.CallID, c.LocalTag, c.Fork, c.State, c.FinalCode, c.Acked, c.AckCSeqOK, c.AckAuthOK, c.PRACKOK, c.Cancelled, methodsOf(c.Requests), c.Errors)
			}
			t.Fatalf("fakepbx %s: call condition not met within %v; calls:%s", s.name, timeout, b.String())
			return calls
		}
	}
}

func methodsOf(reqs []Request) []string {
	out := make([]string, len(reqs))
	for i, r := range reqs {
		out[i] = r.Method + "/" + strconv.FormatUint(uint64(r.CSeq), 10)
	}
	return out
}

// Strays returns a copy of the requests that carried a To tag matching no
// dialog of the UA (answered 481; ACKs are not answered), in order: a sign
// of a proxy routing in-dialog requests wrongly.
func (s *Server) Strays() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneRequests(s.strays)
}

// InDialogRequest is a request the UA sends into one of its dialogs.
type InDialogRequest struct {
	CallID string
	// LocalTag selects the dialog among those of CallID (forks); empty
	// picks the first confirmed one, else the first early one, else the
	// first.
	LocalTag    string
	Method      sip.RequestMethod
	Body        []byte
	ContentType string
	Headers     []sip.Header
}

// SendInDialog sends a request into a dialog as its UAS side: Request-URI
// the remote target, Route the route set (top Record-Route first), sent to
// the first route when it has lr (over the transport its transport
// parameter names, UDP by default; from the fake's own UDP socket), to the
// remote target when the route set is empty, and as a strict router wants
// otherwise (RFC 3261 §12.2.1.1); From the fake's side with its tag, To the
// caller's with its tag, the dialog's Call-ID, the next local CSeq,
// Max-Forwards 70, a Via of the fake; an INVITE also gets Contact and an
// SDP offer unless Body is set. It waits (at most 10s) for the final
// response and returns it (nil without one); a 2xx to an INVITE is ACKed
// through the same route set (and re-ACKed if retransmitted). A BYE ends
// the dialog whatever its response. The test fails if no such dialog
// exists.
func (s *Server) SendInDialog(t testing.TB, r InDialogRequest) *sip.Response {
	t.Helper()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		t.Fatalf("fakepbx %s: SendInDialog after the fake stopped", s.name)
		return nil
	}
	c := s.pickCall(r.CallID, r.LocalTag)
	if c == nil {
		s.mu.Unlock()
		t.Fatalf("fakepbx %s: no dialog with Call-ID %q and local tag %q", s.name, r.CallID, r.LocalTag)
		return nil
	}
	c.LocalCSeq++
	seq := c.LocalCSeq
	build := func(m sip.RequestMethod) (*sip.Request, error) { return s.inDialogRequest(c, m, seq) } // s.mu held
	req, err := build(r.Method)
	if err == nil && r.Method == sip.INVITE && r.Body == nil {
		c.sdpVersion++
		r.Body, r.ContentType = s.sdp(c), sdpContentType
	}
	if r.Method == sip.BYE {
		c.State = StateTerminated // RFC 3261 §15.1.1, whatever the response
	}
	s.bumpLocked()
	s.handlerWG.Add(1)
	s.mu.Unlock()
	defer s.handlerWG.Done()
	if err != nil {
		t.Fatalf("fakepbx %s: %s into %s: %v", s.name, r.Method, r.CallID, err)
		return nil
	}
	for _, h := range r.Headers {
		req.AppendHeader(h)
	}
	if r.ContentType != "" {
		ct := sip.ContentTypeHeader(r.ContentType)
		req.AppendHeader(&ct)
	}
	req.SetBody(r.Body)

	ctx, cancel := context.WithTimeout(s.ctx, inDialogDeadline)
	defer cancel()
	tx, err := s.client.TransactionRequest(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		t.Errorf("fakepbx %s: sending %s into %s: %v", s.name, r.Method, r.CallID, err)
		return nil
	}
	var final *sip.Response
wait:
	for {
		select {
		case res := <-tx.Responses():
			if !res.IsProvisional() {
				final = res
				break wait
			}
		case <-tx.Done():
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	if final == nil || r.Method != sip.INVITE || !final.IsSuccess() {
		tx.Terminate()
		if final == nil {
			t.Logf("fakepbx %s: no final response to %s (CSeq %d) into %s: %v", s.name, r.Method, seq, r.CallID, tx.Err())
		}
		return final
	}

	// The 2xx to our re-INVITE: refresh the target, then ACK through the
	// route set.
	s.mu.Lock()
	s.targetRefreshLocked(c, final)
	ack, err := build(sip.ACK)
	s.mu.Unlock()
	if err != nil {
		t.Errorf("fakepbx %s: ACK: %v", s.name, err)
		return final
	}
	ack.SetBody(nil)
	if err := s.client.WriteRequest(ack, sipgo.ClientRequestAddVia); err != nil {
		t.Errorf("fakepbx %s: sending ACK into %s: %v", s.name, r.CallID, err)
		return final
	}
	// sipgo's INVITE client transaction passes 2xx retransmissions to this
	// hook until Timer M (or the fake stops): ACK each again.
	tx.OnRetransmission(func(res *sip.Response) {
		if res.IsSuccess() {
			_ = s.client.WriteRequest(ack.Clone(), func(*sipgo.Client, *sip.Request) error { return nil })
		}
	})
	return final
}

// pickCall selects a dialog for SendInDialog. s.mu must be held.
func (s *Server) pickCall(callID, localTag string) *callState {
	if localTag != "" {
		return s.callIndex[callKey(callID, localTag)]
	}
	var early, any *callState
	for _, c := range s.calls {
		if c.CallID != callID {
			continue
		}
		switch {
		case c.State == StateConfirmed:
			return c
		case c.State == StateEarly && early == nil:
			early = c
		case any == nil:
			any = c
		}
	}
	if early != nil {
		return early
	}
	return any
}

// inDialogRequest builds a request of the UA in dialog c, without Via (the
// client adds it). s.mu must be held.
func (s *Server) inDialogRequest(c *callState, method sip.RequestMethod, seq uint32) (*sip.Request, error) {
	ruri, routes, hop := c.target, c.routes, c.target
	switch {
	case len(c.routes) == 0:
	case hasURIParam(c.routes[0], "lr"):
		hop = c.routes[0]
	default:
		// A strict router: it is the Request-URI, the remote target the
		// last route (RFC 3261 §12.2.1.1).
		hop = c.routes[0]
		ruri = c.routes[0]
		ruri.Headers = nil
		routes = append(slices.Clone(c.routes[1:]), c.target)
	}
	transport := "UDP"
	if v, ok := uriParam(hop, "transport"); ok {
		transport = strings.ToUpper(v)
	}
	if transport != "UDP" && transport != "TCP" {
		return nil, fmt.Errorf("next hop %s: transport %s is not supported", hop.String(), transport)
	}
	if hop.Scheme == "sips" {
		return nil, fmt.Errorf("next hop %s: sips is not supported", hop.String())
	}
	port := hop.Port
	if port == 0 {
		port = defaultSIPPort
	}

	req := sip.NewRequest(method, *ruri.Clone())
	for _, r := range routes {
		req.AppendHeader(&sip.RouteHeader{Address: *r.Clone()})
	}
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	from := &sip.FromHeader{DisplayName: c.local.DisplayName, Address: *c.local.Address.Clone(), Params: sip.NewParams()}
	from.Params.Add("tag", c.LocalTag)
	to := &sip.ToHeader{DisplayName: c.remote.DisplayName, Address: *c.remote.Address.Clone(), Params: sip.NewParams()}
	to.Params.Add("tag", c.RemoteTag)
	callID := sip.CallIDHeader(c.CallID)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&callID)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: method})
	if method == sip.INVITE {
		req.AppendHeader(s.contact(c.transport))
	}
	req.AppendHeader(sip.NewHeader("User-Agent", s.serverHeader()))
	req.SetTransport(transport)
	req.SetDestination(net.JoinHostPort(strings.Trim(hop.Host, "[]"), strconv.Itoa(port)))
	if transport == "UDP" {
		// From the fake's own socket, so that the proxy sees the PBX's
		// address. (Over TCP sipgo connects anew from another port.)
		req.Laddr = sip.Addr{IP: net.ParseIP(s.cfg.Host), Port: s.port}
	}
	return req, nil
}

func uriParam(u sip.Uri, name string) (string, bool) {
	for _, kv := range u.UriParams {
		if strings.EqualFold(kv.K, name) {
			return kv.V, true
		}
	}
	return "", false
}

func hasURIParam(u sip.Uri, name string) bool {
	_, ok := uriParam(u, name)
	return ok
}

// HangUp sends BYE into the dialog of callID (see SendInDialog) and returns
// the status of its final response (0 without one).
func (s *Server) HangUp(t testing.TB, callID string) int {
	t.Helper()
	return statusOf(s.SendInDialog(t, InDialogRequest{CallID: callID, Method: sip.BYE}))
}

// ReInvite sends a re-INVITE with an SDP offer into the dialog of callID,
// ACKs a 2xx, and returns the final status (0 without one).
func (s *Server) ReInvite(t testing.TB, callID string) int {
	t.Helper()
	return statusOf(s.SendInDialog(t, InDialogRequest{CallID: callID, Method: sip.INVITE}))
}

// Notify sends a NOTIFY (Event: refer, a sipfrag "SIP/2.0 200 OK" body)
// into the dialog of callID and returns the final status (0 without one).
func (s *Server) Notify(t testing.TB, callID string) int {
	t.Helper()
	return statusOf(s.SendInDialog(t, InDialogRequest{
		CallID: callID, Method: sip.NOTIFY,
		Headers:     []sip.Header{sip.NewHeader("Event", "refer"), sip.NewHeader("Subscription-State", "terminated;reason=noresource")},
		ContentType: "message/sipfrag;version=2.0", Body: []byte("SIP/2.0 200 OK\r\n"),
	}))
}

func statusOf(res *sip.Response) int {
	if res == nil {
		return 0
	}
	return res.StatusCode
}
