package wsgate_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy/tcpguard"
	"github.com/authproxy/authproxy/proxy/wsgate"
)

// testSecret signs the tokens of the tests.
var testSecret = []byte("0123456789abcdef-test-secret")

// env is a gate and one "ws" listener on 127.0.0.1 served by a sipgo
// server that answers OPTIONS with 200.
type env struct {
	gate   *wsgate.Gate
	addr   string
	closes chan netip.AddrPort
}

func start(t *testing.T, lim wsgate.Limits, lc wsgate.ListenerConfig) *env {
	t.Helper()
	e := &env{closes: make(chan netip.AddrPort, 2000)}
	e.gate = wsgate.New(wsgate.Config{
		Limits: lim,
		Classify: func(a netip.Addr) tcpguard.Peer {
			if a == netip.MustParseAddr("127.0.0.66") {
				return tcpguard.Refused
			}
			return tcpguard.Client
		},
		OnClose: func(_ string, remote netip.AddrPort) { e.closes <- remote },
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lc.Transport = "WS"
	l := e.gate.Listen(ln, lc)
	e.addr = ln.Addr().String()
	ua, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	srv.OnOptions(func(req *sip.Request, tx sip.ServerTransaction) {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeWS(l) }()
	t.Cleanup(func() {
		_ = l.Close()
		_ = ua.Close()
		<-done
	})
	return e
}

// upgrade sends a raw upgrade request from a connection bound to src
// ("" for any) and returns the HTTP status and the connection.
func upgrade(t *testing.T, addr, src, target string, hdr map[string]string) (int, net.Conn, *bufio.Reader) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	h := map[string]string{"Host": "authproxy.test", "Upgrade": "websocket", "Connection": "Upgrade",
		"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "sip",
		"Origin": "https://app.example.com"}
	for k, v := range hdr {
		h[k] = v
	}
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\n", target)
	for k, v := range h {
		if v != "" {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, c, br
	}
	_ = c.SetReadDeadline(time.Time{})
	if res.StatusCode == http.StatusSwitchingProtocols && res.Header.Get("Sec-WebSocket-Protocol") != "sip" {
		t.Fatalf("101 without Sec-WebSocket-Protocol: sip: %v", res.Header)
	}
	return res.StatusCode, c, br
}

// TestUpgradeChecks: the upgrade request is checked before sipgo sees
// the connection: path, Origin, subprotocol, version, token.
func TestUpgradeChecks(t *testing.T) {
	e := start(t, wsgate.Limits{}, wsgate.ListenerConfig{Path: "/sip", Origins: []string{"https://app.example.com"}, TokenSecret: testSecret})
	good := wsgate.MintToken(testSecret, "1001", time.Now().Add(time.Hour))
	for _, tc := range []struct {
		name, target string
		hdr          map[string]string
		want         int
	}{
		{"valid token in the URL", "/sip?token=" + good, nil, 101},
		{"valid token in a header", "/sip", map[string]string{"Authorization": "Bearer " + good}, 101},
		{"no Origin (not a browser)", "/sip?token=" + good, map[string]string{"Origin": ""}, 101},
		{"page of another origin", "/sip?token=" + good, map[string]string{"Origin": "https://evil.example"}, 403},
		{"no subprotocol", "/sip?token=" + good, map[string]string{"Sec-WebSocket-Protocol": ""}, 400},
		{"wrong subprotocol", "/sip?token=" + good, map[string]string{"Sec-WebSocket-Protocol": "chat, xmpp"}, 400},
		{"other path", "/other?token=" + good, nil, 404},
		{"not an upgrade", "/sip?token=" + good, map[string]string{"Upgrade": ""}, 426},
		{"old version", "/sip?token=" + good, map[string]string{"Sec-WebSocket-Version": "8"}, 426},
		{"bad key", "/sip?token=" + good, map[string]string{"Sec-WebSocket-Key": "short"}, 400},
		{"no token", "/sip", nil, 401},
		{"expired token", "/sip?token=" + wsgate.MintToken(testSecret, "1001", time.Now().Add(-time.Second)), nil, 401},
		{"token of another secret", "/sip?token=" + wsgate.MintToken([]byte("another-secret-0123456789"), "1001", time.Now().Add(time.Hour)), nil, 401},
		{"token for too long", "/sip?token=" + wsgate.MintToken(testSecret, "1001", time.Now().Add(48*time.Hour)), nil, 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, _, _ := upgrade(t, e.addr, "", tc.target, tc.hdr); code != tc.want {
				t.Fatalf("status %d, want %d", code, tc.want)
			}
		})
	}
	s := e.gate.Stats()
	if s.Refused[wsgate.ReasonOrigin] != 1 || s.Refused[wsgate.ReasonSubprotocol] != 2 || s.Refused[wsgate.ReasonToken] != 4 {
		t.Fatalf("refusals %v", s.Refused)
	}
}

// dial opens a WebSocket with gobwas's client.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := ws.Dialer{Protocols: []string{"sip"}, Timeout: 5 * time.Second}
	c, _, _, err := d.Dial(context.Background(), "ws://"+addr+"/")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func options(branch string) []byte {
	return []byte("OPTIONS sip:authproxy.test SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK" + branch + "\r\n" +
		"From: <sip:a@x.invalid>;tag=1\r\nTo: <sip:authproxy.test>\r\nCall-ID: " + branch + "\r\nCSeq: 1 OPTIONS\r\n" +
		"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
}

// readSIP returns the next SIP message from the server (control frames
// handled by wsutil).
func readSIP(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	data, _, err := wsutil.ReadServerData(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(data)
}

// writeFrames writes msg split in parts frames of op (then continuation).
func writeFrames(t *testing.T, c net.Conn, op ws.OpCode, msg []byte, parts int) {
	t.Helper()
	step := (len(msg) + parts - 1) / parts
	for i := 0; i < len(msg); i += step {
		end := min(i+step, len(msg))
		f := ws.NewFrame(op, end == len(msg), msg[i:end])
		if i > 0 {
			f.Header.OpCode = ws.OpContinuation
		}
		if err := ws.WriteFrame(c, ws.MaskFrame(f)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMessages: text and binary frames both carry SIP (RFC 7118 §4.2), a
// fragmented message is joined, a Ping is answered with its Pong.
func TestMessages(t *testing.T) {
	e := start(t, wsgate.Limits{}, wsgate.ListenerConfig{})
	c := dial(t, e.addr)
	for i, tc := range []struct {
		op    ws.OpCode
		parts int
	}{{ws.OpText, 1}, {ws.OpBinary, 1}, {ws.OpText, 3}, {ws.OpBinary, 7}} {
		branch := fmt.Sprintf("msg%d", i)
		writeFrames(t, c, tc.op, options(branch), tc.parts)
		if got := readSIP(t, c); !strings.HasPrefix(got, "SIP/2.0 200") || !strings.Contains(got, branch) {
			t.Fatalf("op %v in %d parts: got %q", tc.op, tc.parts, got)
		}
	}
	if err := ws.WriteFrame(c, ws.MaskFrame(ws.NewPingFrame([]byte("hi")))); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := ws.ReadHeader(c)
	if err != nil || h.OpCode != ws.OpPong || h.Length != 2 {
		t.Fatalf("answer to Ping: %+v %v", h, err)
	}
	_, _ = io.CopyN(io.Discard, c, h.Length)
}

// closeCode reads frames until a Close and returns its status code.
func closeCode(t *testing.T, c net.Conn) ws.StatusCode {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		h, err := ws.ReadHeader(c)
		if err != nil {
			t.Fatalf("no Close frame: %v", err)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c, p); err != nil {
			t.Fatal(err)
		}
		if h.OpCode == ws.OpClose {
			if len(p) < 2 {
				return 0
			}
			return ws.StatusCode(binary.BigEndian.Uint16(p))
		}
	}
}

// TestHostileFrames: a frame announcing more than the maximum message is
// refused with 1009 before its payload is read; unmasked frames, a stray
// continuation and reserved bits close with 1002. Each close reaches
// OnClose once.
func TestHostileFrames(t *testing.T) {
	e := start(t, wsgate.Limits{MaxMessageSize: 8192}, wsgate.ListenerConfig{})
	for _, tc := range []struct {
		name  string
		frame []byte
		want  ws.StatusCode
	}{
		{"1 GB frame header", rawHeader(ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Length: 1 << 30}), ws.StatusMessageTooBig},
		{"2^63-1 frame header", rawHeader(ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Length: 1<<63 - 1}), ws.StatusMessageTooBig},
		{"unmasked", frameBytes(ws.NewTextFrame(options("u"))), ws.StatusProtocolError},
		{"continuation first", frameBytes(ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, []byte("x")))), ws.StatusProtocolError},
		{"reserved bits", func() []byte {
			f := ws.MaskFrame(ws.NewTextFrame([]byte("x")))
			f.Header.Rsv = 4
			return frameBytes(f)
		}(), ws.StatusProtocolError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, e.addr)
			if _, err := c.Write(tc.frame); err != nil {
				t.Fatal(err)
			}
			if got := closeCode(t, c); got != tc.want {
				t.Fatalf("close code %d, want %d", got, tc.want)
			}
			select {
			case <-e.closes:
			case <-time.After(10 * time.Second):
				t.Fatal("OnClose not called")
			}
		})
	}
	t.Run("fragments adding up past the maximum", func(t *testing.T) {
		c := dial(t, e.addr)
		chunk := make([]byte, 4096)
		writeFrames(t, c, ws.OpText, append(append(chunk, chunk...), chunk...), 3)
		if got := closeCode(t, c); got != ws.StatusMessageTooBig {
			t.Fatalf("close code %d, want 1009", got)
		}
	})
	if s := e.gate.Stats(); s.Closed[wsgate.ReasonTooLarge] != 3 || s.Closed[wsgate.ReasonProtocol] != 3 {
		t.Fatalf("closed %v", s.Closed)
	}
}

func rawHeader(h ws.Header) []byte {
	var b strings.Builder
	_ = ws.WriteHeader(&b, h)
	return []byte(b.String())
}

func frameBytes(f ws.Frame) []byte {
	var b strings.Builder
	_ = ws.WriteFrame(&b, f)
	return []byte(b.String())
}

// TestIdleAndPing: a client that answers Pings stays connected past the
// idle timeout; one that sends nothing at all is closed.
func TestIdleAndPing(t *testing.T) {
	e := start(t, wsgate.Limits{IdleTimeout: 1500 * time.Millisecond, PingInterval: 300 * time.Millisecond}, wsgate.ListenerConfig{})
	live := dial(t, e.addr)
	// wsutil answers each Ping with a Pong while it waits for data.
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = live.SetReadDeadline(time.Now().Add(4 * time.Second))
		_, _, _ = wsutil.ReadServerData(live)
	})
	deaf := dial(t, e.addr)
	testutil.Eventually(t, "the silent connection closed for idleness", func() bool {
		return e.gate.Stats().Closed[wsgate.ReasonIdle] == 1
	})
	_ = deaf.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := deaf.Read(make([]byte, 64)); err != nil {
			break // closed by the gate
		}
	}
	// The live one still answers.
	writeFrames(t, live, ws.OpText, options("live"), 1)
	wg.Wait()
	testutil.Eventually(t, "one connection open (the live one)", func() bool { return e.gate.Stats().Open == 1 })
}

// TestThousandIdleConnections: 1,000 connections from one address that
// never send an upgrade hold at most the per-source cap, the rest are
// refused at once, the held ones are closed by the handshake timeout, and
// a client from another address is served throughout. A source no client
// group admits is closed before anything is read.
func TestThousandIdleConnections(t *testing.T) {
	const perSource = 50
	e := start(t, wsgate.Limits{MaxConnsPerSource: perSource, MaxConns: 200, HandshakeTimeout: time.Second}, wsgate.ListenerConfig{})
	conns := make([]net.Conn, 0, 1000)
	for range 1000 {
		c, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	testutil.Eventually(t, "950 refused", func() bool {
		return e.gate.Stats().Refused[wsgate.ReasonPerSourceLimit] == 1000-perSource
	})
	if s := e.gate.Stats(); s.Open > perSource {
		t.Fatalf("%d open, cap %d", s.Open, perSource)
	}
	if code, c, _ := upgrade(t, e.addr, "127.0.0.2", "/", nil); code != 101 {
		t.Fatalf("another source during the flood: %d", code)
	} else {
		writeFrames(t, c, ws.OpText, options("other"), 1)
		if got := readSIP(t, c); !strings.HasPrefix(got, "SIP/2.0 200") {
			t.Fatalf("another source: %q", got)
		}
	}
	testutil.Eventually(t, "the held connections closed by the handshake timeout", func() bool {
		return e.gate.Stats().Refused[wsgate.ReasonHandshake] == perSource
	})
	if code, _, _ := upgrade(t, e.addr, "127.0.0.66", "/", nil); code != 0 {
		t.Fatalf("refused source got HTTP %d", code)
	}
	if s := e.gate.Stats(); s.Refused[wsgate.ReasonSourceDenied] != 1 {
		t.Fatalf("refusals %v", s.Refused)
	}
}
