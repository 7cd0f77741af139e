package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/hep"
)

// laneSocket is a UDP listener's socket as sipgo sees it (served with
// sipgo.Server.ServeUDP): authproxy owns the socket and reads every
// datagram first, on sipgo's read loop, before the parser. ReadFrom
// returns to sipgo only the datagrams sipgo must handle (a re-INVITE, the
// ACK and CANCEL of sipgo's INVITE transactions, requests creating a
// dialog, in-dialog requests the fast lane does not take, REGISTER,
// responses to sipgo's client transactions, what the fast lane hands
// over); it handles the others itself, synchronously:
//
//   - a datagram carrying the branch of one of authproxy's requests is
//     dropped unless it comes from where that request went (pinning.go);
//   - a request larger than MaxDatagramSize is answered 513 (validate.go);
//   - a CANCEL from anywhere but its INVITE's source is refused (cancel.go),
//     and each INVITE's source noted for that;
//   - an initial INVITE gets the lane's INVITE server transaction
//     (invitetx.go), which its retransmissions, its CANCEL and the ACK
//     for its non-2xx final response are matched to (invitetx_socket.go);
//   - an out-of-dialog non-INVITE request, and a dialog's client's BYE
//     (INFO, MESSAGE, OPTIONS, NOTIFY), is the fast lane's (fastlane.go,
//     fastlane_dialog.go), its retransmissions after the final response
//     answered from the socket's answered store, and so is a response to
//     a request the lane sent;
//   - a dialog's client's ACK for the 2xx last relayed in the dialog is
//     forwarded as sipgo's handler would (fastlane_ack.go).
//
// Every request datagram's source is noted for answering those the parser
// refuses (unparsable.go). sipgo writes through WriteTo, as authproxy does.
// Every datagram read and every one written is shown to the HEP capture
// (capture.go): the one tap of UDP traffic, both legs.
type laneSocket struct {
	net.PacketConn
	p        *Proxy
	local    netip.AddrPort // the bound address, as captures show it
	answered *answeredStore
	workers  udpWorkers // above udpHandOffAbove datagrams a second (udpworkers.go)
}

func (p *Proxy) newLaneSocket(pc net.PacketConn) *laneSocket {
	s := &laneSocket{PacketConn: pc, p: p, local: addrPortOf(pc.LocalAddr()), answered: newAnsweredStore(sip.Timer_J)}
	s.workers.back = make(chan handedDatagram, udpWorkerQueue)
	s.workers.quit = make(chan struct{})
	return s
}

// ReadFrom reads datagrams into b until one is for sipgo, and returns it.
// sipgo calls it from its read loop, the only goroutine that reads the
// socket.
func (s *laneSocket) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		if n, addr, ok := s.handedBack(b); ok {
			return n, addr, nil
		}
		n, addr, err := s.PacketConn.ReadFrom(b)
		if err != nil {
			if s.woken(err) {
				continue
			}
			s.stopWorkers()
			return n, addr, err
		}
		if n == 0 {
			return n, addr, nil
		}
		if c := s.p.capture.Load(); c != nil {
			c.tap(b[:n], hep.ProtoUDP, addrPortOf(addr), s.local)
		}
		if s.handOff(b[:n], addr) {
			continue
		}
		if !s.take(b[:n], addr) {
			return n, addr, nil
		}
	}
}

// WriteTo sends b to addr and shows it to the capture (net.PacketConn).
func (s *laneSocket) WriteTo(b []byte, addr net.Addr) (int, error) {
	n, err := s.PacketConn.WriteTo(b, addr)
	if c := s.p.capture.Load(); c != nil && err == nil {
		c.tap(b[:n], hep.ProtoUDP, s.local, addrPortOf(addr))
	}
	return n, err
}

// take handles the datagram data from addr and reports whether it did
// (dropped, answered or handled by the fast lane); false hands it to
// sipgo. A panic is recovered (the datagram dropped): it runs on the
// listener's read loop.
func (s *laneSocket) take(data []byte, addr net.Addr) (taken bool) {
	p := s.p
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("panic while reading a datagram", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			taken = true
		}
	}()
	from := addrPortOf(addr)
	if !p.screenDatagram(data, from, s.LocalAddr()) {
		return true
	}
	if isResponseStart(data) {
		return p.lane != nil && p.lane.takeResponse(data, addr)
	}
	return s.takeRequest(data, addr, from)
}

// takeRequest handles a request datagram the way take says.
func (s *laneSocket) takeRequest(data []byte, addr net.Addr, from netip.AddrPort) bool {
	p := s.p
	switch method := sip.RequestMethod(startMethod(data)); method {
	case "":
		return false
	case sip.INVITE:
		p.invites.note(data, "UDP", from, time.Now())
		return s.takeInvite(data, addr, from) // invitetx_socket.go
	case sip.CANCEL:
		return s.takeCancel(data, addr, from)
	case sip.ACK:
		return s.takeAck(data, addr) // fastlane_ack.go
	case sip.REGISTER:
		return false
	default:
		if createsDialog(method) || p.lane == nil {
			return false
		}
	}
	req := s.parseRequest(data, addr)
	if req == nil {
		return false
	}
	key, ok := serverTxKey(req)
	if !ok {
		return false // sipgo answers 400
	}
	if res, to, ok := s.answered.get(key, time.Now()); ok {
		// A retransmission after the final response (RFC 3261 §17.2.2),
		// of a request the lane took: answered whatever TakesRequest
		// would say now (a BYE's dialog may have gone since).
		if _, err := s.WriteTo(res, net.UDPAddrFromAddrPort(to)); err != nil {
			p.log.Debug("cannot resend final response", "error", err)
		}
		return true
	}
	if !p.lane.TakesRequest(req) {
		return false
	}
	tx := &liteTx{key: key, sock: s, src: from, raw: data}
	p.lane.HandleRequest(req, tx)
	tx.raw = nil // the read buffer is sipgo's again
	return true
}

// refuseCancel answers or drops a CANCEL cancelRefused refuses and
// reports whether it did.
func (s *laneSocket) refuseCancel(req *sip.Request, addr net.Addr, from netip.AddrPort) bool {
	if !s.p.cancelRefused(req, "UDP", from) {
		return false
	}
	if !s.p.limiter.drop() {
		if _, err := s.WriteTo(cancelRefusal(req), addr); err != nil {
			s.p.log.Debug("cannot answer CANCEL", "error", err)
		}
	}
	return true
}

// parseRequest parses data, a request datagram from addr, as sipgo would;
// nil if it is none (sipgo then refuses it).
func (s *laneSocket) parseRequest(data []byte, addr net.Addr) *sip.Request {
	msg, err := s.p.parser.ParseSIP(data)
	if err != nil {
		return nil
	}
	req, ok := msg.(*sip.Request)
	if !ok {
		return nil
	}
	req.SetTransport("UDP")
	req.SetSource(addr.String())
	return req
}

// startMethod returns the method of a request's start line, "" if data
// starts with no token and a space.
func startMethod(data []byte) string {
	i := bytes.IndexByte(data[:min(len(data), 32)], ' ')
	if i <= 0 || !isToken(data[:i]) {
		return ""
	}
	return string(data[:i])
}
