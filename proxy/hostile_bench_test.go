package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// BenchmarkHostileChecks measures what the checks against hostile input
// add to each message on the fast lane: the socket's screen on a request
// datagram (branch scan, source noted by hash) and on a response to a
// pinned request (branch scan, pin lookup), the request validation, and
// pinning then releasing a request's branch.
//
//	go test ./proxy -run '^$' -bench HostileChecks -benchmem
func BenchmarkHostileChecks(b *testing.B) {
	p := &Proxy{sourceGuards: sourceGuards{pins: newPinTable(), recent: newRecentDatagrams()}, cfg: Config{UpstreamTimeout: time.Second, Observer: noObserver{}}}
	p.rt.Store(&routing{})
	p.limiter = newLimiter(Limits{})
	const reqData = "MESSAGE sip:1002@pbx.example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-lb1;rport\r\nMax-Forwards: 70\r\n" +
		"From: <sip:1001@pbx.example.com>;tag=lb1\r\nTo: <sip:1002@pbx.example.com>\r\n" +
		"Call-ID: lb-1@bench\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
	const resData = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.0123456789abcdef;rport=5060\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-lb1;rport=40000;received=127.0.0.1\r\n" +
		"From: <sip:1001@pbx.example.com>;tag=lb1\r\nTo: <sip:1002@pbx.example.com>;tag=up\r\n" +
		"Call-ID: lb-1@bench\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
	if err := p.pinRequest("z9hG4bK.0123456789abcdef", sip.MESSAGE, "UDP", "127.0.0.2:5060"); err != nil {
		b.Fatal(err)
	}
	local := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060}
	client := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	upstream := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 5060}
	b.Run("screen, request", func(b *testing.B) {
		data := []byte(reqData)
		from := client.AddrPort()
		b.ReportAllocs()
		for b.Loop() {
			if !p.screenDatagram(data, from, local) {
				b.Fatal("dropped")
			}
		}
	})
	b.Run("screen, response", func(b *testing.B) {
		data := []byte(resData)
		from := upstream.AddrPort()
		b.ReportAllocs()
		for b.Loop() {
			if !p.screenDatagram(data, from, local) {
				b.Fatal("dropped")
			}
		}
	})
	b.Run("request validation", func(b *testing.B) {
		m, err := sip.ParseMessage([]byte(reqData))
		if err != nil {
			b.Fatal(err)
		}
		req := m.(*sip.Request)
		b.ReportAllocs()
		for b.Loop() {
			if code, _ := malformedRequest(req); code != 0 {
				b.Fatal(code)
			}
		}
	})
	b.Run("pin and release", func(b *testing.B) {
		branch := sip.GenerateBranchN(16)
		b.ReportAllocs()
		for b.Loop() {
			if err := p.pinRequest(branch, sip.MESSAGE, "UDP", "127.0.0.2:5060"); err != nil {
				b.Fatal(err)
			}
			p.pins.release(branch, false, time.Now())
		}
	})
}
