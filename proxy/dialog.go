package proxy

import (
	"hash/maphash"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// dialogKey identifies a dialog by Call-ID and the tags of its two ends:
// the caller (client side, the From tag of the INVITE) and the callee
// (upstream side, the To tag of its 2xx). Forked 2xx responses with other To
// tags are other dialogs.
type dialogKey struct {
	callID    string
	callerTag string
	calleeTag string
}

// dialog is what authproxy remembers of an established call: which
// upstream it runs through and where the client is, so that requests the
// upstream sends into the dialog (callee BYE, re-INVITE, NOTIFY) reach the
// client, and so that the ACK for the 2xx carries the INVITE's credentials
// (RFC 3261 §22.1).
type dialog struct {
	key dialogKey
	up  *upstream
	// clientTransport and clientAddr are where the INVITE came from:
	// requests toward the client are sent there (symmetric routing, which
	// also crosses a NAT the client is behind).
	clientTransport string
	clientAddr      string
	// upstreamTarget is where the client's requests in the dialog go: the
	// target that answered its INVITE (a call the client placed), or the
	// target of the upstream the INVITE came from (a call to a registered
	// client); zero when that one is none of the upstream's targets (then
	// the upstream's targets are used). In-dialog requests never
	// re-resolve and never fail over.
	upstreamTarget resolve.Target
	// upstreamAddr is the address requests from the upstream side of the
	// dialog are accepted from, besides the upstream's AcceptFrom
	// prefixes: where its INVITE was sent or came from. Another upstream,
	// or another address of the same one, must not be able to end or
	// redirect the call.
	upstreamAddr netip.Addr
	// inviteAuth are the Authorization/Proxy-Authorization values the
	// initial INVITE was accepted with; the ACK for its 2xx repeats them.
	inviteAuth []authAnswer
	// inviteCSeq is the client's CSeq number of the INVITE (initial or
	// re-INVITE) whose 2xx was last relayed, and inviteUpCSeq the number the
	// upstream saw for it. The ACK for that 2xx carries inviteCSeq and
	// must reach the upstream as inviteUpCSeq, whatever the offset has
	// become meanwhile (a challenged BYE racing the ACK).
	inviteCSeq, inviteUpCSeq uint32
	// inviteBranch is hashKey of that INVITE's top Via branch: the ACK
	// for a non-2xx final to it carries that branch (RFC 3261 §17.1.1.3),
	// the ACK for its 2xx a new one (§13.2.2.4).
	inviteBranch uint64
	lastUse      time.Time
	// oneAuth holds inviteAuth when it is a single answer (the usual
	// case), so that it needs no allocation of its own (compact).
	oneAuth [1]authAnswer
}

// compact gives d its own copy of the strings it keeps, packed into one
// allocation, and its answers a slice of its own. A dialog outlives the
// request it was recorded from by minutes or hours, and its strings would
// otherwise be a dozen small allocations (Call-ID and tags parsed from
// the messages, the client's address, the credentials) scattered through
// heap spans the request's short-lived garbage shares: with 10,000 calls
// up, those half-empty spans held more memory than the dialogs.
func (d *dialog) compact() {
	auth := d.inviteAuth
	if len(auth) == 1 {
		d.oneAuth[0] = auth[0]
		d.inviteAuth = d.oneAuth[:]
	} else if len(auth) > 1 {
		d.inviteAuth = append([]authAnswer(nil), auth...)
	}
	var buf [8]*string
	fields := append(buf[:0], &d.key.callID, &d.key.callerTag, &d.key.calleeTag, &d.clientAddr)
	for i := range d.inviteAuth {
		fields = append(fields, &d.inviteAuth[i].key, &d.inviteAuth[i].value)
	}
	packStrings(fields)
}

// packStrings copies the strings fields point to into one new allocation
// and points them at their copies.
func packStrings(fields []*string) {
	n := 0
	for _, f := range fields {
		n += len(*f)
	}
	var b strings.Builder
	b.Grow(n)
	for _, f := range fields {
		b.WriteString(*f)
	}
	all := b.String()
	off := 0
	for _, f := range fields {
		l := len(*f)
		*f = all[off : off+l]
		off += l
	}
}

// fromItsUpstream reports whether a request from src may enter the dialog
// from the upstream side: from its upstream address, or from one of its
// upstream's AcceptFrom prefixes (as configured when the dialog began).
func (d *dialog) fromItsUpstream(src netip.Addr) bool {
	if d.upstreamAddr.IsValid() && src == d.upstreamAddr {
		return true
	}
	for _, p := range d.up.AcceptFrom {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// dialogTable holds established dialogs. Entries end at a 2xx to BYE or
// after the idle bound without any request in the dialog.
//
// A dialog ended by its BYE is kept apart for a while, for the caller's
// ACK alone: the ACK for the last 2xx may reach authproxy after a BYE the
// caller sent later (UDP reorders; sipgo handles each request of a TCP
// connection on a goroutine of its own), and must still reach the
// upstream as the ACK of the INVITE it saw, with that INVITE's CSeq
// number and credentials (RFC 3261 §22.1).
//
// The table is split by Call-ID into shards with a lock each, so that the
// 30 s sweep holds one shard at a time: with 100,000 dialogs a single lock
// was held about 9 ms while requests in every dialog waited for it.
type dialogTable struct {
	seed   maphash.Seed
	shards [dialogShards]dialogShard
}

const dialogShards = 32

type dialogShard struct {
	mu      sync.Mutex
	entries map[dialogKey]*dialog
	ended   map[dialogKey]endedDialog
}

// endedDialog is a dialog its BYE ended, kept for a late ACK until until.
type endedDialog struct {
	d     *dialog
	until time.Time
}

// endedAckWindow is how long an ended dialog still takes the ACK for its
// last 2xx: the callee retransmits a 2xx, and the caller ACKs each copy,
// for 64*T1 (RFC 3261 §13.3.1.4).
var endedAckWindow = 64 * sip.T1

func newDialogTable() *dialogTable {
	t := &dialogTable{seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i] = dialogShard{entries: map[dialogKey]*dialog{}, ended: map[dialogKey]endedDialog{}}
	}
	return t
}

// shard is the shard holding k's dialog.
func (t *dialogTable) shard(k dialogKey) *dialogShard {
	return &t.shards[maphash.String(t.seed, k.callID)%dialogShards]
}

// put stores d (replacing an entry with the same key: a retransmitted 2xx),
// compacted.
func (t *dialogTable) put(d *dialog) {
	d.compact()
	s := t.shard(d.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[d.key] = d
}

// fromClient finds the dialog a client request belongs to (From tag =
// caller tag, To tag = callee tag) and marks it used.
func (t *dialogTable) fromClient(callID, fromTag, toTag string, now time.Time) *dialog {
	return t.touch(dialogKey{callID: callID, callerTag: fromTag, calleeTag: toTag}, now)
}

// fromUpstream finds the dialog an upstream request belongs to (From tag =
// callee tag, To tag = caller tag) and marks it used.
func (t *dialogTable) fromUpstream(callID, fromTag, toTag string, now time.Time) *dialog {
	return t.touch(dialogKey{callID: callID, callerTag: toTag, calleeTag: fromTag}, now)
}

func (t *dialogTable) touch(k dialogKey, now time.Time) *dialog {
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.entries[k]
	if !ok {
		return nil
	}
	d.lastUse = now
	cp := *d
	return &cp
}

// remove ends a dialog.
func (t *dialogTable) remove(k dialogKey) {
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.entries, k)
}

// end ends a dialog at its BYE, keeping it for a late ACK from the caller
// (ackFromClient) until endedAckWindow after now.
func (t *dialogTable) end(k dialogKey, now time.Time) {
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.entries[k]; ok {
		delete(s.entries, k)
		s.ended[k] = endedDialog{d: d, until: now.Add(endedAckWindow)}
	}
}

// ackFromClient finds the dialog a caller's ACK belongs to: an established
// one (marked used), else one its BYE ended within endedAckWindow.
func (t *dialogTable) ackFromClient(callID, fromTag, toTag string, now time.Time) *dialog {
	k := dialogKey{callID: callID, callerTag: fromTag, calleeTag: toTag}
	if d := t.touch(k, now); d != nil {
		return d
	}
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.ended[k]
	if !ok || now.After(e.until) {
		return nil
	}
	cp := *e.d
	return &cp
}

// sentByClient reports whether a request with these identifiers is one
// a dialog's client sends toward its upstream (route then finds the
// dialog with fromClient, or, its BYE having ended it, not at all): its
// tags name an established dialog from the caller's side, or one ended
// within endedAckWindow, and no dialog from the upstream's side (route
// looks that one up first: such a request goes toward the client). It
// marks nothing used and copies nothing: the fast lane asks it of every
// in-dialog request it is offered (fastlane_dialog.go).
func (t *dialogTable) sentByClient(callID, fromTag, toTag string, now time.Time) bool {
	return t.peekFromClient(callID, fromTag, toTag, now, func(*dialog) bool { return true })
}

// acksLast2xx reports whether an ACK with these identifiers, CSeq number
// seq and top Via branch hashed to branch (hashKey) is a dialog's
// client's ACK for the 2xx last relayed in it (sentByClient's dialog,
// whose inviteCSeq is seq and whose INVITE's branch is another: an ACK
// for a non-2xx final carries its INVITE's branch, RFC 3261 §17.1.1.3,
// and a rejected re-INVITE's ACK its higher CSeq). Like sentByClient it
// marks nothing used and copies nothing (fastlane_ack.go).
func (t *dialogTable) acksLast2xx(callID, fromTag, toTag string, seq uint32, branch uint64, now time.Time) bool {
	return t.peekFromClient(callID, fromTag, toTag, now, func(d *dialog) bool {
		return d.inviteCSeq == seq && d.inviteBranch != branch
	})
}

// peekFromClient reports whether the dialog a client's request with these
// identifiers goes in toward the upstream (sentByClient) exists and
// passes test, which runs under the shard's lock.
func (t *dialogTable) peekFromClient(callID, fromTag, toTag string, now time.Time, test func(*dialog) bool) bool {
	k := dialogKey{callID: callID, callerTag: fromTag, calleeTag: toTag}
	s := t.shard(k) // the Call-ID's: the upstream side's key is in it too
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[dialogKey{callID: callID, callerTag: toTag, calleeTag: fromTag}]; ok {
		return false
	}
	if d, ok := s.entries[k]; ok {
		return test(d)
	}
	e, ok := s.ended[k]
	return ok && !now.After(e.until) && test(e.d)
}

// sweep ends dialogs idle for longer than idle, and forgets ended ones
// past their ACK window, one shard at a time.
func (t *dialogTable) sweep(now time.Time, idle time.Duration) {
	for i := range t.shards {
		t.shards[i].sweep(now, idle)
	}
}

func (s *dialogShard) sweep(now time.Time, idle time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, d := range s.entries {
		if now.Sub(d.lastUse) > idle {
			delete(s.entries, k)
		}
	}
	for k, e := range s.ended {
		if now.After(e.until) {
			delete(s.ended, k)
		}
	}
}

// len is the number of established dialogs.
func (t *dialogTable) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.entries)
		s.mu.Unlock()
	}
	return n
}

// recentFinals remembers INVITE transactions whose non-2xx final response
// authproxy relayed, for a while: on TCP the client's ACK for it arrives as
// a request of its own (sipgo has already ended the server transaction), and
// it must be absorbed, never forwarded: the upstream leg was ACKed hop by hop
// by our client transaction (RFC 3261 §17.1.1.3).
type recentFinals struct {
	mu      sync.Mutex
	entries map[string]time.Time // top Via branch of the client's INVITE -> expiry
}

func (r *recentFinals) add(branch string, until time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.entries == nil {
		r.entries = map[string]time.Time{}
	}
	r.entries[branch] = until
}

func (r *recentFinals) has(branch string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.entries[branch]
	return ok
}

func (r *recentFinals) sweep(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, until := range r.entries {
		if now.After(until) {
			delete(r.entries, k)
		}
	}
}
