package proxy

import (
	"bytes"
	"strconv"
	"strings"
	"sync"

	"github.com/emiago/sipgo/sip"
)

// scannedResponse is what the fast lane needs of a response to relay it
// as bytes (HandleRawResponse): its status, the branch of its top Via (ours,
// if the response is to a request the lane sent), its CSeq, and where the
// top Via's header line and the CSeq number lie in the datagram.
type scannedResponse struct {
	status  int
	branch  []byte // the top Via's branch parameter
	method  []byte // the CSeq method
	seq     uint32 // the CSeq number
	viaFrom int    // the top Via header line, CRLF included: data[viaFrom:viaTo]
	viaTo   int
	seqFrom int // the CSeq number: data[seqFrom:seqTo]
	seqTo   int
}

// scanResponse reads what scannedResponse holds from a response datagram
// without parsing it into headers. It is strict: anything it is not sure
// to read the way sipgo's parser does (folded lines, bare LF line ends, a
// top Via line holding several values, a quoted branch, a malformed status
// line or CSeq) makes it report false, and the datagram goes to the
// parser as before. The bytes are untrusted (FuzzScanResponse).
func scanResponse(data []byte) (scannedResponse, bool) {
	var r scannedResponse
	const prefix = "SIP/2.0 "
	if len(data) < len(prefix)+4 || string(data[:len(prefix)]) != prefix {
		return r, false
	}
	code := data[len(prefix) : len(prefix)+3]
	if code[0] < '1' || code[0] > '6' || !isDigit(code[1]) || !isDigit(code[2]) || data[len(prefix)+3] != ' ' {
		return r, false
	}
	r.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	line, ok := lineEnd(data, 0)
	if !ok {
		return r, false
	}
	haveVia, haveCSeq := false, false
	for pos := line; ; {
		h, last, ok := nextHeader(data, pos)
		if !ok {
			return r, false
		}
		if last {
			break
		}
		switch {
		case !haveVia && h.isVia():
			branch, ok := viaBranch(h.value(data))
			if !ok {
				return r, false
			}
			r.branch, r.viaFrom, r.viaTo, haveVia = branch, h.from, h.end, true
		case !haveCSeq && equalFoldASCII(h.name, "cseq"):
			value := h.value(data)
			numFrom, numTo, method, ok := scanCSeq(value)
			if !ok {
				return r, false
			}
			seq, err := strconv.ParseUint(string(value[numFrom:numTo]), 10, 32)
			if err != nil || seq > maxCSeq {
				return r, false
			}
			r.seq, r.method, r.seqFrom, r.seqTo, haveCSeq = uint32(seq), method, h.valueAt+numFrom, h.valueAt+numTo, true
		}
		pos = h.end
	}
	return r, haveVia && haveCSeq
}

// headerLine is one header line of a datagram: data[from:end], its CRLF
// included; its name trimmed, its value from valueAt to end-2.
type headerLine struct {
	from, valueAt, end int
	name               []byte
}

func (h *headerLine) value(data []byte) []byte { return data[h.valueAt : h.end-2] }

func (h *headerLine) isVia() bool {
	return equalFoldASCII(h.name, "via") || equalFoldASCII(h.name, "v")
}

// nextHeader reads the header line at pos. last reports the empty line
// that ends the headers (h.end is then where the body starts); ok is false
// for what the byte paths leave to sipgo's parser: no CRLF, a bare LF or
// stray CR, a folded line, a line without a name and colon.
func nextHeader(data []byte, pos int) (h headerLine, last, ok bool) {
	end, ok := lineEnd(data, pos)
	if !ok {
		return h, false, false
	}
	h.from, h.end = pos, end
	l := data[pos : end-2]
	if len(l) == 0 {
		return h, true, true
	}
	if l[0] == ' ' || l[0] == '\t' {
		return h, false, false // a folded line
	}
	colon := bytes.IndexByte(l, ':')
	if colon <= 0 {
		return h, false, false
	}
	h.name = bytes.TrimRight(l[:colon], " \t")
	h.valueAt = pos + colon + 1
	return h, false, true
}

// lineEnd returns the index just past the CRLF ending the line that
// starts at from; false if there is none, or a bare LF comes first.
func lineEnd(data []byte, from int) (int, bool) {
	i := bytes.IndexByte(data[from:], '\n')
	if i < 1 || data[from+i-1] != '\r' {
		return 0, false
	}
	// A CR inside the line is no line end the parser would agree on.
	if bytes.IndexByte(data[from:from+i-1], '\r') >= 0 {
		return 0, false
	}
	return from + i + 1, true
}

// viaBranch returns the branch parameter of a Via header value written
// the way authproxy writes its own ("SIP/2.0/UDP host:port;branch=...",
// upstreams copy it back verbatim), false for any other spelling: those
// are left to the parser, whose reading of odd Vias is its own.
func viaBranch(v []byte) ([]byte, bool) {
	v = bytes.TrimLeft(v, " \t")
	rest, ok := bytes.CutPrefix(v, []byte("SIP/2.0/UDP "))
	if !ok {
		return nil, false
	}
	sentBy, params, ok := bytes.Cut(rest, []byte(";"))
	if !ok || !validSentBy(sentBy) {
		return nil, false
	}
	var branch []byte
	for p := range bytes.SplitSeq(bytes.TrimRight(params, " \t"), []byte(";")) {
		name, val, hasVal := bytes.Cut(p, []byte("="))
		if !isToken(name) || (hasVal && !isToken(val)) {
			return nil, false
		}
		if string(name) == "branch" {
			if branch != nil {
				return nil, false // sipgo keeps the last of two, a reader the first
			}
			branch = val
		}
	}
	return branch, len(branch) > 0
}

// validSentBy reports whether b is a host (name, IPv4 or bracketed IPv6
// address) with an optional port.
func validSentBy(b []byte) bool {
	host, port := b, []byte(nil)
	if len(b) > 0 && b[0] == '[' {
		end := bytes.IndexByte(b, ']')
		if end < 2 {
			return false
		}
		for _, c := range b[1:end] {
			if !isHex(c) && c != ':' && c != '.' {
				return false
			}
		}
		host, port = nil, b[end+1:]
		if len(port) > 0 {
			var ok bool
			if port, ok = bytes.CutPrefix(port, []byte(":")); !ok || len(port) == 0 {
				return false
			}
		} else {
			port = nil
		}
	} else if i := bytes.IndexByte(b, ':'); i >= 0 {
		host, port = b[:i], b[i+1:]
		if len(port) == 0 {
			return false
		}
	}
	for _, c := range host {
		if !isDigit(c) && !isLetter(c) && c != '.' && c != '-' {
			return false
		}
	}
	if host != nil && len(host) == 0 {
		return false
	}
	if port != nil {
		if len(port) > 5 {
			return false
		}
		for _, c := range port {
			if !isDigit(c) {
				return false
			}
		}
	}
	return true
}

// isToken reports whether b is a non-empty RFC 3261 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !isDigit(c) && !isLetter(c) && bytes.IndexByte([]byte("-.!%*_+`'~"), c) < 0 {
			return false
		}
	}
	return true
}

func isLetter(b byte) bool { return (b|0x20) >= 'a' && (b|0x20) <= 'z' }

func isHex(b byte) bool { return isDigit(b) || ((b|0x20) >= 'a' && (b|0x20) <= 'f') }

// scanCSeq finds the number and the method of a CSeq value the way
// sipgo reads it: digits, one space or tab, a method (a token; white
// space around it aside).
func scanCSeq(v []byte) (numFrom, numTo int, method []byte, ok bool) {
	i := 0
	for i < len(v) && (v[i] == ' ' || v[i] == '\t') {
		i++
	}
	numFrom = i
	for i < len(v) && isDigit(v[i]) {
		i++
	}
	numTo = i
	if numTo == numFrom || numTo-numFrom > 10 || i == len(v) || (v[i] != ' ' && v[i] != '\t') {
		return 0, 0, nil, false
	}
	method = bytes.TrimRight(v[i+1:], " \t")
	if !isToken(method) {
		return 0, 0, nil, false
	}
	return numFrom, numTo, method, true
}

// maxCSeq is the largest CSeq number (RFC 3261 §8.1.1.5: less than 2**31),
// as sipgo's parser enforces.
const maxCSeq = 1<<31 - 1

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// equalFoldASCII reports whether b equals the lower-case ASCII s, ignoring
// case.
func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// relayBytes appends to dst the response data as relayed to the sender:
// the top Via line (ours) removed and the CSeq number set to seq (the
// sender's own, when authproxy shifted it).
func (r *scannedResponse) relayBytes(dst, data []byte, seq uint32) []byte {
	// The two edits, in the order they appear in data.
	type edit struct {
		from, to int
		seq      bool
	}
	first, second := edit{r.viaFrom, r.viaTo, false}, edit{r.seqFrom, r.seqTo, true}
	if r.seq == seq {
		second = edit{r.viaTo, r.viaTo, false} // nothing to change there
	}
	if second.from < first.from {
		first, second = second, first
	}
	pos := 0
	for _, e := range [2]edit{first, second} {
		dst = append(dst, data[pos:e.from]...)
		if e.seq {
			dst = strconv.AppendUint(dst, uint64(seq), 10)
		}
		pos = e.to
	}
	return append(dst, data[pos:]...)
}

// datagramBufs holds the buffers the fast lane builds datagrams in
// (relayed responses, edited requests); what outlives the send (the
// answered store's copy, laneEntry.raw) is copied out.
var datagramBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, 2048)
	return &b
}}

// forwardEdits are the changes authproxy makes to a request it forwards
// toward an upstream (§16.6), decided once from the parsed request and
// applied either to a parsed copy (buildForward) or to the bytes of the
// datagram it came in (the fast lane, appendForward): both must send the
// same request (FuzzAppendForward checks).
type forwardEdits struct {
	dropRoutes   int    // remove the first Route entries, authproxy's own (§16.4)
	dropAuth     bool   // remove Authorization and Proxy-Authorization: clients hold no passwords
	dropIdentity bool   // remove identityHeaders: the client group is not trusted with them
	maxForwards  uint32 // the Max-Forwards to send (§16.6 step 3)
	addMF        bool   // the request had none: append it
	rport        string // the value for the top Via's empty rport (RFC 3581), "" for none
	received     string // the top Via's received, "" for none
	seq          uint32 // the CSeq number to send
	off          uint32 // what authproxy shifted the CSeq number by (0: seq is the client's)
}

// applyToRequest makes the edits on fwd, a clone of the request.
func (e *forwardEdits) applyToRequest(fwd *sip.Request) {
	for range e.dropRoutes {
		removeFirst(fwd, "Route")
	}
	if e.dropAuth {
		removeAll(fwd, "Authorization")
		removeAll(fwd, "Proxy-Authorization")
	}
	if e.dropIdentity {
		for _, h := range identityHeaders {
			removeAll(fwd, h)
		}
	}
	// The clone shares the MaxForwardsHeader pointer with the original, so
	// replace, never Dec.
	mf := sip.MaxForwardsHeader(e.maxForwards)
	if e.addMF {
		fwd.AppendHeader(&mf)
	} else {
		fwd.ReplaceHeader(&mf)
	}
	if v := fwd.Via(); v != nil {
		if e.rport != "" {
			v.Params.Add("rport", e.rport)
		}
		if e.received != "" {
			v.Params.Add("received", e.received)
		}
	}
	if cs := fwd.CSeq(); cs != nil {
		cs.SeqNo = e.seq
	}
}

// appendForward appends to dst the request in data (the datagram req was
// parsed from, whose body is bodyLen bytes) with the edits made, our Via
// line (CRLF included) on top and the header lines extra (each "Name:
// value") after the request's own. It reports false, having appended
// nothing usable, when it cannot be sure to edit the bytes the way
// applyToRequest edits the parsed request (what nextHeader refuses, a top
// Via line holding several values or spelt unusually, no Content-Length,
// bytes after the body, a Route line to remove holding several values):
// the caller then builds a parsed copy as before.
func (e *forwardEdits) appendForward(dst, data []byte, bodyLen int, via []byte, extra []authAnswer) ([]byte, bool) {
	start := len(dst)
	fail := func() ([]byte, bool) { return dst[:start], false }
	pos, ok := lineEnd(data, 0)
	if !ok {
		return fail()
	}
	dst = append(dst, data[:pos]...)
	dst = append(dst, via...)
	seenVia, seenMF, seenCSeq, seenLength := false, false, false, false
	routes := e.dropRoutes // Route lines still to remove
	for {
		h, last, ok := nextHeader(data, pos)
		if !ok {
			return fail()
		}
		if last {
			pos = h.end
			break
		}
		name, from, valueAt, end := h.name, h.from, h.valueAt, h.end
		switch {
		case routes > 0 && equalFoldASCII(name, "route"):
			// The parser makes one entry of a line without a comma, so
			// the first lines are the first entries; a line holding
			// several is left to the parsed copy.
			if bytes.IndexByte(data[valueAt:end-2], ',') >= 0 {
				return fail()
			}
			routes--
		case e.dropAuth && (equalFoldASCII(name, "authorization") || equalFoldASCII(name, "proxy-authorization")):
		case e.dropIdentity && isIdentityHeader(name):
		case !seenVia && h.isVia():
			seenVia = true
			if dst, ok = e.appendTopVia(dst, data[from:end-2], valueAt-from); !ok {
				return fail()
			}
			dst = append(dst, "\r\n"...)
		case !seenMF && equalFoldASCII(name, "max-forwards"):
			seenMF = true
			if e.addMF {
				return fail() // the parser saw none
			}
			v := data[valueAt : end-2]
			lead := len(v) - len(bytes.TrimLeft(v, " \t"))
			dst = append(dst, data[from:valueAt+lead]...)
			dst = strconv.AppendUint(dst, uint64(e.maxForwards), 10)
			dst = append(dst, "\r\n"...)
		case !seenCSeq && equalFoldASCII(name, "cseq"):
			seenCSeq = true
			numFrom, numTo, _, ok := scanCSeq(data[valueAt : end-2])
			if !ok {
				return fail()
			}
			dst = append(dst, data[from:valueAt+numFrom]...)
			dst = strconv.AppendUint(dst, uint64(e.seq), 10)
			dst = append(dst, data[valueAt+numTo:end]...)
		default:
			// Without Content-Length sipgo's parser adds one: so must we.
			seenLength = seenLength || equalFoldASCII(name, "content-length") || equalFoldASCII(name, "l")
			dst = append(dst, data[from:end]...)
		}
		pos = end
	}
	if !seenVia || !seenCSeq || !seenLength || routes > 0 || len(data)-pos != bodyLen || (!seenMF && !e.addMF) {
		return fail()
	}
	if e.addMF {
		dst = append(dst, "Max-Forwards: "...)
		dst = strconv.AppendUint(dst, uint64(e.maxForwards), 10)
		dst = append(dst, "\r\n"...)
	}
	for _, a := range extra {
		dst = append(dst, a.header...)
		dst = append(dst, ": "...)
		dst = append(dst, a.value...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	return append(dst, data[pos:]...), true
}

// appendTopVia appends the client's top Via header line (line, without
// CRLF; its value from valueAt) with rport and received set: the first
// parameter of that name gets the value, as sipgo's HeaderParams.Add does,
// or the parameter is added at the end.
func (e *forwardEdits) appendTopVia(dst, line []byte, valueAt int) ([]byte, bool) {
	v := bytes.TrimRight(line[valueAt:], " \t")
	paramsAt := clientViaParams(v)
	if paramsAt < 0 {
		return dst, false
	}
	at := valueAt + paramsAt // line[at] is the ';' before the first parameter
	end := valueAt + len(v)
	dst = append(dst, line[:at]...)
	setRport, setReceived := e.rport != "", e.received != ""
	for at < end {
		next := bytes.IndexByte(line[at+1:end], ';')
		if next < 0 {
			next = end
		} else {
			next += at + 1
		}
		p := line[at+1 : next]
		name, _, _ := bytes.Cut(p, []byte("="))
		switch {
		case setRport && string(name) == "rport":
			dst = append(dst, ";rport="...)
			dst = append(dst, e.rport...)
			setRport = false
		case setReceived && string(name) == "received":
			dst = append(dst, ";received="...)
			dst = append(dst, e.received...)
			setReceived = false
		default:
			dst = append(dst, line[at:next]...)
		}
		at = next
	}
	if setRport {
		dst = append(dst, ";rport="...)
		dst = append(dst, e.rport...)
	}
	if setReceived {
		dst = append(dst, ";received="...)
		dst = append(dst, e.received...)
	}
	return append(dst, line[end:]...), true
}

// clientViaParams returns where the parameters of a client's Via value
// begin (the first ';'), or -1 unless the value is one via-parm spelt
// plainly: "SIP/2.0/<transport> <host>[:<port>]" and parameters that are
// tokens or token=token. Anything else is left to the parser's copy.
func clientViaParams(v []byte) int {
	lead := len(v) - len(bytes.TrimLeft(v, " \t"))
	rest, ok := bytes.CutPrefix(v[lead:], []byte("SIP/2.0/"))
	if !ok {
		return -1
	}
	sp := bytes.IndexByte(rest, ' ')
	if sp < 0 || !isToken(rest[:sp]) {
		return -1
	}
	rest = rest[sp+1:]
	semi := bytes.IndexByte(rest, ';')
	if semi < 0 || !validSentBy(rest[:semi]) {
		return -1
	}
	for p := range bytes.SplitSeq(rest[semi+1:], []byte(";")) {
		name, val, hasVal := bytes.Cut(p, []byte("="))
		if !isToken(name) || (hasVal && !isToken(val)) {
			return -1
		}
	}
	return len(v) - len(rest) + semi
}

// isIdentityHeader reports whether name is one of identityHeaders.
func isIdentityHeader(name []byte) bool {
	for _, h := range identityHeaders {
		if bytes.EqualFold(name, []byte(h)) {
			return true
		}
	}
	return false
}

// appendVia appends our Via header line for a request sent over UDP from
// host:port with branch, as ourVia's header serialises
// (TestAppendVia).
func appendVia(dst []byte, host string, port int, branch string) []byte {
	dst = append(dst, "Via: SIP/2.0/UDP "...)
	if strings.IndexByte(host, ':') >= 0 && !strings.HasPrefix(host, "[") {
		dst = append(dst, '[')
		dst = append(dst, host...)
		dst = append(dst, ']')
	} else {
		dst = append(dst, host...)
	}
	if port > 0 {
		dst = append(dst, ':')
		dst = strconv.AppendInt(dst, int64(port), 10)
	}
	dst = append(dst, ";branch="...)
	dst = append(dst, branch...)
	return append(dst, ";rport\r\n"...)
}
