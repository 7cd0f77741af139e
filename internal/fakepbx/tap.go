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
//     TCP connection can reach the handlers in either order.

// rawRequest is one request as received on the wire.
type rawRequest struct {
	raw    string
	ruri   string
	seq    uint64 // arrival order
	cseqOK bool   // CSeq above every earlier one of its Call-ID (ACK, CANCEL: always)
}

// rawKey identifies a received request well enough to find its bytes again
// from sipgo's parsed *sip.Request: the same source, top Via branch and CSeq
// (an ACK or CANCEL shares the INVITE's branch and number but not its method).
func rawKey(transport, source, branch string, cseq uint64, cseqMethod string) string {
	return strings.ToUpper(transport) + "|" + source + "|" + branch + "|" +
		strconv.FormatUint(cseq, 10) + "|" + strings.ToUpper(cseqMethod)
}

// rawStore remembers recently received requests by rawKey.
type rawStore struct {
	mu       sync.Mutex
	m        map[string]rawRequest
	seq      uint64
	lastCSeq map[string]uint64        // per Call-ID, in arrival order
	watches  map[string]chan struct{} // closed when a request with the key arrives
}

const rawStoreMax = 4096

func (rs *rawStore) put(transport, source string, msg []byte) {
	f, ok := parseRawRequest(msg)
	if !ok {
		return // a response, or nothing we can parse
	}
	key := rawKey(transport, source, f.branch, f.cseq, f.cseqMethod)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.seq++
	if rs.m == nil || len(rs.m) >= rawStoreMax {
		// Entries of retransmissions absorbed by sipgo are never taken;
		// bound the map instead of tracking them.
		rs.m = map[string]rawRequest{}
	}
	if _, pending := rs.m[key]; pending {
		return // a retransmission of a request not handled yet: keep the original
	}
	if rs.lastCSeq == nil {
		rs.lastCSeq = map[string]uint64{}
	}
	cseqOK := true
	if m := strings.ToUpper(f.cseqMethod); m != "ACK" && m != "CANCEL" {
		last, seen := rs.lastCSeq[f.callID]
		cseqOK = !seen || f.cseq > last
		if cseqOK {
			rs.lastCSeq[f.callID] = f.cseq
		}
	}
	rs.m[key] = rawRequest{raw: string(msg), ruri: f.ruri, seq: rs.seq, cseqOK: cseqOK}
	if ch, ok := rs.watches[key]; ok {
		close(ch)
		delete(rs.watches, key)
	}
}

// watch returns a channel closed when a request with key arrives (at once
// if it has arrived and was not taken yet), and a function to stop watching.
func (rs *rawStore) watch(key string) (<-chan struct{}, func()) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.watches == nil {
		rs.watches = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	if _, arrived := rs.m[key]; arrived {
		close(ch)
		return ch, func() {}
	}
	rs.watches[key] = ch
	return ch, func() {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		if rs.watches[key] == ch {
			delete(rs.watches, key)
		}
	}
}

func (rs *rawStore) take(key string) (rawRequest, bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	r, ok := rs.m[key]
	if ok {
		delete(rs.m, key)
	}
	return r, ok
}

// nextSeq numbers a request the tap did not see (should not happen).
func (rs *rawStore) nextSeq() uint64 {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.seq++
	return rs.seq
}

// rawFields are what the tap reads from a raw request.
type rawFields struct {
	ruri, branch, callID, cseqMethod string
	cseq                             uint64
}

// parseRawRequest extracts the Request-URI, top Via branch, Call-ID and
// CSeq from a raw request. It returns ok=false for responses and
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
	f.ruri = start[1]
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
	n, addr, err := c.PacketConn.ReadFrom(b)
	if err == nil && n > 0 {
		c.raws.put("UDP", addr.String(), b[:n])
	}
	return n, addr, err
}

// tapListener wraps accepted TCP connections in tapConn and tracks them, so
// that cleanup can close them and wait until sipgo's reader has seen the
// close.
type tapListener struct {
	net.Listener
	raws *rawStore

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
	tc := &tapConn{Conn: c, raws: l.raws, remote: c.RemoteAddr().String()}
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
// for the raw store. Read is only ever called by sipgo's single reader
// goroutine for the connection.
type tapConn struct {
	net.Conn
	raws   *rawStore
	remote string
	buf    []byte
	once   sync.Once
	done   func()
}

func (c *tapConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.feed(b[:n])
	}
	if err != nil {
		c.once.Do(c.done)
	}
	return n, err
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
		// Keep-alive CRLFs between messages (RFC 5626 §3.5.1).
		c.buf = bytes.TrimLeft(c.buf, "\r\n")
		end := bytes.Index(c.buf, []byte("\r\n\r\n"))
		if end < 0 {
			return
		}
		total := end + 4 + contentLength(c.buf[:end])
		if len(c.buf) < total {
			return
		}
		c.raws.put("TCP", c.remote, c.buf[:total])
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
