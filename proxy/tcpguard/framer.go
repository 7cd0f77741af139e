package tcpguard

import (
	"bytes"
	"strconv"
)

// Event is what ends the bytes one call to Framer.Next consumed.
type Event uint8

// The events of a SIP stream.
const (
	// More: every byte given was consumed and the stream needs more to
	// reach its next event; or a message starts right after the bytes
	// consumed (InMessage then turns true on the next call).
	More Event = iota
	// End: the bytes consumed complete a message (its last body byte, or
	// the empty line ending its headers when it has no body).
	End
	// KeepAlive: the bytes consumed complete a CRLF between messages (RFC
	// 5626 §3.5.1: a pong, or the first half of a ping).
	KeepAlive
	// Ping: the bytes consumed complete a double CRLF between messages, a
	// keep-alive ping that wants a CRLF pong (RFC 5626 §3.5.1).
	Ping
	// TooLarge: the message in progress exceeds the maximum size; the
	// bytes consumed are those that still fit. The stream cannot go on:
	// there is no boundary to resume at (RFC 3261 §18.3).
	TooLarge
	// Malformed: the stream breaks the framing rules (RFC 3261 §7.5,
	// §18.3): a CR not followed by LF, a stray byte between messages, a
	// header block without a usable Content-Length, or a header name or
	// Content-Length value too long to be real. The stream cannot go on.
	Malformed
)

var eventNames = [...]string{"more", "end", "keep-alive", "ping", "too-large", "malformed"}

func (e Event) String() string {
	if int(e) < len(eventNames) {
		return eventNames[e]
	}
	return "event(" + strconv.Itoa(int(e)) + ")"
}

// Bounds on what the framer buffers of one message.
const (
	// maxHeaderProbe bounds the bytes of a header line the framer keeps to
	// learn its name and, for Content-Length, its value. Real header names
	// are a few dozen bytes; a name still unknown past this many bytes (a
	// colon after a kilobyte of padding) is treated as malformed rather
	// than buffered without bound.
	maxHeaderProbe = 1024
	// maxKept bounds the start line and the headers kept to answer a
	// message that turns out too large (Via, From, To, Call-ID, CSeq: RFC
	// 3261 §8.2.6.2). A request's Via stack is well under this; a message
	// whose kept headers exceed it is not answered, only closed.
	maxKept = 16 << 10
)

type framerState uint8

const (
	stateIdle      framerState = iota // between messages: CRLF keep-alives only
	stateStartLine                    // in the start line
	stateHeaders                      // at or in a header line
	stateBody                         // in the body
	stateDead                         // after TooLarge or Malformed
)

// Framer follows the message boundaries of one SIP stream (TCP or TLS) as
// RFC 3261 §18.3 draws them, and as sipgo's stream parser finds them: a
// start line and header lines each ending in CRLF, an empty line, then as
// many body bytes as the last Content-Length header (or its compact form
// "l") says. CRLFs before a start line are keep-alives (RFC 3261 §7.5, RFC
// 5626 §3.5.1), not part of any message. A header line starting with a
// space or tab continues the one before (RFC 3261 §7.3.1).
//
// The framer reads untrusted bytes: it keeps only a bounded part of each
// message (the start line and the headers a response needs, and one header
// line's first bytes), never more than MaxSize in all. The zero value has
// no size limit.
type Framer struct {
	// MaxSize is the largest message (start line, headers and body)
	// accepted; 0 means no limit.
	MaxSize int

	state framerState
	size  int  // bytes of the current message consumed so far
	cr    bool // the last byte consumed was a CR that a LF must follow
	// crlfs counts the CRLFs between messages since the last ping.
	crlfs int
	// lineLen counts the bytes of the current line, its CRLF excluded.
	lineLen int
	// hdr holds the header being read (its physical lines joined with
	// CRLF), up to maxHeaderProbe bytes; hdrOver marks it cut short.
	hdr     []byte
	hdrOver bool
	inHdr   bool // a header line has been started and not yet finished
	folded  bool // the header has continuation lines
	// bodyLeft is the number of body bytes still to come.
	bodyLeft int
	// contentLength is the value of the last Content-Length seen, -1 if
	// none was.
	contentLength int
	// kept holds the start line and the headers a response copies, each
	// with its CRLF; keptOver marks that some did not fit.
	kept     []byte
	keptOver bool
	// final is the event that ended the stream (TooLarge or Malformed).
	final Event
}

// InMessage reports whether a message has started and not yet ended.
func (f *Framer) InMessage() bool {
	return f.state == stateStartLine || f.state == stateHeaders || f.state == stateBody
}

// Next consumes a prefix of data and reports the event that ends it. The
// bytes consumed are either all keep-alive bytes between messages or all
// bytes of one message (msg true), so a caller can pass the messages on and
// drop the keep-alives. After TooLarge or Malformed, Next consumes nothing
// and repeats the event.
func (f *Framer) Next(data []byte) (n int, msg bool, ev Event) {
	switch f.state {
	case stateDead:
		return 0, false, f.final
	case stateIdle:
		return f.idle(data)
	case stateBody:
		n = min(len(data), f.bodyLeft)
		f.bodyLeft -= n
		f.size += n
		if f.bodyLeft == 0 {
			f.endMessage()
			return n, true, End
		}
		return n, true, More
	}
	return f.head(data)
}

// idle consumes keep-alive CRLFs up to the first byte of a message.
func (f *Framer) idle(data []byte) (int, bool, Event) {
	for i, c := range data {
		switch {
		case f.cr && c == '\n':
			f.cr = false
			f.crlfs++
			if f.crlfs == 2 {
				f.crlfs = 0
				return i + 1, false, Ping
			}
			return i + 1, false, KeepAlive
		case f.cr || c == '\n':
			// RFC 3261 §7.5 allows only CRLFs before a start line; sipgo's
			// parser gives up on anything else, and so does the framer.
			return f.fail(i, false)
		case c == '\r':
			f.cr = true
		default:
			f.startMessage()
			return i, false, More
		}
	}
	return len(data), false, More
}

func (f *Framer) startMessage() {
	f.state = stateStartLine
	f.size, f.crlfs, f.cr = 0, 0, false
	f.contentLength = -1
	f.kept, f.keptOver = f.kept[:0], false
	f.hdr, f.hdrOver, f.inHdr, f.folded, f.lineLen = f.hdr[:0], false, false, false, 0
}

func (f *Framer) endMessage() {
	f.state = stateIdle
	f.kept = f.kept[:0]
	f.hdr = f.hdr[:0]
	if cap(f.kept) > 4<<10 {
		f.kept = nil // a large Via stack is not kept for the life of the connection
	}
}

// fail ends the stream after consuming n bytes.
func (f *Framer) fail(n int, msg bool) (int, bool, Event) {
	f.state, f.final = stateDead, Malformed
	f.kept, f.hdr = nil, nil
	return n, msg, Malformed
}

// tooLarge ends the stream after consuming the n bytes that fit.
func (f *Framer) tooLarge(n int) (int, bool, Event) {
	f.state, f.final = stateDead, TooLarge
	f.hdr = nil
	return n, true, TooLarge
}

// head consumes bytes of the start line and the header block.
func (f *Framer) head(data []byte) (int, bool, Event) {
	for i := 0; i < len(data); i++ {
		c := data[i]
		if f.MaxSize > 0 && f.size >= f.MaxSize {
			return f.tooLarge(i)
		}
		if f.cr {
			if c != '\n' {
				return f.fail(i, true) // sipgo: "line has no CRLF"
			}
			f.cr = false
			f.size++
			switch ev := f.endLine(); ev {
			case More:
				if f.state == stateBody {
					return i + 1, true, More
				}
				continue
			case TooLarge:
				// The LF that completes the header block is held back: the
				// message never completes for whoever reads on.
				f.size--
				return f.tooLarge(i)
			case Malformed:
				return f.fail(i+1, true)
			default:
				return i + 1, true, ev
			}
		}
		if c == '\r' {
			f.cr = true
			f.size++
			continue
		}
		if f.state == stateHeaders && f.lineLen == 0 {
			if (c == ' ' || c == '\t') && f.inHdr {
				// RFC 3261 §7.3.1 folding: this line continues the header.
				f.probe(crlf)
				f.folded = true
			} else if !f.finishHeader() {
				return f.fail(i, true)
			} else {
				f.inHdr = true
			}
		}
		// The rest of the line up to its CR goes at once.
		j := bytes.IndexByte(data[i:], '\r')
		if j < 0 {
			j = len(data) - i
		}
		if f.MaxSize > 0 && f.size+j > f.MaxSize {
			j = f.MaxSize - f.size
			f.lineBytes(data[i : i+j])
			f.size += j
			return f.tooLarge(i + j)
		}
		f.lineBytes(data[i : i+j])
		f.size += j
		i += j - 1
	}
	return len(data), true, More
}

var crlf = []byte("\r\n")

// lineBytes records bytes of the current line (no CR in them).
func (f *Framer) lineBytes(b []byte) {
	f.lineLen += len(b)
	if f.state == stateStartLine {
		f.keep(b)
		return
	}
	f.probe(b)
}

// probe appends b to the header being read, up to maxHeaderProbe bytes.
func (f *Framer) probe(b []byte) {
	if room := maxHeaderProbe - len(f.hdr); len(b) > room {
		b = b[:max(room, 0)]
		f.hdrOver = true
	}
	f.hdr = append(f.hdr, b...)
}

// keep appends b to the kept bytes, up to maxKept.
func (f *Framer) keep(b []byte) {
	if f.keptOver {
		return
	}
	if len(f.kept)+len(b) > maxKept {
		f.keptOver = true
		return
	}
	f.kept = append(f.kept, b...)
}

// endLine handles the CRLF ending a line of the start line or the header
// block: More while the block goes on, else End, TooLarge or Malformed
// when it is complete, or More after switching to the body.
func (f *Framer) endLine() Event {
	empty := f.lineLen == 0
	f.lineLen = 0
	if f.state == stateStartLine {
		f.keep(crlf)
		f.state = stateHeaders
		return More
	}
	if !empty {
		return More
	}
	// The CRLF of an empty line: the header block is complete.
	if !f.finishHeader() {
		return Malformed
	}
	return f.endHeaders()
}

// endHeaders decides what follows a complete header block.
func (f *Framer) endHeaders() Event {
	switch {
	case f.contentLength < 0:
		// RFC 3261 §18.3: over a stream, Content-Length is mandatory;
		// without it the message has no end.
		return Malformed
	case f.MaxSize > 0 && f.contentLength > f.MaxSize-f.size:
		return TooLarge
	case f.contentLength == 0:
		f.endMessage()
		return End
	}
	f.state = stateBody
	f.bodyLeft = f.contentLength
	return More
}

// finishHeader takes in the header read so far, if any, once the line
// after it shows that it is complete. It reports false when the header
// makes the stream malformed.
func (f *Framer) finishHeader() bool {
	if !f.inHdr {
		return true
	}
	f.inHdr = false
	line := f.hdr
	if f.folded {
		line = foldHeader(f.hdr)
	}
	over := f.hdrOver
	f.hdr, f.hdrOver, f.folded = f.hdr[:0], false, false
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		// sipgo rejects a line without a colon; the framer has no use for
		// it, unless it was cut short and its name is unknown.
		return !over
	}
	// As sipgo's parser: the name trimmed, compared in ASCII lowercase.
	name := bytes.TrimSpace(line[:colon])
	switch {
	case equalFoldASCII(name, "content-length"), equalFoldASCII(name, "l"):
		if over {
			return false
		}
		// As sipgo reads it: the trimmed value, decimal, 32 bits.
		v, err := strconv.ParseUint(string(bytes.TrimSpace(line[colon+1:])), 10, 32)
		if err != nil {
			return false
		}
		f.contentLength = int(v)
	case responseHeader(name):
		if over {
			f.keptOver = true
			return true
		}
		f.keep(line)
		f.keep(crlf)
	}
	return true
}

// responseHeader reports whether a response copies the header named name
// (RFC 3261 §8.2.6.2), in full or compact form.
func responseHeader(name []byte) bool {
	for _, h := range [...]string{"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"} {
		if equalFoldASCII(name, h) {
			return true
		}
	}
	return false
}

// equalFoldASCII reports whether b equals the lowercase ASCII s, ignoring
// ASCII case only (as sipgo does: no Unicode folding).
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

// foldHeader joins a header's physical lines (separated by CRLF in raw)
// into one, as sipgo's parser does (RFC 3261 §7.3.1): trailing blanks of
// the first line and leading and trailing blanks of each continuation
// dropped, one space between them.
func foldHeader(raw []byte) []byte {
	first, rest, folded := bytes.Cut(raw, []byte("\r\n"))
	if !folded {
		return raw
	}
	out := make([]byte, 0, len(raw))
	out = append(out, bytes.TrimRight(first, " \t")...)
	for {
		var cont []byte
		cont, rest, folded = bytes.Cut(rest, []byte("\r\n"))
		out = append(out, ' ')
		out = append(out, bytes.Trim(cont, " \t")...)
		if !folded {
			return out
		}
	}
}

// Kept returns the start line and the headers a response to the message in
// progress copies, as read so far, and whether all of them were kept. The
// bytes are the framer's: valid until the next call to Next.
func (f *Framer) Kept() ([]byte, bool) {
	return f.kept, !f.keptOver
}
