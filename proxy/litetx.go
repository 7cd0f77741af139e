package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// liteTx is the server side of a non-INVITE request the fast lane took
// from a UDP listener (laneSocket): no FSM, no timer, no goroutine. Respond
// sends provisional responses as they come and the first final response
// once; the final response's bytes go to the socket's answered store,
// which answers the request's retransmissions for Timer J as a Completed
// transaction would (RFC 3261 §17.2.2). Retransmissions before that reach
// the fast lane again; it owns Trying/Proceeding. Done never closes: a UDP
// sender cannot go away. It is a sip.ServerTransaction, so the forwarding
// code answers it as it answers sipgo's.
type liteTx struct {
	laneTxState
	key  string
	sock *laneSocket
	src  netip.AddrPort // where the request came from (unmapped)
	raw  []byte         // the request's datagram, during HandleRequest only

	mu       sync.Mutex
	finished bool
}

var _ sip.ServerTransaction = (*liteTx)(nil)

// errLiteTxAnswered is what Respond returns once a final response went out.
var errLiteTxAnswered = errors.New("transaction already answered")

// errLiteTxNoSource is what the responses get when the request's source
// was no IP address and port.
var errLiteTxNoSource = errors.New("request source is no address")

// Key is the server transaction key of the request (RFC 3261 §17.2.3).
func (tx *liteTx) Key() string { return tx.key }

// Respond sends res to the request's source (RFC 3581 §4: where it came
// from, from the socket it came in on).
func (tx *liteTx) Respond(res *sip.Response) error {
	buf := msgBufs.Get().(*bytes.Buffer)
	defer msgBufs.Put(buf)
	buf.Reset()
	res.StringWrite(buf)
	if buf.Len() > sip.UDPMTUSize-200 {
		return sip.ErrUDPMTUCongestion
	}
	return tx.RespondRaw(buf.Bytes(), !res.IsProvisional())
}

// Raw returns the datagram the request was parsed from, so that the fast
// lane can send it on edited instead of serialising a parsed copy. It is
// the socket's read buffer: valid only until HandleRequest returns, never
// to be kept or modified; nil afterwards.
func (tx *liteTx) Raw() []byte { return tx.raw }

// CanRespondRaw reports whether RespondRaw can reach the request's source:
// its address an IP address and port.
func (tx *liteTx) CanRespondRaw() bool { return tx.src.IsValid() }

// RespondRaw sends data, a response already serialised, to the request's
// source: a final one (final true) at most once, and kept to answer
// retransmissions. data may be reused once it returns.
func (tx *liteTx) RespondRaw(data []byte, final bool) error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.finished {
		return errLiteTxAnswered
	}
	if !tx.src.IsValid() {
		return errLiteTxNoSource
	}
	if final {
		tx.finished = true
	}
	if _, err := tx.sock.WriteTo(data, net.UDPAddrFromAddrPort(tx.src)); err != nil {
		return fmt.Errorf("send response: %w", err)
	}
	if final {
		tx.sock.answered.put(tx.key, data, tx.src, time.Now())
	}
	return nil
}

// laneTxState is the part of sip.ServerTransaction a request on the fast
// lane has no use for, shared by liteTx and streamTx: a non-INVITE
// transaction gets no ACK and no CANCEL (both apply to INVITE only), has
// nothing to stop and never reports itself done (a UDP sender cannot go
// away; a stream client's closed connection is seen by the lane's
// sweeper instead).
type laneTxState struct{}

// Acks returns nil: no ACK.
func (laneTxState) Acks() <-chan *sip.Request { return nil }

// OnCancel returns false: no CANCEL.
func (laneTxState) OnCancel(sip.FnTxCancel) bool { return false }

// Terminate does nothing: there is nothing to stop.
func (laneTxState) Terminate() {}

// OnTerminate returns false: see Done.
func (laneTxState) OnTerminate(sip.FnTxTerminate) bool { return false }

// Done returns nil, a channel that never closes.
func (laneTxState) Done() <-chan struct{} { return nil }

// Err returns nil.
func (laneTxState) Err() error { return nil }

// msgBufs holds the buffers messages are serialised into before a write.
var msgBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// serverTxKey is the key RFC 3261 §17.2.3 matches a request to its server
// transaction by: the top Via's branch and sent-by, and the method (ACK
// as INVITE); for a branch without the magic cookie, what §17.2.3 says
// RFC 2543 peers are matched by. It is the key sipgo's transaction layer
// uses, for requests the fast lane takes instead. ok is false when the
// request has no Via or CSeq.
func serverTxKey(req *sip.Request) (key string, ok bool) {
	cseq := req.CSeq()
	if cseq == nil {
		return "", false
	}
	method := cseq.MethodName
	if method == sip.ACK {
		method = sip.INVITE
	}
	return serverTxKeyAs(req, method)
}

// serverTxKeyAs is serverTxKey with method for the request's: a CANCEL's
// as INVITE is the key of the INVITE it cancels (§9.2).
func serverTxKeyAs(req *sip.Request, method sip.RequestMethod) (key string, ok bool) {
	via, cseq := req.Via(), req.CSeq()
	if via == nil || cseq == nil {
		return "", false
	}
	var b strings.Builder
	branch, _ := via.Params.Get("branch")
	if strings.HasPrefix(branch, sip.RFC3261BranchMagicCookie) && len(branch) > len(sip.RFC3261BranchMagicCookie) {
		port := via.Port
		if port <= 0 {
			port = int(sip.DefaultPort(via.Transport))
		}
		b.Grow(len(branch) + len(via.Host) + len(method) + 16)
		b.WriteString(branch)
		b.WriteString("__")
		b.WriteString(via.Host)
		b.WriteString("__")
		b.WriteString(strconv.Itoa(port))
		b.WriteString("__")
		b.WriteString(string(method))
		return b.String(), true
	}
	from, to, callID := req.From(), req.To(), req.CallID()
	if from == nil || to == nil || callID == nil {
		return "", false
	}
	fromTag, _ := from.Params.Get("tag")
	b.WriteString(fromTag)
	b.WriteString("__")
	b.WriteString(string(*callID))
	b.WriteString("__")
	b.WriteString(string(method))
	b.WriteString("__")
	b.WriteString(strconv.FormatUint(uint64(cseq.SeqNo), 10))
	b.WriteString("__")
	b.WriteString(via.Host)
	b.WriteString("__")
	b.WriteString(strconv.Itoa(via.Port))
	return b.String(), true
}

// reliable reports false: a UDP client retransmits by itself.
func (tx *liteTx) reliable() bool { return false }

// gone reports false: a UDP client cannot go away.
func (tx *liteTx) gone() bool { return false }
