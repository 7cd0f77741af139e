package proxy_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/authproxy/authproxy/proxy"
)

// BenchmarkOptionsLoopbackTCP sends one OPTIONS at a time from a client
// on one TCP connection through a running Proxy to a UDP upstream that
// answers as startByteUpstream does (the cached answer sent with the
// first try, one upstream round trip per request), and waits for the
// client's 200: the path of a TCP client toward a UDP PBX, allocations
// included.
//
//	go test ./proxy -run '^$' -bench OptionsLoopbackTCP -benchmem
func BenchmarkOptionsLoopbackTCP(b *testing.B) {
	upstream := startByteUpstream(b)
	_, addr := startStreamLaneProxy(b, upstream, proxy.PreemptiveAll, 0)
	c := dialStreamClient(b, addr)
	local := c.conn.LocalAddr().String()
	i := 0
	send := func() {
		i++
		msg := fmt.Appendf(nil, "OPTIONS sip:1002@pbx.example.com SIP/2.0\r\n"+
			"Via: SIP/2.0/TCP %s;branch=z9hG4bK-tb%d;rport\r\nMax-Forwards: 70\r\n"+
			"From: <sip:1001@pbx.example.com>;tag=tb%d\r\nTo: <sip:1002@pbx.example.com>\r\n"+
			"Call-ID: tb-%d@bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
			local, i, i, i)
		if _, err := c.conn.Write(msg); err != nil {
			b.Fatal(err)
		}
		res := c.read(b)
		if !bytes.HasPrefix(res, []byte("SIP/2.0 200 ")) {
			b.Fatalf("request %d: %q", i, firstLine(res))
		}
	}
	send() // the first challenge, outside the measurement
	b.ReportAllocs()
	for b.Loop() {
		send()
	}
}
