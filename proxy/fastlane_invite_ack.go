package proxy

import (
	"bytes"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// The ACK for a non-2xx final response to an INVITE the lane sent. It is
// the INVITE client transaction's (RFC 3261 §17.1.1.3), hop by hop: the
// lane builds it from the INVITE's bytes as sent and the response's To,
// sends it from the socket the INVITE left from to the same target, and
// keeps it for Timer D (bounded by T4, as TuneSIPStack bounds sipgo's),
// so that a retransmission of the final response (our ACK lost) is
// ACKed again.

// laneAcks holds the ACKs the lane sent for Timer D, by the Via branch of
// the INVITE they answer.
type laneAcks struct {
	mu sync.Mutex
	m  map[string]laneAck
}

// laneAck is an ACK as sent, where it went from and to, and until when it
// is kept (Unix nanoseconds).
type laneAck struct {
	raw   []byte
	sock  *laneSocket
	dst   *net.UDPAddr
	until int64
}

// ackFinal ACKs the non-2xx final response whose To header value is to,
// to e's INVITE as last sent (e.mu held), and keeps the ACK under its
// branch for Timer D. It reports false when the ACK cannot be built.
func (l *fastLane) ackFinal(e *laneEntry, to []byte) bool {
	ack, ok := appendNon2xxAck(nil, e.raw, to)
	if !ok {
		return false
	}
	if _, err := e.sock.WriteTo(ack, e.dst); err != nil {
		e.f.log.Debug("cannot send ACK", "error", err)
	}
	until := time.Now().Add(min(sip.Timer_D, sip.T4)).UnixNano()
	l.acks.mu.Lock()
	if l.acks.m == nil {
		l.acks.m = map[string]laneAck{}
	}
	l.acks.m[e.branch] = laneAck{raw: ack, sock: e.sock, dst: e.dst, until: until}
	l.acks.mu.Unlock()
	return true
}

// reAck sends the ACK kept under branch again and reports whether there
// was one: the response read is a retransmission of the final response
// it answered (§17.1.1.2, Completed).
func (l *fastLane) reAck(branch []byte) bool {
	l.acks.mu.Lock()
	if len(l.acks.m) == 0 {
		l.acks.mu.Unlock()
		return false
	}
	a, ok := l.acks.m[string(branch)]
	l.acks.mu.Unlock()
	if !ok {
		return false
	}
	if _, err := a.sock.WriteTo(a.raw, a.dst); err != nil {
		l.p.log.Debug("cannot send ACK again", "error", err)
	}
	return true
}

// sweep drops the ACKs whose Timer D is over at now.
func (a *laneAcks) sweep(now time.Time) {
	n := now.UnixNano()
	a.mu.Lock()
	defer a.mu.Unlock()
	for b, ack := range a.m {
		if n >= ack.until {
			delete(a.m, b)
		}
	}
}

// len is the number of ACKs kept.
func (a *laneAcks) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.m)
}

// responseTo returns the value of the To header of the response data,
// trimmed, or false when the headers cannot be read for sure (nextHeader)
// or it has none.
func responseTo(data []byte) ([]byte, bool) {
	pos, ok := lineEnd(data, 0)
	if !ok {
		return nil, false
	}
	for {
		h, last, ok := nextHeader(data, pos)
		if !ok || last {
			return nil, false
		}
		if equalFoldASCII(h.name, "to") || equalFoldASCII(h.name, "t") {
			return bytes.TrimSpace(h.value(data)), true
		}
		pos = h.end
	}
}

// appendNon2xxAck appends to dst the ACK for a non-2xx final response to
// inv, an INVITE as authproxy sent it (our Via on top), whose To header
// value is to: the INVITE's Request-URI, its top Via alone, its Route
// lines, From, Call-ID and CSeq number with method ACK, the response's To,
// Max-Forwards and no body (RFC 3261 §17.1.1.3). It reports false, having
// appended nothing, when inv cannot be read for sure or to is no single
// line.
func appendNon2xxAck(dst, inv, to []byte) ([]byte, bool) {
	start := len(dst)
	fail := func() ([]byte, bool) { return dst[:start], false }
	if len(to) == 0 || bytes.IndexAny(to, "\r\n\x00") >= 0 {
		return fail()
	}
	pos, ok := lineEnd(inv, 0)
	if !ok {
		return fail()
	}
	method, uri, ok := bytes.Cut(inv[:pos-2], []byte(" "))
	if !ok || string(method) != "INVITE" {
		return fail()
	}
	dst = append(dst, "ACK "...)
	dst = append(dst, uri...)
	dst = append(dst, "\r\n"...)
	seenVia, seenFrom, seenCallID, seenCSeq := false, false, false, false
	for {
		h, last, ok := nextHeader(inv, pos)
		if !ok {
			return fail()
		}
		if last {
			break
		}
		line := inv[h.from:h.end]
		switch {
		case h.isVia():
			if !seenVia {
				if bytes.IndexByte(h.value(inv), ',') >= 0 {
					return fail() // several values: not the way authproxy writes its own
				}
				seenVia = true
				dst = append(dst, line...)
			}
		case equalFoldASCII(h.name, "route"):
			dst = append(dst, line...)
		case !seenFrom && (equalFoldASCII(h.name, "from") || equalFoldASCII(h.name, "f")):
			seenFrom = true
			dst = append(dst, line...)
		case !seenCallID && (equalFoldASCII(h.name, "call-id") || equalFoldASCII(h.name, "i")):
			seenCallID = true
			dst = append(dst, line...)
		case !seenCSeq && equalFoldASCII(h.name, "cseq"):
			numFrom, numTo, _, ok := scanCSeq(h.value(inv))
			if !ok {
				return fail()
			}
			seenCSeq = true
			n, err := strconv.ParseUint(string(h.value(inv)[numFrom:numTo]), 10, 32)
			if err != nil {
				return fail()
			}
			dst = append(dst, "CSeq: "...)
			dst = strconv.AppendUint(dst, n, 10)
			dst = append(dst, " ACK\r\n"...)
		}
		pos = h.end
	}
	if !seenVia || !seenFrom || !seenCallID || !seenCSeq {
		return fail()
	}
	dst = append(dst, "To: "...)
	dst = append(dst, to...)
	dst = append(dst, "\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"...)
	return dst, true
}
