package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// startStreamLaneProxy runs a Proxy with a UDP and a TCP listener on
// loopback and one UDP upstream, and returns it with the TCP listener's
// address. timeout is UpstreamTimeout (0: the default).
func startStreamLaneProxy(tb testing.TB, upstream string, mode proxy.Preemptive, timeout time.Duration) (*proxy.Proxy, string) {
	tb.Helper()
	return startStreamProxy(tb, upstream, mode, timeout, proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"}, nil)
}

// startStreamProxy is startStreamLaneProxy with the stream listener lst
// (TCP or TLS), whose address it returns, and the configuration changed
// by mutate (nil: none).
func startStreamProxy(tb testing.TB, upstream string, mode proxy.Preemptive, timeout time.Duration, lst proxy.Listener, mutate func(*proxy.Config)) (*proxy.Proxy, string) {
	tb.Helper()
	store, err := credentials.NewStore([]credentials.Entry{{Username: "bench", Password: credentials.NewSecret("bench-secret"), Server: upstream}})
	if err != nil {
		tb.Fatal(err)
	}
	ready := make(chan struct{})
	cfg := proxy.Config{
		Listeners: []proxy.Listener{
			{Transport: "udp", Address: "127.0.0.1:0"},
			lst,
		},
		Upstreams:       []proxy.Upstream{{Name: "pbx", Address: upstream, Transport: "udp", Domains: []string{"pbx.example.com"}, Preemptive: mode}},
		Credentials:     store,
		Clients:         []proxy.ClientGroup{{Name: "loopback", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Upstreams: []string{"*"}}},
		UpstreamTimeout: timeout,
		ShutdownGrace:   time.Second,
		Logger:          slog.New(slog.DiscardHandler),
		Ready:           func() { close(ready) },
	}
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	runProxy(tb, p, ready, nil)
	return p, p.ListenAddrs()[strings.ToLower(lst.Transport)]
}

// streamClient is a SIP client on one TCP connection.
type streamClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialStreamClient(t testing.TB, addr string) *streamClient {
	t.Helper()
	return dialStream(t, addr, nil)
}

// dialStream connects to addr over TCP, or TLS with tlsConf.
func dialStream(t testing.TB, addr string, tlsConf *tls.Config) *streamClient {
	t.Helper()
	var conn net.Conn
	var err error
	if tlsConf != nil {
		conn, err = tls.Dial("tcp", addr, tlsConf)
	} else {
		conn, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &streamClient{conn: conn, r: bufio.NewReader(conn)}
}

// request is a request of method with Call-ID callID as the client sends
// it over TCP (Via with rport).
func (c *streamClient) request(method, callID string) []byte {
	transport := "TCP"
	if _, ok := c.conn.(*tls.Conn); ok {
		transport = "TLS"
	}
	return fmt.Appendf(nil, "%s sip:1002@pbx.example.com SIP/2.0\r\n"+
		"Via: SIP/2.0/%s %s;branch=z9hG4bK-%s;rport\r\nMax-Forwards: 70\r\n"+
		"From: <sip:1001@pbx.example.com>;tag=c-%s\r\nTo: <sip:1002@pbx.example.com>\r\n"+
		"Call-ID: %s\r\nCSeq: 1 %s\r\nX-Odd:   spaced\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		method, transport, c.conn.LocalAddr(), callID, callID, callID, method)
}

func (c *streamClient) send(t testing.TB, msgs ...[]byte) {
	t.Helper()
	if _, err := c.conn.Write(bytes.Join(msgs, nil)); err != nil {
		t.Fatal(err)
	}
}

// read returns the next message on the connection, framed by its
// Content-Length (mandatory on a stream, RFC 3261 §18.3).
func (c *streamClient) read(t testing.TB) []byte {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var msg []byte
	length := -1
	for {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("reading a response: %v (so far %q)", err, msg)
		}
		msg = append(msg, line...)
		if string(line) == "\r\n" {
			break
		}
		if name, v, ok := strings.Cut(string(line), ":"); ok && strings.EqualFold(strings.TrimSpace(name), "Content-Length") {
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if length < 0 {
		t.Fatalf("response without Content-Length on a stream:\n%s", msg)
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(c.r, body); err != nil {
		t.Fatal(err)
	}
	return append(msg, body...)
}

// onLane reports whether the fast lane of p waits for a response under
// the top branch of d, the request the upstream received.
func onLane(t *testing.T, p *proxy.Proxy, d datagram) bool {
	branches, _ := proxy.LaneState(p)
	return slices.Contains(branches, topBranch(t, d.data))
}

// Requests the fast lane takes from UDP clients take it from TCP and TLS
// clients too: forwarded as the client's bytes edited (its odd spelling
// kept, its Via given received and rport as on the usual path), waited on
// by the lane under the branch the upstream got, and answered on the
// connection, framed with a Content-Length even when the upstream's
// datagram had none.
func TestStreamLaneTakesRequest(t *testing.T) {
	serverTLS, clientTLS := testutil.SelfSignedTLS(t)
	for _, tc := range []struct {
		method string
		lst    proxy.Listener
		client *tls.Config
	}{
		{"OPTIONS", proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"}, nil},
		{"MESSAGE", proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"}, nil},
		{"PUBLISH", proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"}, nil},
		{"OPTIONS", proxy.Listener{Transport: "tls", Address: "127.0.0.1:0", TLS: serverTLS}, clientTLS},
	} {
		method := tc.method
		t.Run(tc.lst.Transport+"/"+method, func(t *testing.T) {
			up := startScriptedUpstream(t)
			p, addr := startStreamProxy(t, up.conn.LocalAddr().String(), proxy.PreemptiveOff, 0, tc.lst, nil)
			c := dialStream(t, addr, tc.client)
			c.send(t, c.request(method, "tcp-"+method))
			d := up.next(t, 5*time.Second)
			if !onLane(t, p, d) {
				t.Fatalf("%s from a %s client not on the fast lane", method, tc.lst.Transport)
			}
			_, port, _ := net.SplitHostPort(c.conn.LocalAddr().String())
			for _, want := range []string{"\r\nX-Odd:   spaced\r\n", ";rport=" + port, "received=127.0.0.1", "\r\nMax-Forwards: 69\r\n"} {
				if !bytes.Contains(d.data, []byte(want)) {
					t.Errorf("forwarded request lacks %q:\n%s", want, d.data)
				}
			}
			// A response datagram without Content-Length (optional over UDP).
			res := []byte("SIP/2.0 200 OK\r\n")
			res = appendResponseHeaders(res, d.data)
			res = bytes.Replace(res, []byte("Content-Length: 0\r\n"), nil, 1)
			if _, err := up.conn.WriteTo(res, d.src); err != nil {
				t.Fatal(err)
			}
			got := c.read(t)
			if firstLine(got) != "SIP/2.0 200 OK" || !bytes.Contains(got, []byte("\r\nCall-ID: tcp-"+method+"\r\n")) {
				t.Fatalf("client got:\n%s", got)
			}
			if vias := bytes.Count(got, []byte("\r\nVia:")); vias != 1 {
				t.Errorf("response has %d Via lines, want the client's alone:\n%s", vias, got)
			}
			testutil.Eventually(t, "lane empty", func() bool { _, n := proxy.LaneState(p); return n == 0 })
		})
	}
}

// A 401/407 to a TCP client's request is answered on the lane: the
// re-send carries credentials and CSeq+1, is waited on by the lane, and
// the client gets the final answer to it on its connection.
func TestStreamLaneChallenge(t *testing.T) {
	up := startScriptedUpstream(t)
	p, addr := startStreamLaneProxy(t, up.conn.LocalAddr().String(), proxy.PreemptiveOff, 0)
	c := dialStreamClient(t, addr)
	c.send(t, c.request("MESSAGE", "tcp-challenge"))
	first := up.next(t, 5*time.Second)
	up.answer(t, first, "407 Proxy Authentication Required",
		`Proxy-Authenticate: Digest realm="bench", nonce="n1", qop="auth", algorithm=MD5`)
	again := up.next(t, 5*time.Second)
	if !bytes.Contains(again.data, []byte("Proxy-Authorization: Digest")) || !bytes.Contains(again.data, []byte("CSeq: 2 MESSAGE")) {
		t.Fatalf("re-send without credentials or CSeq+1:\n%s", again.data)
	}
	if !onLane(t, p, again) {
		t.Fatal("re-send not waited on by the lane")
	}
	up.answer(t, again, "202 Accepted")
	got := c.read(t)
	if firstLine(got) != "SIP/2.0 202 Accepted" || !bytes.Contains(got, []byte("\r\nCSeq: 1 MESSAGE\r\n")) {
		t.Fatalf("client got:\n%s", got)
	}
}

// A TCP client does not retransmit; the lane does toward the UDP
// upstream (Timer E, same branch), and answers 408 on the connection when
// the upstream never answers (Timer F).
func TestStreamLaneTimeout(t *testing.T) {
	up := startScriptedUpstream(t)
	p, addr := startStreamLaneProxy(t, up.conn.LocalAddr().String(), proxy.PreemptiveOff, 2*time.Second)
	c := dialStreamClient(t, addr)
	c.send(t, c.request("OPTIONS", "tcp-timeout"))
	first := up.next(t, 5*time.Second)
	second := up.next(t, 5*time.Second)
	if b1, b2 := topBranch(t, first.data), topBranch(t, second.data); b1 != b2 {
		t.Fatalf("retransmission with branch %s, first sent with %s", b2, b1)
	}
	got := c.read(t)
	if firstLine(got) != "SIP/2.0 408 Request Timeout" {
		t.Fatalf("client got:\n%s", got)
	}
	testutil.Eventually(t, "lane empty", func() bool { _, n := proxy.LaneState(p); return n == 0 })
}

// A client whose connection closes while its request waits on the lane
// leaves nothing behind: the entry ends (its branch forgotten), and no
// goroutine is left for it.
func TestStreamLaneClientGone(t *testing.T) {
	up := startScriptedUpstream(t)
	p, addr := startStreamLaneProxy(t, up.conn.LocalAddr().String(), proxy.PreemptiveOff, 0)
	c := dialStreamClient(t, addr)
	c.send(t, c.request("OPTIONS", "warm-up"))
	up.answer(t, up.next(t, 5*time.Second), "200 OK")
	c.read(t)
	before := runtime.NumGoroutine()

	c2 := dialStreamClient(t, addr)
	c2.send(t, c2.request("MESSAGE", "tcp-gone"))
	d := up.next(t, 5*time.Second)
	if !onLane(t, p, d) {
		t.Fatal("request not on the lane")
	}
	c2.conn.Close()
	testutil.Eventually(t, "entry ended", func() bool {
		branches, n := proxy.LaneState(p)
		return n == 0 && len(branches) == 0
	})
	testutil.Eventually(t, "goroutines back", func() bool { return runtime.NumGoroutine() <= before })
	// A late answer goes nowhere, and the lane serves the next request.
	up.answer(t, d, "200 OK")
	c.send(t, c.request("OPTIONS", "after"))
	up.answer(t, up.next(t, 5*time.Second), "200 OK")
	if got := c.read(t); !bytes.Contains(got, []byte("Call-ID: after\r\n")) {
		t.Fatalf("client got:\n%s", got)
	}
}

// Two requests pipelined in one write are both forwarded on the lane, and
// their responses, sent by the upstream in the reverse order, arrive on
// the connection as two whole messages in that order.
func TestStreamLanePipelined(t *testing.T) {
	up := startScriptedUpstream(t)
	p, addr := startStreamLaneProxy(t, up.conn.LocalAddr().String(), proxy.PreemptiveOff, 0)
	c := dialStreamClient(t, addr)
	c.send(t, c.request("OPTIONS", "pipe-1"), c.request("MESSAGE", "pipe-2"))
	a, b := up.next(t, 5*time.Second), up.next(t, 5*time.Second)
	if !onLane(t, p, a) || !onLane(t, p, b) {
		t.Fatal("pipelined requests not on the lane")
	}
	up.answer(t, b, "202 Accepted", "Content-Type: text/plain")
	up.answer(t, a, "200 OK")
	first, second := c.read(t), c.read(t)
	for _, tc := range []struct {
		got          []byte
		status, call string
	}{{first, "SIP/2.0 202 Accepted", "Call-ID: " + callIDOf(b.data)}, {second, "SIP/2.0 200 OK", "Call-ID: " + callIDOf(a.data)}} {
		if firstLine(tc.got) != tc.status || !bytes.Contains(tc.got, []byte(tc.call+"\r\n")) {
			t.Errorf("got %q (%s), want %s with %s", firstLine(tc.got), callIDOf(tc.got), tc.status, tc.call)
		}
	}
}

// callIDOf returns the Call-ID of msg.
func callIDOf(msg []byte) string {
	_, rest, _ := bytes.Cut(msg, []byte("\r\nCall-ID: "))
	id, _, _ := bytes.Cut(rest, []byte("\r\n"))
	return string(id)
}

// A TCP client's request the lane hands to sipgo's client transactions
// (a next hop over TCP; a failover to the next upstream of a group after
// a 503) is answered on the client's connection all the same.
func TestStreamLaneOffLane(t *testing.T) {
	t.Run("tcp next hop", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		_, addr := startStreamProxy(t, ln.Addr().String(), proxy.PreemptiveOff, 0,
			proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"},
			func(cfg *proxy.Config) { cfg.Upstreams[0].Transport = "tcp" })
		c := dialStreamClient(t, addr)
		c.send(t, c.request("MESSAGE", "tcp-up"))
		conn, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		up := &streamClient{conn: conn, r: bufio.NewReader(conn)}
		req := up.read(t)
		up.send(t, appendResponseHeaders([]byte("SIP/2.0 202 Accepted\r\n"), req))
		if got := c.read(t); firstLine(got) != "SIP/2.0 202 Accepted" || callIDOf(got) != "tcp-up" {
			t.Fatalf("client got:\n%s", got)
		}
	})
	t.Run("failover", func(t *testing.T) {
		a, b := startScriptedUpstream(t), startScriptedUpstream(t)
		_, addr := startStreamProxy(t, a.conn.LocalAddr().String(), proxy.PreemptiveOff, 0,
			proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"},
			func(cfg *proxy.Config) {
				cfg.Upstreams[0].Domains = nil
				cfg.Upstreams = append(cfg.Upstreams, proxy.Upstream{Name: "pbx-b", Address: b.conn.LocalAddr().String(), Transport: "udp"})
				cfg.Groups = []proxy.UpstreamGroup{{Name: "carriers", Upstreams: []string{"pbx", "pbx-b"}, Domains: []string{"pbx.example.com"}}}
			})
		c := dialStreamClient(t, addr)
		c.send(t, c.request("OPTIONS", "tcp-failover"))
		a.answer(t, a.next(t, 5*time.Second), "503 Service Unavailable")
		b.answer(t, b.next(t, 5*time.Second), "200 OK")
		if got := c.read(t); firstLine(got) != "SIP/2.0 200 OK" || callIDOf(got) != "tcp-failover" {
			t.Fatalf("client got:\n%s", got)
		}
	})
}

// WebSocket clients (RFC 7118) keep sipgo's transactions: their requests
// never wait on the fast lane, and are answered on their WebSocket.
func TestStreamLaneNotForWebSocket(t *testing.T) {
	up := startScriptedUpstream(t)
	p, addr := startStreamProxy(t, up.conn.LocalAddr().String(), proxy.PreemptiveOff, 0,
		proxy.Listener{Transport: "ws", Address: "127.0.0.1:0", WebSocket: proxy.WebSocketListener{Path: "/sip", Origins: []string{"https://app.example.com"}}}, nil)
	hdr := http.Header{}
	hdr.Set("Origin", "https://app.example.com")
	d := ws.Dialer{Protocols: []string{"sip"}, Header: ws.HandshakeHeaderHTTP(hdr), Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, _, err := d.Dial(ctx, "ws://"+addr+"/sip")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &streamClient{conn: conn}
	msg := bytes.Replace(c.request("MESSAGE", "ws-1"), []byte("SIP/2.0/TCP"), []byte("SIP/2.0/WS"), 1)
	if err := wsutil.WriteClientText(conn, msg); err != nil {
		t.Fatal(err)
	}
	got := up.next(t, 5*time.Second)
	if onLane(t, p, got) {
		t.Fatal("request from a WebSocket client on the fast lane")
	}
	up.answer(t, got, "202 Accepted")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := wsutil.ReadServerText(conn)
	if err != nil {
		t.Fatal(err)
	}
	if firstLine(res) != "SIP/2.0 202 Accepted" {
		t.Fatalf("client got:\n%s", res)
	}
}
