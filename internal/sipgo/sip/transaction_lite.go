package sip

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// FastLane (authproxy patch 11) takes requests received on a UDP listener
// out of the transaction layer's goroutine-per-message path: the UDP parse
// worker that parsed a request hands it to HandleRequest with a
// LiteServerTx, and a response to HandleResponse, synchronously, before any
// goroutine, ServerTx or FSM exists. A proxy that answers most requests
// with one upstream round trip spends more CPU on sipgo's handoffs
// (goroutine per message, the server and client transactions' FSMs,
// timers and channels, waking idle Ps) than on SIP; on a machine whose
// cores it shares with its upstream, that CPU is its tail latency.
type FastLane interface {
	// TakesRequest reports whether HandleRequest handles req. It must
	// depend on req alone (method, headers), never on state, so that the
	// retransmissions of a request take the path the request took.
	TakesRequest(req *Request) bool
	// HandleRequest handles a request TakesRequest took, or a
	// retransmission of it whose transaction has not answered yet
	// (tx.Key() tells them apart). It must not block: it runs on the
	// worker that parses its sender's datagrams.
	HandleRequest(req *Request, tx *LiteServerTx)
	// HandleResponse reports whether it took res (a response to a request
	// it sent itself, matched by the branch of its top Via); if not, the
	// transaction layer matches it to a ClientTx as usual. It must not
	// block either.
	HandleResponse(res *Response) bool
}

// RawResponseLane is a FastLane that also takes responses as the bytes a
// UDP listener read, before sipgo parses them (authproxy patch 13): a
// proxy that only strips its own Via from a response and sends it on need
// not parse and serialise every header of it.
type RawResponseLane interface {
	// HandleRawResponse reports whether it took the datagram data (which
	// starts with "SIP/2.0 "); if not, it is parsed and handled as usual.
	// data is the read loop's buffer: it must not be kept after return.
	// It must not block.
	HandleRawResponse(data []byte) bool
}

// WithTransactionLayerFastLane installs a FastLane (authproxy patch 11).
func WithTransactionLayerFastLane(f FastLane) TransactionLayerOption {
	return func(txl *TransactionLayer) {
		txl.fast = f
	}
}

// fastRequest offers req to the fast lane and reports whether it took it.
// A request with a ServerTx already (the fast lane declined its first
// copy) stays with that transaction; one whose lite transaction answered
// is answered again from the answered store (RFC 3261 §17.2.2).
//
// raw is the datagram req was parsed from, if the transport kept it: the
// lite transaction lends it to HandleRequest (LiteServerTx.Raw).
func (txl *TransactionLayer) fastRequest(req *Request, raw []byte) bool {
	if req.Method == INVITE || req.Method == ACK || req.Method == CANCEL || req.Transport() != "UDP" || !txl.fast.TakesRequest(req) {
		return false
	}
	key, err := makeServerTxKey(req, "")
	if err != nil {
		return false // the usual path answers 400
	}
	if _, ok := txl.serverTransactions.get(key); ok {
		return false
	}
	if ok, err := txl.answered.answerAgain(key); ok {
		if err != nil {
			txl.log.Debug("fail to resend final response", "error", err, "tx", key)
		}
		return true
	}
	conn, err := txl.tpl.serverRequestConnection(context.Background(), req)
	if err != nil || conn == nil {
		return false
	}
	uc, ok := conn.(*UDPConnection)
	if !ok || !uc.Listener {
		conn.TryClose()
		return false
	}
	src, _ := netip.ParseAddrPort(req.Source()) // zero (RespondRaw refuses) if not an address
	tx := &LiteServerTx{key: key, conn: uc, answered: txl.answered, src: src, raw: raw}
	txl.fast.HandleRequest(req, tx)
	tx.raw = nil // the read loop reuses it
	return true
}

// LiteServerTx is the server side of a non-INVITE request received on a
// UDP listener and handled by a FastLane (authproxy patch 11): no FSM, no
// timer, no goroutine. Respond sends provisional responses as they come
// and the first final response once; the final response's bytes go to the
// answered store, which answers the request's retransmissions for Timer J
// as a Completed transaction would (RFC 3261 §17.2.2). Retransmissions
// before that reach the FastLane again; it owns Trying/Proceeding. Done
// never closes: a UDP sender cannot go away.
type LiteServerTx struct {
	key      string
	conn     *UDPConnection
	answered *answeredStore
	src      netip.AddrPort // where the request came from (authproxy patch 13)
	raw      []byte         // the request's datagram, during HandleRequest only (patch 14)

	mu       sync.Mutex
	finished bool
}

// ErrLiteTxAnswered is what Respond returns once a final response went out.
var ErrLiteTxAnswered = errors.New("transaction already answered")

// Key is the server transaction key of the request (RFC 3261 §17.2.3).
func (tx *LiteServerTx) Key() string { return tx.key }

// Respond sends res to the request's sender.
func (tx *LiteServerTx) Respond(res *Response) error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.finished {
		return ErrLiteTxAnswered
	}
	if res.IsProvisional() {
		return tx.conn.WriteMsg(res)
	}
	tx.finished = true
	tx.conn.TryClose() // serverRequestConnection's reference
	if err := tx.answered.sendAndKeep(tx.key, tx.conn, res); err != nil {
		return wrapTransportError(err)
	}
	return nil
}

// Raw returns the datagram the request was parsed from (authproxy patch
// 14), so that a proxy can send it on edited instead of serialising a
// parsed copy. It is the read loop's buffer: valid only until
// HandleRequest returns, never to be kept or modified; nil when the
// transport did not keep it, and afterwards.
func (tx *LiteServerTx) Raw() []byte { return tx.raw }

// CanRespondRaw reports whether RespondRaw can reach the request's source
// (authproxy patch 13): its address parsed as an IP address and port.
func (tx *LiteServerTx) CanRespondRaw() bool { return tx.src.IsValid() }

// ErrLiteTxNoSource is what RespondRaw returns when the request's source
// was no IP address and port.
var ErrLiteTxNoSource = errors.New("request source is no address")

// RespondRaw sends data, a response already serialised, to the request's
// source (authproxy patch 13): a final one (final true) at most once, and
// kept to answer retransmissions, as Respond does. data may be reused once
// it returns.
func (tx *LiteServerTx) RespondRaw(data []byte, final bool) error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.finished {
		return ErrLiteTxAnswered
	}
	if !tx.src.IsValid() {
		return ErrLiteTxNoSource
	}
	to := netip.AddrPortFrom(tx.src.Addr().Unmap(), tx.src.Port())
	if final {
		tx.finished = true
		tx.conn.TryClose() // serverRequestConnection's reference
	}
	if _, err := tx.conn.WriteTo(data, net.UDPAddrFromAddrPort(to)); err != nil {
		return wrapTransportError(err)
	}
	if final {
		tx.answered.put(tx.key, answeredTx{raw: data, addr: to, conn: tx.conn}, time.Now())
	}
	return nil
}

// Acks returns nil: a non-INVITE transaction gets no ACK.
func (tx *LiteServerTx) Acks() <-chan *Request { return nil }

// OnCancel returns false: CANCEL applies to INVITE only.
func (tx *LiteServerTx) OnCancel(FnTxCancel) bool { return false }

// Terminate does nothing: there is nothing to stop.
func (tx *LiteServerTx) Terminate() {}

// OnTerminate returns false: see Done.
func (tx *LiteServerTx) OnTerminate(FnTxTerminate) bool { return false }

// Done returns nil, a channel that never closes.
func (tx *LiteServerTx) Done() <-chan struct{} { return nil }

// Err returns nil.
func (tx *LiteServerTx) Err() error { return nil }

var _ ServerTransaction = (*LiteServerTx)(nil)
