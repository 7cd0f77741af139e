package proxy

import (
	"bytes"
	"strconv"
	"sync"
)

// scannedResponse is what the fast lane needs of a response to relay it
// as bytes (sipgo patch 13): its status, the branch of its top Via (ours,
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
	pos := line
	haveVia, haveCSeq := false, false
	for {
		end, ok := lineEnd(data, pos)
		if !ok {
			return r, false
		}
		l := data[pos : end-2]
		if len(l) == 0 {
			break // end of headers
		}
		if l[0] == ' ' || l[0] == '\t' {
			return r, false // a folded line: the parser's business
		}
		colon := bytes.IndexByte(l, ':')
		if colon <= 0 {
			return r, false
		}
		name := bytes.TrimRight(l[:colon], " \t")
		value := l[colon+1:]
		switch {
		case !haveVia && (equalFoldASCII(name, "via") || equalFoldASCII(name, "v")):
			branch, ok := viaBranch(value)
			if !ok {
				return r, false
			}
			r.branch, r.viaFrom, r.viaTo, haveVia = branch, pos, end, true
		case !haveCSeq && equalFoldASCII(name, "cseq"):
			off := pos + colon + 1
			numFrom, numTo, method, ok := scanCSeq(value)
			if !ok {
				return r, false
			}
			seq, err := strconv.ParseUint(string(value[numFrom:numTo]), 10, 32)
			if err != nil || seq > maxCSeq {
				return r, false
			}
			r.seq, r.method, r.seqFrom, r.seqTo, haveCSeq = uint32(seq), method, off+numFrom, off+numTo, true
		}
		pos = end
	}
	return r, haveVia && haveCSeq
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
		if branch == nil && string(name) == "branch" {
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

// relayBufs holds the buffers responses are relayed from; the answered
// store copies what it keeps.
var relayBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, 2048)
	return &b
}}
