package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
)

// inviteTx is the INVITE server transaction (RFC 3261 §17.2.1, with RFC
// 6026's Accepted state) of an initial INVITE a UDP client sent, which a
// UDP listener's socket takes from sipgo (laneSocket.takeInvite): the
// forwarding answers it as it answers sipgo's, but it has no FSM
// goroutine, no timer and no channel of its own. Its timers are
// deadlines in the lane's INVITE table, which the lane's sweeper checks
// (inviteTable.sweep, every laneSweep):
//
//   - Timer 1xx (sipgo's sip.Timer_1xx, §17.2.1's "200 ms"): a 100
//     Trying when nothing else went out by then, or at the client's first
//     retransmission, whichever comes first;
//   - Timer G (T1 doubling up to T2) retransmits a non-2xx final response
//     until the client's ACK, Timer H (64×T1) at most;
//   - Timer I (T4) absorbs the ACK's retransmissions once it came;
//   - Timer L (RFC 6026 §8.7, bounded by T4 as TuneSIPStack bounds
//     sipgo's) keeps the Accepted transaction for the 2xx retransmissions
//     the forwarding relays and to absorb the INVITE's.
//
// The client's retransmissions of the INVITE, its ACK for a non-2xx final
// response and its CANCEL (§9.2) are matched to it by the socket
// (serverTxKey) before sipgo sees them. Done never closes: a UDP client
// cannot go away.
type inviteTx struct {
	key  string
	sock *laneSocket
	src  netip.AddrPort // where the INVITE came from (unmapped): the responses go there (RFC 3581 §4)
	req  *sip.Request   // the INVITE, read only: the 100 and the 487 are built from it
	tbl  *inviteTable
	raw  []byte // the INVITE's datagram, during HandleInvite only

	// due is the earliest deadline of the transaction's timers, in Unix
	// nanoseconds (0: none): the sweeper reads it holding only the
	// table's lock.
	due atomic.Int64

	mu        sync.Mutex
	state     inviteTxState
	last      []byte // the last provisional response sent (Proceeding), the final one (Completed)
	responded bool   // a response went out: no 100 of our own
	cancelled bool
	dropped   bool // out of the table: terminated
	hooks     []sip.FnTxCancel
	tryingAt  int64         // Timer 1xx, Unix nanoseconds
	gap       time.Duration // Timer G's current interval
	gAt, hAt  int64         // Timers G and H, Unix nanoseconds
	endAt     int64         // Timer I or L, Unix nanoseconds
}

// inviteTxState is an INVITE server transaction's state (RFC 3261
// Figure 7, RFC 6026 Figure 5).
type inviteTxState uint8

const (
	inviteProceeding inviteTxState = iota
	inviteCompleted                // a non-2xx final response sent, no ACK yet
	inviteConfirmed                // its ACK came
	inviteAccepted                 // a 2xx sent
)

var _ sip.ServerTransaction = (*inviteTx)(nil)

// errInviteTxFinal is what Respond returns for a provisional response or
// a 2xx after a non-2xx final response, or a second non-2xx final one.
var errInviteTxFinal = errors.New("INVITE already has its final response")

// inviteTable holds the lane's INVITE server transactions by key
// (serverTxKey), from the INVITE's first copy until their timers are over.
type inviteTable struct {
	mu    sync.Mutex
	byKey map[string]*inviteTx
}

func newInviteTable() *inviteTable { return &inviteTable{byKey: map[string]*inviteTx{}} }

// claim registers tx under its key and returns nil, or returns the
// transaction already registered under it (tx is then not registered).
func (t *inviteTable) claim(tx *inviteTx) *inviteTx {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.byKey[tx.key]; old != nil {
		return old
	}
	t.byKey[tx.key] = tx
	return nil
}

// get returns the transaction registered under key, nil if none.
func (t *inviteTable) get(key string) *inviteTx {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byKey[key]
}

// len is the number of transactions held.
func (t *inviteTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byKey)
}

// sweep runs the timers due at now, and returns buf (emptied) for the
// next sweep.
func (t *inviteTable) sweep(now time.Time, buf []*inviteTx) []*inviteTx {
	n := now.UnixNano()
	t.mu.Lock()
	for _, tx := range t.byKey {
		if at := tx.due.Load(); at != 0 && n >= at {
			buf = append(buf, tx)
		}
	}
	t.mu.Unlock()
	for _, tx := range buf {
		tx.tick(now)
	}
	clear(buf)
	return buf[:0]
}

// newInviteTx returns the transaction of req, received at now from src on
// sock, not registered yet.
func newInviteTx(t *inviteTable, key string, req *sip.Request, sock *laneSocket, src netip.AddrPort, now time.Time) *inviteTx {
	tx := &inviteTx{key: key, sock: sock, src: src, req: req, tbl: t}
	tx.tryingAt = now.Add(sip.Timer_1xx).UnixNano()
	tx.due.Store(tx.tryingAt)
	return tx
}

// Key is the INVITE's server transaction key (RFC 3261 §17.2.3).
func (tx *inviteTx) Key() string { return tx.key }

// Respond sends res to the client (§17.2.1): provisional responses while
// Proceeding, each remembered for the INVITE's retransmissions; a 2xx, and
// every later 2xx (retransmissions, other forks), until Timer L; one
// non-2xx final response, retransmitted on Timer G until the ACK. A
// response the state does not allow is not sent: an error says why
// (sip.ErrTransactionCanceled for a 2xx after the client's CANCEL).
func (tx *inviteTx) Respond(res *sip.Response) error {
	buf := msgBufs.Get().(*bytes.Buffer)
	defer msgBufs.Put(buf)
	buf.Reset()
	res.StringWrite(buf)
	return tx.respond(res.StatusCode, buf.Bytes())
}

// RespondRaw sends data, a response already serialised (its status line
// first), as Respond sends a parsed one (laneTx); final is implied by the
// status. data may be reused once it returns.
func (tx *inviteTx) RespondRaw(data []byte, _ bool) error {
	status, ok := statusOf(data)
	if !ok {
		return errors.New("send response: no status line")
	}
	return tx.respond(status, data)
}

// respond sends data, a response of status, as Respond says.
func (tx *inviteTx) respond(status int, data []byte) error {
	if len(data) > sip.UDPMTUSize-200 {
		return sip.ErrUDPMTUCongestion
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if err := tx.refuses(status); err != nil {
		return err
	}
	now := time.Now()
	switch {
	case status < 200:
		tx.last = append(tx.last[:0], data...)
	case status < 300:
		tx.accept(now)
	default:
		tx.complete(data, now)
	}
	tx.responded = true
	tx.schedule()
	return tx.write(data)
}

// statusOf returns the status code of the response data ("SIP/2.0 NNN").
func statusOf(data []byte) (int, bool) {
	const prefix = "SIP/2.0 "
	if len(data) < len(prefix)+3 || string(data[:len(prefix)]) != prefix {
		return 0, false
	}
	code := 0
	for _, c := range data[len(prefix) : len(prefix)+3] {
		if !isDigit(c) {
			return 0, false
		}
		code = code*10 + int(c-'0')
	}
	return code, code >= 100
}

// Raw returns the datagram the INVITE was parsed from (laneTx): the
// socket's read buffer, valid only during HandleInvite, nil afterwards.
func (tx *inviteTx) Raw() []byte { return tx.raw }

// CanRespondRaw reports whether the client's address is known (laneTx).
func (tx *inviteTx) CanRespondRaw() bool { return tx.src.IsValid() }

// reliable reports false: a UDP client (laneTx).
func (tx *inviteTx) reliable() bool { return false }

// gone reports false: a UDP client cannot go away (laneTx).
func (tx *inviteTx) gone() bool { return false }

// refuses returns why a response of status cannot be sent in the current
// state (tx.mu held), nil if it can.
func (tx *inviteTx) refuses(status int) error {
	switch {
	case tx.dropped:
		return sip.ErrTransactionTerminated
	case tx.state == inviteProceeding:
		return nil
	case tx.state == inviteAccepted && status >= 200 && status < 300:
		return nil // RFC 6026 §7.1: the TU's 2xx retransmissions go out
	case tx.cancelled:
		return sip.ErrTransactionCanceled
	}
	return errInviteTxFinal
}

// accept enters Accepted (tx.mu held) at the first 2xx: Timer L starts.
func (tx *inviteTx) accept(now time.Time) {
	if tx.state == inviteAccepted {
		return
	}
	tx.state = inviteAccepted
	tx.last = nil
	tx.endAt = now.Add(min(sip.Timer_L, sip.T4)).UnixNano()
}

// complete enters Completed (tx.mu held) with the final response raw:
// Timers G and H start (§17.2.1).
func (tx *inviteTx) complete(raw []byte, now time.Time) {
	tx.state = inviteCompleted
	tx.last = append(tx.last[:0], raw...)
	tx.gap = sip.T1
	tx.gAt = now.Add(tx.gap).UnixNano()
	tx.hAt = now.Add(64 * sip.T1).UnixNano()
}

// schedule sets due to the earliest of the current state's timers (tx.mu
// held).
func (tx *inviteTx) schedule() {
	var at int64
	switch tx.state {
	case inviteProceeding:
		if !tx.responded {
			at = tx.tryingAt
		}
	case inviteCompleted:
		at = min(tx.gAt, tx.hAt)
	default:
		at = tx.endAt
	}
	if tx.dropped {
		at = 0
	}
	tx.due.Store(at)
}

// write sends data to the client (tx.mu held).
func (tx *inviteTx) write(data []byte) error {
	if _, err := tx.sock.WriteTo(data, net.UDPAddrFromAddrPort(tx.src)); err != nil {
		return fmt.Errorf("send response: %w", err)
	}
	return nil
}

// trying sends a 100 Trying of our own (tx.mu held): §17.2.1, when the
// forwarding has sent nothing within 200 ms.
func (tx *inviteTx) trying() {
	buf := msgBufs.Get().(*bytes.Buffer)
	defer msgBufs.Put(buf)
	buf.Reset()
	sip.NewResponseFromRequest(tx.req, sip.StatusTrying, "Trying", nil).StringWrite(buf)
	tx.last = append(tx.last[:0], buf.Bytes()...)
	tx.responded = true
	tx.schedule()
	if err := tx.write(buf.Bytes()); err != nil {
		tx.sock.p.log.Debug("cannot send 100 Trying", "error", err)
	}
}

// retransmitted answers a retransmission of the INVITE (§17.2.1): with the
// last provisional response while Proceeding (a 100 of our own if none
// went out yet), with the final response while Completed; absorbed once
// Confirmed or Accepted (RFC 6026 §7.1).
func (tx *inviteTx) retransmitted() {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.dropped {
		return
	}
	switch tx.state {
	case inviteProceeding:
		if !tx.responded {
			tx.trying()
			return
		}
	case inviteCompleted:
	default:
		return
	}
	if err := tx.write(tx.last); err != nil {
		tx.sock.p.log.Debug("cannot answer INVITE retransmission", "error", err)
	}
}

// tick runs the timers due at now.
func (tx *inviteTx) tick(now time.Time) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.dropped {
		return
	}
	n := now.UnixNano()
	switch tx.state {
	case inviteProceeding:
		if !tx.responded && n >= tx.tryingAt {
			tx.trying()
		}
	case inviteCompleted:
		tx.timerG(now)
	default:
		if n >= tx.endAt {
			tx.drop() // Timer I or L
		}
	}
	tx.schedule()
}

// timerG retransmits the non-2xx final response when Timer G fires, the
// interval doubling up to T2, and ends the transaction when Timer H fires
// first: the client never ACKed (tx.mu held).
func (tx *inviteTx) timerG(now time.Time) {
	n := now.UnixNano()
	if n >= tx.hAt {
		tx.drop()
		return
	}
	if n < tx.gAt {
		return
	}
	if err := tx.write(tx.last); err != nil {
		tx.sock.p.log.Debug("cannot retransmit final response", "error", err)
	}
	tx.gap = min(2*tx.gap, sip.T2)
	tx.gAt = now.Add(tx.gap).UnixNano()
}

// acked takes the client's ACK for the non-2xx final response (§17.2.1):
// Timer G stops, Timer I starts; a retransmitted ACK, or an ACK in any
// other state, is absorbed as sipgo's transaction absorbed it.
func (tx *inviteTx) acked(now time.Time) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.dropped || tx.state != inviteCompleted {
		return
	}
	tx.state = inviteConfirmed
	tx.last = nil
	tx.endAt = now.Add(sip.T4).UnixNano()
	tx.schedule()
}

// cancel takes the client's CANCEL (§9.2), already answered 200: while
// Proceeding, the OnCancel hooks run and the INVITE is answered 487
// (Completed); once it has a final response, nothing changes.
func (tx *inviteTx) cancel(req *sip.Request) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.dropped || tx.state != inviteProceeding {
		return
	}
	tx.cancelled = true
	for _, hook := range tx.hooks {
		hook(req)
	}
	buf := msgBufs.Get().(*bytes.Buffer)
	defer msgBufs.Put(buf)
	buf.Reset()
	sip.NewResponseFromRequest(tx.req, sip.StatusRequestTerminated, "Request Terminated", nil).StringWrite(buf)
	tx.complete(buf.Bytes(), time.Now())
	tx.responded = true
	tx.schedule()
	if err := tx.write(buf.Bytes()); err != nil {
		tx.sock.p.log.Debug("cannot answer cancelled INVITE", "error", err)
	}
}

// drop takes the transaction out of the table (tx.mu held): terminated.
func (tx *inviteTx) drop() {
	tx.dropped = true
	tx.due.Store(0)
	tx.tbl.mu.Lock()
	if tx.tbl.byKey[tx.key] == tx {
		delete(tx.tbl.byKey, tx.key)
	}
	tx.tbl.mu.Unlock()
}

// handled is called when the INVITE's handler returned: a transaction
// still Proceeding (the INVITE was dropped or absorbed, no final response
// went out) ends now, as sipgo's TerminateGracefully ends it; any other
// stays for its timers.
func (tx *inviteTx) handled() {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if !tx.dropped && tx.state == inviteProceeding {
		tx.drop()
	}
}

// OnCancel registers hook, run under the transaction's lock when the
// client's CANCEL arrives, before the 487 goes out. It returns false,
// registering nothing, once the INVITE was cancelled or the transaction
// ended.
func (tx *inviteTx) OnCancel(hook sip.FnTxCancel) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.cancelled || tx.dropped {
		return false
	}
	tx.hooks = append(tx.hooks, hook)
	return true
}

// Err returns sip.ErrTransactionCanceled once the client cancelled the
// INVITE, sip.ErrTransactionTerminated once the transaction ended, else
// nil.
func (tx *inviteTx) Err() error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	switch {
	case tx.cancelled:
		return sip.ErrTransactionCanceled
	case tx.dropped:
		return sip.ErrTransactionTerminated
	}
	return nil
}

// Terminate ends the transaction: it is forgotten, nothing else to stop.
func (tx *inviteTx) Terminate() {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if !tx.dropped {
		tx.drop()
	}
}

// Acks returns nil: the ACK for a non-2xx final response is absorbed by
// the socket, the ACK for a 2xx is a request of its own (fastlane_ack.go).
func (tx *inviteTx) Acks() <-chan *sip.Request { return nil }

// OnTerminate returns false: see Done.
func (tx *inviteTx) OnTerminate(sip.FnTxTerminate) bool { return false }

// Done returns nil, a channel that never closes: a UDP client cannot go
// away.
func (tx *inviteTx) Done() <-chan struct{} { return nil }
