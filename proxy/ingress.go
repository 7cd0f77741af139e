package proxy

import (
	"net"
	"net/netip"
	"time"

	"github.com/emiago/sipgo/sip"
)

// screenDatagram applies the checks against hostile input to a datagram
// a UDP listener (local) read from from, before anything parses it, and
// reports whether it may go on. It drops a datagram carrying the branch
// of one of authproxy's requests unless it comes from where that request
// went (pinning.go), answers 513 to a request larger than MaxDatagramSize,
// and remembers where each request came from, for answering those the
// parser refuses (unparsable.go).
func (p *Proxy) screenDatagram(data []byte, from netip.AddrPort, local net.Addr) bool {
	if !p.datagramFromWhereSent(data, from) {
		p.discarded("response-source", "message dropped: carries the branch of a request authproxy sent elsewhere", from)
		return false
	}
	if datagramTooLarge(len(data)) {
		p.refuseTooLarge(data, from, local)
		return false
	}
	if !isResponseStart(data) {
		p.recent.note(data, from, local)
	}
	return true
}

// addrPortOf returns a's address and port (unmapped), zero if a is no IP
// address.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// isResponseStart reports whether data starts like a SIP response.
func isResponseStart(data []byte) bool {
	return len(data) >= 4 && (data[0]|0x20) == 's' && (data[1]|0x20) == 'i' && (data[2]|0x20) == 'p' && data[3] == '/'
}

// discarded counts a message dropped unanswered and logs it, throttled.
func (p *Proxy) discarded(reason, msg string, from netip.AddrPort) {
	p.cfg.Observer.Discarded(reason)
	if ok, suppressed := p.inputLog.allow(reason, time.Now()); ok {
		p.log.Warn(msg, "reason", reason, "source", from.String(), "suppressed", suppressed)
	}
}

// refuseTooLarge answers a request datagram larger than MaxDatagramSize
// with 513 (RFC 3261 §21.5.11), built from the request's header lines
// (rawAnswer: a datagram longer than sipgo's read buffer arrives cut
// short, and need not parse); one no response can be built for is dropped
// and counted. sipgo never sees it.
func (p *Proxy) refuseTooLarge(data []byte, from netip.AddrPort, local net.Addr) {
	res, ok := rawAnswer(data, "513 Message Too Large")
	if !ok {
		p.discarded("unparsable", "oversized message dropped", from)
		return
	}
	p.cfg.Observer.Refused("message-too-large")
	if ok, suppressed := p.inputLog.allow("message-too-large", time.Now()); ok {
		p.log.Warn("request refused", "reason", "message-too-large", "bytes", len(data), "source", from.String(), "suppressed", suppressed)
	}
	if p.silentTo(from) {
		return
	}
	p.answerDatagram(local, from, res)
}

// answerable reports whether a response can be built for req: RFC 3261
// §8.2.6.2 copies Via, From, To, Call-ID and CSeq into it. An ACK is never
// answered (§17.1.1.3).
func answerable(req *sip.Request) bool {
	return req.Method != sip.ACK && req.Via() != nil && req.From() != nil && req.To() != nil &&
		req.CallID() != nil && req.CSeq() != nil
}

// silentTo reports whether a refusal toward from goes unanswered: with
// Limits.Drop, a source no client group admits and that is no upstream
// gets no answer (a flood then costs no outgoing traffic).
func (p *Proxy) silentTo(from netip.AddrPort) bool {
	if !p.limiter.drop() {
		return false
	}
	rt := p.rt.Load()
	return rt.groupFor(from.Addr()) == nil && rt.fromUpstream(from.Addr()) == nil
}

// answerDatagram sends msg, a response built without a transaction, to
// to from the UDP listener whose address is local (the one the request
// came in on), as RFC 3581 asks of a response to a request over UDP: to
// the address and port it came from.
func (p *Proxy) answerDatagram(local net.Addr, to netip.AddrPort, msg []byte) {
	if !to.IsValid() || local == nil {
		return
	}
	for _, l := range p.listeners {
		if l.sock != nil && l.local == local.String() {
			if _, err := l.sock.WriteTo(msg, net.UDPAddrFromAddrPort(to)); err != nil {
				p.log.Debug("cannot send response", "to", to.String(), "error", err)
			}
			return
		}
	}
}

// inspectStream is the TCP and TLS listeners' message inspector
// (tcpguard.Config.Inspect): it sees each complete message an inbound
// connection carries before sipgo reads it, as screenDatagram sees
// datagrams. A response carrying the branch of one of authproxy's
// requests is dropped unless it came on the connection that request went
// on (pinning.go); a CANCEL from anywhere but its INVITE's source is
// refused with 403 (cancel.go), and each INVITE's source noted for that.
func (p *Proxy) inspectStream(msg []byte, transport string, from netip.AddrPort) (pass bool, answer []byte) {
	if isResponseStart(msg) {
		if !p.fromWhereSent(msg, transport, from) {
			p.discarded("response-source", "message dropped: carries the branch of a request authproxy sent elsewhere", from)
			return false, nil
		}
		return true, nil
	}
	switch sip.RequestMethod(startMethod(msg)) {
	case sip.INVITE:
		p.invites.note(msg, transport, from, time.Now())
	case sip.CANCEL:
		parsed, err := p.parser.ParseSIP(msg)
		if err != nil {
			return true, nil // sipgo refuses it
		}
		req, ok := parsed.(*sip.Request)
		if ok && p.cancelRefused(req, transport, from) {
			return false, cancelRefusal(req)
		}
	}
	return true, nil
}
