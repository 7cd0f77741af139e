package proxy

import (
	"bytes"
	"hash/maphash"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A request sipgo's parser refuses never reaches authproxy: sipgo logs it
// ("failed to parse", with its bytes) and drops it, and its sender, getting
// nothing, retransmits for 32 s. RFC 3261 §16.3 step 1 and RFC 4475 (a bad
// Request-URI, a malformed From, a CSeq number out of range, ...) want a
// 400 instead whenever one can be built. The parser's refusal reaches
// authproxy only through that log record (sipgoLogHandler), which has the
// bytes but not their source; so the UDP listener's socket notes where each request
// datagram came from, by a hash of its bytes, and the record finds it
// again. A 64-bit hash of the datagram costs some tens of nanoseconds on
// the read loop, against the tens of microseconds the datagram costs in
// all: the datagram is not parsed twice.

// recentLen is how many request datagrams recentDatagrams remembers: far
// more than can be read between a datagram's read and the parser's
// refusal of it, so the source of a refused datagram is still known when
// sipgo reports it.
const recentLen = 4096

// recentDatagrams remembers the source of the last recentLen request
// datagrams read over UDP, by a hash of their bytes.
type recentDatagrams struct {
	seed maphash.Seed

	mu   sync.Mutex
	next int
	ring [recentLen]recentDatagram
}

type recentDatagram struct {
	sum   uint64
	from  netip.AddrPort
	local net.Addr // the listener's address
}

func newRecentDatagrams() *recentDatagrams {
	return &recentDatagrams{seed: maphash.MakeSeed()}
}

// note remembers that data came from from, on the socket at local.
func (r *recentDatagrams) note(data []byte, from netip.AddrPort, local net.Addr) {
	sum := maphash.Bytes(r.seed, data)
	r.mu.Lock()
	r.ring[r.next] = recentDatagram{sum: sum, from: from, local: local}
	r.next = (r.next + 1) % recentLen
	r.mu.Unlock()
}

// find returns where the latest datagram with these bytes came from.
func (r *recentDatagrams) find(data string) (recentDatagram, bool) {
	sum := maphash.String(r.seed, data)
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 1; i <= recentLen; i++ {
		d := r.ring[(r.next-i+recentLen)%recentLen]
		if d.sum == sum && d.local != nil {
			return d, true
		}
	}
	return recentDatagram{}, false
}

// parseRefused handles a message sipgo's parser refused (data, as sipgo
// logged it): a request datagram whose source is known and from which a
// response can be built is answered 400; anything else is dropped. Either
// way it is counted.
func (p *Proxy) parseRefused(data string) {
	d, ok := p.recent.find(data)
	var res []byte
	if ok {
		res, ok = rawAnswer([]byte(data), "400 Bad Request (unparsable message)")
	}
	if !ok {
		p.cfg.Observer.Discarded("unparsable")
		return
	}
	p.cfg.Observer.Refused("bad-request")
	src := d.from.Addr()
	if p.silentTo(d.from) || p.limiter.enter(src, time.Now()) != limitOK {
		return
	}
	defer p.limiter.leave(src)
	p.answerDatagram(d.local, d.from, res)
}

// rawAnswer builds a response with status ("400 Bad Request") to a
// request from its bytes alone: the header lines RFC 3261 §8.2.6.2 copies
// into a response (every Via, From, To with a tag added, Call-ID, CSeq)
// copied as they are, continuation lines included, since they need not
// parse. It reports false for what gets no answer: a response, an ACK
// (§17.1.1.3), a request lacking one of those headers.
func rawAnswer(data []byte, status string) ([]byte, bool) {
	start, rest, ok := cutLine(data)
	if !ok || isResponseStart(start) || bytes.HasPrefix(start, []byte("ACK ")) {
		return nil, false
	}
	out := []byte("SIP/2.0 " + status + "\r\n")
	var seen [5]bool // Via, From, To, Call-ID, CSeq
	copying := false
	for {
		var line []byte
		if line, rest, ok = cutLine(rest); !ok || len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if copying {
				out = append(append(out, line...), "\r\n"...)
			}
			continue
		}
		name, _, _ := bytes.Cut(line, []byte(":"))
		i := copiedHeader(bytes.TrimRight(name, " \t"))
		// Via may repeat; the others are single-valued (RFC 3261 §20):
		// only their first line is copied, so the answer has one To tag.
		copying = i == 0 || (i > 0 && !seen[i])
		if !copying {
			continue
		}
		seen[i] = true
		out = append(out, line...)
		if i == 2 && !bytes.Contains(bytes.ToLower(line), []byte("tag=")) {
			out = append(out, ";tag="...)
			out = append(out, sip.GenerateTagN(16)...)
		}
		out = append(out, "\r\n"...)
	}
	if seen != [5]bool{true, true, true, true, true} {
		return nil, false
	}
	return append(out, "Content-Length: 0\r\n\r\n"...), true
}

// copiedHeader returns which of Via, From, To, Call-ID and CSeq (0 to 4)
// the header name (long or compact form, any case) is, -1 for none.
func copiedHeader(name []byte) int {
	switch {
	case equalFoldASCII(name, "via") || equalFoldASCII(name, "v"):
		return 0
	case equalFoldASCII(name, "from") || equalFoldASCII(name, "f"):
		return 1
	case equalFoldASCII(name, "to") || equalFoldASCII(name, "t"):
		return 2
	case equalFoldASCII(name, "call-id") || equalFoldASCII(name, "i"):
		return 3
	case equalFoldASCII(name, "cseq"):
		return 4
	}
	return -1
}

// cutLine returns the line at the start of data (without its line end,
// CRLF or a bare LF) and what follows; false when data has no line end.
func cutLine(data []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(data, '\n')
	if i < 0 {
		return nil, nil, false
	}
	return bytes.TrimSuffix(data[:i], []byte("\r")), data[i+1:], true
}
