package fakepbx

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"sync"
)

// The tap sits between the sockets the fake bound and sipgo's transports. It
// sees every request in wire order, before sipgo parses it, and:
//   - keeps its bytes exactly as received, so that Request.Raw and the digest
//     "uri" check see the wire text rather than sipgo's re-serialisation
//     (sipgo re-renders URIs and header names, e.g. "v:" comes back as
//     "Via:");
//   - numbers it, and decides the CSeq check, in arrival order. sipgo hands
//     every message to its own goroutine, so two requests pipelined on one
//     TCP connection can reach the handlers in either order;
//   - hands every new CANCEL to the UA (onCancel) synchronously, before sipgo
//     has parsed it, and drops it from what sipgo reads when the UA consumed
//     it (see Server.onTapCancel).

// rawRequest is one request as received on the wire.
type rawRequest struct {
	raw    string
	ruri   string
	seq    uint64 // arrival order
	cseqOK bool   // CSeq above every earlier one of its Call-ID (ACK, CANCEL: always)
	copies int    // copies received while pending (retransmissions), each taken once
}

// rawKey identifies a received request well enough to find its bytes again
// from sipgo's parsed *sip.Request: the same source, top Via branch and CSeq
// (an ACK or CANCEL shares the INVITE's branch and number but not its method).
func rawKey(transport, source, branch string, cseq uint64, cseqMethod string) string {
	return strings.ToUpper(transport) + "|" + source + "|" + branch + "|" +
		strconv.FormatUint(cseq, 10) + "|" + strings.ToUpper(cseqMethod)
}

// rawStore remembers received requests by rawKey until they are handled.
//
// It is unbounded: a fake lives for one test and keeps every request it
// handled anyway (Server.Requests). What stays in it are the copies sipgo
// absorbed (retransmissions matched to a transaction) and CANCELs sipgo
// answered by itself. Dropping entries instead would lose the bytes of a
// request still to be handled, which the fake reports as a test failure.
type rawStore struct {
	mu       sync.Mutex
	m        map[string]rawRequest
	seq      uint64
	lastCSeq map[string]uint64 // per Call-ID, in arrival order
	dialogs  map[string]uint64 // last remote CSeq per dialog of the UA (dialogCSeqKey)

	// onCancel, when set (before serving), is called for every CANCEL that
	// was stored (not for a copy of one still pending), on the reader
	// goroutine, after the store's lock is released. It returns true when
	// it consumed the CANCEL: sipgo must not see it.
	onCancel func(transport, source string, f rawFields, key string) bool
}

// dialogCSeqKey identifies a dialog from the remote side's point of view:
// its requests carry the remote tag in From and the fake's tag in To.
func dialogCSeqKey(callID, remoteTag, localTag string) string {
	return callID + "\x00" + remoteTag + "\x00" + localTag
}

// openDialog makes the CSeq check of requests carrying these tags per
// dialog (strictly above the last one of the dialog, starting from the
// INVITE's cseq) instead of per Call-ID, so that forked dialogs sharing a
// Call-ID each have their own CSeq space, as their UAC has.
func (rs *rawStore) openDialog(callID, remoteTag, localTag string, cseq uint64) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.dialogs == nil {
		rs.dialogs = map[string]uint64{}
	}
	k := dialogCSeqKey(callID, remoteTag, localTag)
	if last, ok := rs.dialogs[k]; !ok || cseq > last {
		rs.dialogs[k] = cseq
	}
}

// put stores a received message (requests only). It reports whether the
// message was consumed and must not reach sipgo.
func (rs *rawStore) put(transport, source string, msg []byte) (consumed bool) {
	f, ok := parseRawRequest(msg)
	if !ok {
		return false // a response, or nothing we can parse
	}
	key := rawKey(transport, source, f.branch, f.cseq, f.cseqMethod)
	if rs.store(key, f, msg) && rs.onCancel != nil &&
		strings.EqualFold(f.method, "CANCEL") && strings.EqualFold(f.cseqMethod, "CANCEL") {
		return rs.onCancel(transport, source, f, key)
	}
	return false
}

// store records one request; it reports whether it was new (not a copy of
// one still pending).
func (rs *rawStore) store(key string, f rawFields, msg []byte) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.seq++
	if rs.m == nil {
		rs.m = map[string]rawRequest{}
	}
	if r, pending := rs.m[key]; pending {
		// A retransmission of a request not handled yet: keep the
		// original, and its bytes for the copy too (an ACK for a 2xx is
		// no transaction: sipgo hands every copy to the handler).
		r.copies++
		rs.m[key] = r
		return false
	}
	if rs.lastCSeq == nil {
		rs.lastCSeq = map[string]uint64{}
	}
	cseqOK := true
	if m := strings.ToUpper(f.cseqMethod); m != "ACK" && m != "CANCEL" {
		last, inDialog := rs.dialogs[dialogCSeqKey(f.callID, f.fromTag, f.toTag)]
		if f.toTag != "" && inDialog {
			// A request within a dialog of the UA: strictly above the
			// dialog's last CSeq (the INVITE's to begin with).
			cseqOK = f.cseq > last
			if cseqOK {
				rs.dialogs[dialogCSeqKey(f.callID, f.fromTag, f.toTag)] = f.cseq
				rs.lastCSeq[f.callID] = max(rs.lastCSeq[f.callID], f.cseq)
			}
		} else {
			last, seen := rs.lastCSeq[f.callID]
			cseqOK = !seen || f.cseq > last
			if cseqOK {
				rs.lastCSeq[f.callID] = f.cseq
			}
		}
	}
	rs.m[key] = rawRequest{raw: string(msg), ruri: f.ruri, seq: rs.seq, cseqOK: cseqOK, copies: 1}
	return true
}

// take hands out the bytes of one received copy of the request with key.
func (rs *rawStore) take(key string) (rawRequest, bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	r, ok := rs.m[key]
	if !ok {
		return r, false
	}
	if r.copies--; r.copies <= 0 {
		delete(rs.m, key)
	} else {
		rs.m[key] = r
	}
	return r, true
}

// nextSeq numbers a request the tap did not see (a fault of the fake,
// reported as a test failure).
func (rs *rawStore) nextSeq() uint64 {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.seq++
	return rs.seq
}

// rawFields are what the tap reads from a raw request.
type rawFields struct {
	method, ruri, branch, callID, cseqMethod string
	fromTag, toTag                           string
	cseq                                     uint64
}

// parseRawRequest extracts the method, Request-URI, top Via branch,
// Call-ID, From and To tags and CSeq from a raw request. It returns ok=false for responses and
// unparsable input.
func parseRawRequest(msg []byte) (f rawFields, ok bool) {
	head := msg
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		head = msg[:i]
	} else if i := bytes.Index(msg, []byte("\n\n")); i >= 0 {
		head = msg[:i]
	}
	lines := strings.Split(string(head), "\n")
	for len(lines) > 0 && strings.TrimSpace(lines[0]) == "" {
		lines = lines[1:]
	}
	if len(lines) == 0 {
		return f, false
	}
	start := strings.Fields(strings.TrimRight(lines[0], "\r"))
	if len(start) != 3 || strings.HasPrefix(strings.ToUpper(start[0]), "SIP/") {
		return f, false
	}
	f.method, f.ruri = start[0], start[1]
	seenVia, seenCSeq := false, false
	for _, line := range lines[1:] {
		line = strings.TrimRight(line, "\r")
		name, value, found := strings.Cut(line, ":")
		if !found {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "via", "v":
			if seenVia {
				continue
			}
			seenVia = true
			first, _, _ := strings.Cut(value, ",")
			f.branch = viaBranch(first)
		case "call-id", "i":
			f.callID = value
		case "from", "f":
			f.fromTag = headerTag(value)
		case "to", "t":
			f.toTag = headerTag(value)
		case "cseq":
			if seenCSeq {
				continue
			}
			seenCSeq = true
			fields := strings.Fields(value)
			if len(fields) != 2 {
				return f, false
			}
			n, err := strconv.ParseUint(fields[0], 10, 32)
			if err != nil {
				return f, false
			}
			f.cseq, f.cseqMethod = n, fields[1]
		}
	}
	return f, seenCSeq
}

// headerTag returns the tag parameter of a From or To value (name-addr or
// addr-spec form), "" when it has none.
func headerTag(value string) string {
	if i := strings.LastIndexByte(value, '>'); i >= 0 {
		value = value[i+1:]
	} else if i := strings.IndexByte(value, ';'); i >= 0 {
		value = value[i:]
	} else {
		return ""
	}
	for _, p := range strings.Split(value, ";") {
		k, v, _ := strings.Cut(p, "=")
		if strings.EqualFold(strings.TrimSpace(k), "tag") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// viaBranch returns the branch parameter of one Via value.
func viaBranch(via string) string {
	params := strings.Split(via, ";")
	for _, p := range params[1:] {
		k, v, _ := strings.Cut(p, "=")
		if strings.EqualFold(strings.TrimSpace(k), "branch") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// tapPacketConn records every datagram read by sipgo's UDP transport.
type tapPacketConn struct {
	net.PacketConn
	raws *rawStore
}

func (c *tapPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(b)
		if err == nil && n > 0 && c.raws.put("UDP", addr.String(), b[:n]) {
			continue // consumed by the UA: sipgo reads the next datagram
		}
		return n, addr, err
	}
}

// tapListener wraps accepted TCP connections (TLS ones after the
// handshake: the tap reads plaintext) in tapConn and tracks them, so that
// cleanup can close them and wait until sipgo's reader has seen the close.
type tapListener struct {
	net.Listener
	raws      *rawStore
	transport string // "TCP" or "TLS", as sipgo names the requests' transport

	mu     sync.Mutex
	closed bool
	conns  map[*tapConn]struct{}
	wg     sync.WaitGroup
}

func (l *tapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &tapConn{Conn: c, raws: l.raws, transport: l.transport, remote: c.RemoteAddr().String()}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	if l.conns == nil {
		l.conns = map[*tapConn]struct{}{}
	}
	l.conns[tc] = struct{}{}
	l.wg.Add(1)
	tc.done = func() {
		l.mu.Lock()
		delete(l.conns, tc)
		l.mu.Unlock()
		l.wg.Done()
	}
	return tc, nil
}

// closeConns closes every accepted connection still open and waits until
// each one has seen a read error or a Close.
func (l *tapListener) closeConns() {
	l.mu.Lock()
	l.closed = true
	conns := make([]*tapConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		// A half close makes sipgo's reader see EOF and release the
		// connection itself, which keeps its refcounting quiet.
		if tcp, ok := c.Conn.(*net.TCPConn); ok && tcp.CloseRead() == nil {
			continue
		}
		c.Conn.Close()
	}
	l.wg.Wait()
}

// tapConn frames the TCP byte stream into SIP messages (by Content-Length)
// for the raw store, and hands sipgo the same bytes, in order, a whole
// message at a time, minus the messages the UA consumed. Read is only ever
// called by sipgo's single reader goroutine for the connection.
type tapConn struct {
	net.Conn
	raws      *rawStore
	transport string
	remote    string
	buf       []byte // received, not framed yet
	out       []byte // framed, for sipgo
	rerr      error  // read error, returned once out is drained
	once      sync.Once
	done      func()
}

func (c *tapConn) Read(b []byte) (int, error) {
	for len(c.out) == 0 && c.rerr == nil {
		n, err := c.Conn.Read(b) // b is scratch space here
		if n > 0 {
			c.feed(b[:n])
		}
		c.rerr = err
	}
	if len(c.out) > 0 {
		n := copy(b, c.out)
		c.out = c.out[n:]
		return n, nil
	}
	c.once.Do(c.done)
	return 0, c.rerr
}

// Close closes the connection. sipgo calls it when its reader stops for any
// reason, including a framing error that is not a read error.
func (c *tapConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}

func (c *tapConn) feed(p []byte) {
	c.buf = append(c.buf, p...)
	for {
		// Keep-alive CRLFs between messages (RFC 5626 §3.5.1) go to sipgo,
		// which answers them.
		rest := bytes.TrimLeft(c.buf, "\r\n")
		c.out = append(c.out, c.buf[:len(c.buf)-len(rest)]...)
		c.buf = rest
		end := bytes.Index(c.buf, []byte("\r\n\r\n"))
		if end < 0 {
			return
		}
		total := end + 4 + contentLength(c.buf[:end])
		if len(c.buf) < total {
			return
		}
		if !c.raws.put(c.transport, c.remote, c.buf[:total]) {
			c.out = append(c.out, c.buf[:total]...)
		}
		c.buf = append([]byte(nil), c.buf[total:]...)
	}
}

// contentLength returns the Content-Length (or compact "l") of a header
// block, 0 when absent or invalid.
func contentLength(head []byte) int {
	for _, line := range strings.Split(string(head), "\r\n")[1:] {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length", "l":
			n, err := strconv.Atoi(strings.TrimSpace(value))
			if err == nil && n >= 0 {
				return n
			}
			return 0
		}
	}
	return 0
}
