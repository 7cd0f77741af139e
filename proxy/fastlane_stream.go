package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// The fast lane for clients over TCP and TLS. The TCP and TLS listeners'
// guard (tcpguard) offers divertStream every complete request a client's
// connection carries, after inspectStream and before sipgo reads it; the
// requests the lane takes (TakesRequest) toward a UDP next hop are
// forwarded as a UDP client's are, and answered on the connection they came
// on (RFC 3261 §18.2.2: a response to a request over a reliable transport
// goes back on that connection). What a UDP client's retransmissions do on
// the lane, the lane does itself for a stream client, which sends each
// request once (§17.1.1.2 / §17.1.2.2: Timer E runs on unreliable hops
// only, and the hop toward the upstream is one): the sweeper retransmits
// its request toward the upstream, at T1 doubling to T2, while it waits.
// Nothing answers retransmissions from the client (there are none: no
// Timer J, §17.2.2), and a client whose connection closes while its request
// waits has it ended by the sweeper, unanswered; but a BYE, whose final
// response ends the dialog, is followed to its end (outlivesClient,
// fastlane_dialog.go). WebSocket clients
// (RFC 7118) keep sipgo's transactions: wsgate offers no Divert.

// laneTx is the server side of a request the fast lane took: liteTx for a
// UDP client, streamTx for a TCP or TLS one.
type laneTx interface {
	sip.ServerTransaction
	// Key is the request's server transaction key (RFC 3261 §17.2.3).
	Key() string
	// Raw returns the bytes the request was parsed from, during
	// HandleRequest only (nil afterwards); never kept or modified.
	Raw() []byte
	// CanRespondRaw reports whether RespondRaw can reach the client.
	CanRespondRaw() bool
	// RespondRaw sends data, a response already serialised: a final one
	// (final true) at most once. data may be reused once it returns.
	RespondRaw(data []byte, final bool) error
	// reliable reports whether the client is on a reliable transport: it
	// does not retransmit, and the lane runs Timer E for it.
	reliable() bool
	// gone reports whether the client can no longer be answered (its
	// connection closed).
	gone() bool
}

// divertStream is the TCP and TLS listeners' Divert (tcpguard.Config): it
// hands the fast lane the requests it takes from a client's connection, as
// laneSocket does with datagrams, and reports whether it took msg (sipgo
// then never sees it). Anything else (INVITE, ACK, CANCEL, REGISTER, a
// request in a dialog or creating one, an unparsable message, a response)
// goes on to sipgo. It runs on the connection's reading goroutine; a
// panic is recovered and the message dropped.
func (p *Proxy) divertStream(msg []byte, s tcpguard.Stream) (taken bool) {
	l := p.lane
	if l == nil {
		return false
	}
	switch method := sip.RequestMethod(startMethod(msg)); method {
	case "", sip.INVITE, sip.ACK, sip.CANCEL, sip.REGISTER:
		return false
	default:
		if createsDialog(method) {
			return false
		}
	}
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("panic while reading a stream message", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			taken = true
		}
	}()
	parsed, err := p.parser.ParseSIP(msg)
	if err != nil {
		return false // sipgo refuses it
	}
	req, ok := parsed.(*sip.Request)
	if !ok || !l.TakesRequest(req) {
		return false
	}
	req.SetTransport(s.Transport())
	req.SetSource(s.RemoteAddr().String())
	key, ok := serverTxKey(req)
	if !ok {
		return false // sipgo answers 400
	}
	tx := &streamTx{key: key, s: s, raw: msg}
	l.HandleRequest(req, tx)
	tx.raw = nil // tcpguard's buffer
	return true
}

// streamTx is the server side of a non-INVITE request the fast lane took
// from a TCP or TLS client: its responses are written on the connection
// the request came on (RFC 3261 §18.2.2), provisional ones as they come,
// the first final one once. Nothing is kept after it: on a reliable
// transport the client does not retransmit (§17.2.2, Timer J is zero).
type streamTx struct {
	laneTxState
	key string
	s   tcpguard.Stream
	raw []byte // the request's bytes, during HandleRequest only

	mu       sync.Mutex
	finished bool
}

var _ laneTx = (*streamTx)(nil)

// Key is the server transaction key of the request (RFC 3261 §17.2.3).
func (tx *streamTx) Key() string { return tx.key }

// Raw returns the request's bytes (laneTx).
func (tx *streamTx) Raw() []byte { return tx.raw }

// CanRespondRaw reports true: the connection is the way back.
func (tx *streamTx) CanRespondRaw() bool { return true }

func (tx *streamTx) reliable() bool { return true }

func (tx *streamTx) gone() bool { return tx.s.Closed() }

// Respond writes res on the request's connection.
func (tx *streamTx) Respond(res *sip.Response) error {
	buf := msgBufs.Get().(*bytes.Buffer)
	defer msgBufs.Put(buf)
	buf.Reset()
	res.StringWrite(buf)
	return tx.RespondRaw(buf.Bytes(), !res.IsProvisional())
}

// RespondRaw writes data, a response serialised for a datagram, on the
// request's connection, framed for a stream (streamFrame): a final one
// (final true) at most once.
func (tx *streamTx) RespondRaw(data []byte, final bool) error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.finished {
		return errLiteTxAnswered
	}
	if final {
		tx.finished = true
	}
	buf := datagramBufs.Get().(*[]byte)
	defer datagramBufs.Put(buf)
	out, err := streamFrame((*buf)[:0], data) // a copy only when it must be edited
	if err != nil {
		return fmt.Errorf("send response: %w", err)
	}
	if err := tx.s.WriteMessage(out); err != nil {
		return fmt.Errorf("send response: %w", err)
	}
	return nil
}

// errUnframable is what streamFrame returns for a message whose
// Content-Length claims more body than the datagram carries.
var errUnframable = errors.New("content-length larger than the message")

// streamFrame returns msg, a message as a datagram carries it, framed for
// a stream: on one Content-Length is mandatory, the boundary of the
// message (RFC 3261 §18.3, §20.14), while over UDP it may be missing (the
// body is then the rest of the datagram) or smaller than the body (which
// is cut to it). msg itself when it is framed already (no copy), else the
// framed copy appended to dst. Content-Length larger than the body is an
// error (§18.3: such a datagram is discarded).
func streamFrame(dst, msg []byte) ([]byte, error) {
	length, bodyAt, ok := scanContentLength(msg)
	if !ok {
		return nil, errors.New("cannot read message headers")
	}
	body := len(msg) - bodyAt
	switch {
	case length < 0: // none: add one before the empty line
		dst = append(dst, msg[:bodyAt-2]...)
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, int64(body), 10)
		dst = append(dst, "\r\n\r\n"...)
		return append(dst, msg[bodyAt:]...), nil
	case length == body:
		return msg, nil
	case length > body:
		return nil, errUnframable
	}
	return append(dst, msg[:bodyAt+length]...), nil // the body cut to its length
}

// scanContentLength finds the Content-Length header ("l" compact) of msg:
// its value (-1 when there is none) and where the body starts. ok is
// false when the headers cannot be read for sure (nextHeader) or the value
// is no number.
func scanContentLength(msg []byte) (length, bodyAt int, ok bool) {
	length = -1
	pos, ok := lineEnd(msg, 0)
	if !ok {
		return -1, 0, false
	}
	for {
		h, last, ok := nextHeader(msg, pos)
		if !ok {
			return -1, 0, false
		}
		if last {
			return length, h.end, true
		}
		if length < 0 && (equalFoldASCII(h.name, "content-length") || equalFoldASCII(h.name, "l")) {
			n, err := strconv.Atoi(string(bytes.TrimSpace(h.value(msg))))
			if err != nil || n < 0 {
				return -1, 0, false
			}
			length = n
		}
		pos = h.end
	}
}

// newAttempt starts Timer E for a new transaction toward the upstream
// (e.mu held): the first send, or the re-send answering a challenge.
// Only for a stream client (a UDP client's retransmissions drive the
// lane's), and as Timer A for an INVITE (its client stops retransmitting
// at our first provisional response, fastlane_invite.go).
func (e *laneEntry) newAttempt() {
	if e.tx.reliable() || e.inv != nil {
		e.gap = sip.T1
	}
}

// scheduleResend notes when the next retransmission is due (e.mu held,
// the request just sent), if the lane runs Timer E for it.
func (e *laneEntry) scheduleResend() {
	if e.gap > 0 {
		e.resendAt.Store(time.Now().Add(e.gap).UnixNano())
	}
}

// timerE retransmits a stream client's request toward the upstream while
// it waits, the interval doubling up to T2 (RFC 3261 §17.1.2.2; in the
// Proceeding state the interval is T2, which the doubling reaches by
// then); an INVITE's, Timer A, doubling with no cap until a response
// stops it (§17.1.1.2).
func (e *laneEntry) timerE() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.waiting || e.gap == 0 || time.Now().UnixNano() < e.resendAt.Load() {
		return
	}
	if e.gap *= 2; e.inv == nil {
		e.gap = min(e.gap, sip.T2)
	}
	if err := e.send(); err != nil {
		e.f.log.Debug("cannot retransmit request", "error", err)
	}
}

// abandons reports whether the sweeper ends e's request, waiting on the
// lane, unanswered (abandon): its client's connection closed, and its
// final response changes nothing authproxy keeps (outlivesClient).
func (e *laneEntry) abandons() bool {
	return e.tx.gone() && !e.outlivesClient()
}

// abandon ends a waiting entry whose client's connection closed (e.mu
// held): nothing can be answered any more, so nothing is.
func (l *fastLane) abandon(e *laneEntry) {
	l.finish(e)
	e.f.log.Debug("client connection closed while its request waited")
	e.end()
}
