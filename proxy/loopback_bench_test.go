package proxy_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/proxy"
)

// BenchmarkForwardLoopback sends one MESSAGE at a time through a running
// Proxy on loopback UDP sockets to an upstream that challenges requests
// without Proxy-Authorization (407, qop=auth) and answers 200 to the
// rest, and waits for the client's 200: everything authproxy does for a
// request, sockets, sipgo's transport and transaction layers included.
// "preemptive" sends the cached answer with the first try (one upstream
// round trip per request), "challenged" pays the 407 round each time.
// The upstream is a few lines of byte matching, so nearly all the time
// and allocations reported are authproxy's (and the client's two
// syscalls).
//
//	go test ./proxy -run '^$' -bench ForwardLoopback -benchmem
func BenchmarkForwardLoopback(b *testing.B) {
	for _, mode := range []proxy.Preemptive{proxy.PreemptiveAll, proxy.PreemptiveOff} {
		name := "preemptive"
		if mode == proxy.PreemptiveOff {
			name = "challenged"
		}
		b.Run(name, func(b *testing.B) {
			upstream := startByteUpstream(b)
			addr := startLoopbackProxy(b, upstream, mode)
			conn, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			dst, err := net.ResolveUDPAddr("udp", addr)
			if err != nil {
				b.Fatal(err)
			}
			local := conn.LocalAddr().String()
			buf := make([]byte, 65535)
			i := 0
			send := func() {
				i++
				msg := fmt.Appendf(nil, "MESSAGE sip:1002@pbx.example.com SIP/2.0\r\n"+
					"Via: SIP/2.0/UDP %s;branch=z9hG4bK-lb%d;rport\r\nMax-Forwards: 70\r\n"+
					"From: <sip:1001@pbx.example.com>;tag=lb%d\r\nTo: <sip:1002@pbx.example.com>\r\n"+
					"Call-ID: lb-%d@bench\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
					local, i, i, i)
				if _, err := conn.WriteTo(msg, dst); err != nil {
					b.Fatal(err)
				}
				want := fmt.Appendf(nil, "Call-ID: lb-%d@bench", i)
				for {
					_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
					n, _, err := conn.ReadFrom(buf)
					if err != nil {
						b.Fatalf("request %d: no answer: %v", i, err)
					}
					if !bytes.Contains(buf[:n], want) {
						continue // a late answer to an earlier request
					}
					if !bytes.HasPrefix(buf[:n], []byte("SIP/2.0 200 ")) {
						b.Fatalf("request %d: %s", i, bytes.SplitN(buf[:n], []byte("\r\n"), 2)[0])
					}
					return
				}
			}
			send() // the first challenge, outside the measurement
			b.ReportAllocs()
			for b.Loop() {
				send()
			}
		})
	}
}

// BenchmarkCallLoopback places one call at a time through a running
// Proxy on loopback UDP sockets, as BenchmarkForwardLoopback sends
// MESSAGEs: INVITE (the client waits for its 200), ACK, and BYE with the
// Route a Record-Route of authproxy's gives (the client waits for its
// 200). "challenged" pays the 407 round on the INVITE and on the BYE,
// "preemptive" neither.
//
//	go test ./proxy -run '^$' -bench CallLoopback -benchmem
func BenchmarkCallLoopback(b *testing.B) {
	for _, mode := range []proxy.Preemptive{proxy.PreemptiveAll, proxy.PreemptiveOff} {
		name := "preemptive"
		if mode == proxy.PreemptiveOff {
			name = "challenged"
		}
		b.Run(name, func(b *testing.B) {
			upstream := startByteUpstream(b)
			addr := startLoopbackProxy(b, upstream, mode)
			c := newCallClient(b, addr)
			c.call(b) // the first challenges, outside the measurement
			b.ReportAllocs()
			for b.Loop() {
				c.call(b)
			}
		})
	}
}

// callClient places calls (callClient.call) through a proxy at dst.
type callClient struct {
	conn net.PacketConn
	dst  net.Addr
	buf  []byte
	n    int
}

func newCallClient(tb testing.TB, proxyAddr string) *callClient {
	tb.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	dst, err := net.ResolveUDPAddr("udp", proxyAddr)
	if err != nil {
		tb.Fatal(err)
	}
	return &callClient{conn: conn, dst: dst, buf: make([]byte, 65535)}
}

// call places one call: INVITE, ACK for its 200, BYE, each answered as
// startByteUpstream answers (To tag "up").
func (c *callClient) call(tb testing.TB) {
	tb.Helper()
	c.n++
	local := c.conn.LocalAddr().String()
	id := fmt.Sprintf("call-%d@bench", c.n)
	head := func(method string, seq int, branch string, toTag string) []byte {
		return fmt.Appendf(nil, "%s sip:1002@pbx.example.com SIP/2.0\r\n"+
			"Via: SIP/2.0/UDP %s;branch=z9hG4bK-%s;rport\r\nMax-Forwards: 70\r\n"+
			"From: <sip:1001@pbx.example.com>;tag=c%d\r\nTo: <sip:1002@pbx.example.com>%s\r\n"+
			"Call-ID: %s\r\nCSeq: %d %s\r\n",
			method, local, branch, c.n, toTag, id, seq, method)
	}
	inv := append(head("INVITE", 1, fmt.Sprintf("i%d", c.n), ""), fmt.Sprintf("Contact: <sip:1001@%s>\r\nContent-Length: 0\r\n\r\n", local)...)
	c.exchange(tb, inv, id, "INVITE")
	ack := append(head("ACK", 1, fmt.Sprintf("a%d", c.n), ";tag=up"), fmt.Sprintf("Route: <sip:%s;lr>\r\nContent-Length: 0\r\n\r\n", c.dst)...)
	if _, err := c.conn.WriteTo(ack, c.dst); err != nil {
		tb.Fatal(err)
	}
	bye := append(head("BYE", 2, fmt.Sprintf("b%d", c.n), ";tag=up"), fmt.Sprintf("Route: <sip:%s;lr>\r\nContent-Length: 0\r\n\r\n", c.dst)...)
	c.exchange(tb, bye, id, "BYE")
}

// exchange sends req and waits for its final response, a 200 (of Call-ID
// id, to method).
func (c *callClient) exchange(tb testing.TB, req []byte, id, method string) {
	tb.Helper()
	if _, err := c.conn.WriteTo(req, c.dst); err != nil {
		tb.Fatal(err)
	}
	wantID, wantCSeq := []byte("Call-ID: "+id+"\r\n"), []byte(" "+method+"\r\n")
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := c.conn.ReadFrom(c.buf)
		if err != nil {
			tb.Fatalf("%s of %s: no answer: %v", method, id, err)
		}
		res := c.buf[:n]
		if !bytes.Contains(res, wantID) || !bytes.Contains(res, wantCSeq) || bytes.HasPrefix(res, []byte("SIP/2.0 1")) {
			continue // a provisional response, or a late one to an earlier call
		}
		if !bytes.HasPrefix(res, []byte("SIP/2.0 200 ")) {
			tb.Fatalf("%s of %s: %s", method, id, bytes.SplitN(res, []byte("\r\n"), 2)[0])
		}
		return
	}
}

// startLoopbackProxy runs a Proxy with one UDP listener and one upstream,
// logging discarded, and returns the listener's address.
func startLoopbackProxy(tb testing.TB, upstream string, mode proxy.Preemptive) string {
	tb.Helper()
	store, err := credentials.NewStore([]credentials.Entry{{Username: "bench", Password: credentials.NewSecret("bench-secret"), Server: upstream}})
	if err != nil {
		tb.Fatal(err)
	}
	ready := make(chan struct{})
	p, err := proxy.New(proxy.Config{
		Listeners:     []proxy.Listener{{Transport: "udp", Address: "127.0.0.1:0"}},
		Upstreams:     []proxy.Upstream{{Name: "pbx", Address: upstream, Transport: "udp", Domains: []string{"pbx.example.com"}, Preemptive: mode}},
		Credentials:   store,
		Clients:       []proxy.ClientGroup{{Name: "loopback", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Upstreams: []string{"*"}}},
		ShutdownGrace: time.Second,
		Logger:        slog.New(slog.DiscardHandler),
		Ready:         func() { close(ready) },
	})
	if err != nil {
		tb.Fatal(err)
	}
	runProxy(tb, p, ready, nil)
	return p.ListenAddrs()["udp"]
}

// startByteUpstream answers every request on a loopback UDP socket by
// matching bytes, not parsing: 407 with a qop=auth challenge when it has
// no Proxy-Authorization, else 200 (the answer is not checked; the proxy
// tests check answers). It returns its address.
func startByteUpstream(tb testing.TB) string {
	tb.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		var out []byte
		for {
			n, src, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			msg := buf[:n]
			if bytes.HasPrefix(msg, []byte("SIP/2.0 ")) || bytes.HasPrefix(msg, []byte("ACK ")) {
				continue // an ACK gets no response
			}
			out = out[:0]
			if bytes.Contains(msg, []byte("\r\nProxy-Authorization:")) {
				out = append(out, "SIP/2.0 200 OK\r\n"...)
			} else {
				out = append(out, "SIP/2.0 407 Proxy Authentication Required\r\n"+
					`Proxy-Authenticate: Digest realm="bench", nonce="`...)
				out = strconv.AppendInt(out, time.Now().UnixNano(), 36)
				out = append(out, `", qop="auth", algorithm=MD5`+"\r\n"...)
			}
			out = appendResponseHeaders(out, msg)
			if _, err := conn.WriteTo(out, src); err != nil {
				return
			}
		}
	}()
	tb.Cleanup(func() {
		conn.Close()
		wg.Wait()
	})
	return conn.LocalAddr().String()
}

// appendResponseHeaders appends to out what a response to the request msg
// copies from it (Via, From, To with a tag, Call-ID, CSeq), an empty body's
// Content-Length and the blank line.
func appendResponseHeaders(out, msg []byte) []byte {
	for _, line := range bytes.Split(msg, []byte("\r\n"))[1:] {
		if len(line) == 0 {
			break
		}
		for _, h := range []string{"Via:", "From:", "Call-ID:", "CSeq:"} {
			if bytes.HasPrefix(line, []byte(h)) {
				out = append(append(out, line...), "\r\n"...)
			}
		}
		if bytes.HasPrefix(line, []byte("To:")) {
			out = append(append(out, line...), ";tag=up\r\n"...)
		}
	}
	return append(out, "Content-Length: 0\r\n\r\n"...)
}
