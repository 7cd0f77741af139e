package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// The hostile-input suite runs a Proxy on loopback with scripted peers
// the test drives byte by byte: clients, upstreams and an attacker. Only
// 127.0.0.1 is admitted (client group "lan"); 127.0.0.66 is a source no
// group admits. Each upstream has a credential whose password must never
// show, nor any digest response a client sent.

// Secrets the logs must never show.
const (
	hostilePassword       = "hostile-trunk-password"
	hostileClientResponse = "0123456789abcdef0123456789abcdef" // a digest response a client sends
	hostileClientCnonce   = "client-cnonce-secret"
)

// hostileWait bounds a wait for something that must happen.
const hostileWait = testutil.EventuallyLimit

// refusedHost is a loopback address no client group admits.
const refusedHost = "127.0.0.66"

// hostileEnv is a running proxy and the peers around it.
type hostileEnv struct {
	udp, tcp string       // the proxy's listeners
	upA, upB *udpPeer     // UDP upstreams pbx-a (127.0.0.1) and pbx-b (127.0.0.3)
	upT      *tcpUpstream // TCP upstream pbx-t (127.0.0.1)
	obs      *countingObserver
	logs     *syncBuffer
}

type hostileOptions struct {
	drop bool // limits.deny = drop
}

func startHostile(t *testing.T, o hostileOptions) *hostileEnv {
	t.Helper()
	e := &hostileEnv{
		upA:  newUDPPeer(t, "127.0.0.1"),
		upB:  newUDPPeer(t, "127.0.0.3"),
		upT:  newTCPUpstream(t, "127.0.0.1"),
		obs:  newCountingObserver(),
		logs: &syncBuffer{},
	}
	var creds []credentials.Entry
	for _, a := range []string{e.upA.addr(), e.upB.addr(), e.upT.addr()} {
		creds = append(creds, credentials.Entry{Username: "trunk", Password: credentials.NewSecret(hostilePassword), Server: a})
	}
	store, err := credentials.NewStore(creds)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	p, err := proxy.New(proxy.Config{
		Listeners: []proxy.Listener{{Transport: "udp", Address: "127.0.0.1:0"}, {Transport: "tcp", Address: "127.0.0.1:0"}},
		Upstreams: []proxy.Upstream{
			{Name: "pbx-a", Address: e.upA.addr(), Domains: []string{"pbx-a.example.com"}, Default: true},
			{Name: "pbx-b", Address: e.upB.addr(), Domains: []string{"pbx-b.example.com"}},
			{Name: "pbx-t", Address: e.upT.addr(), Transport: "tcp", Domains: []string{"pbx-t.example.com"}},
		},
		Credentials:   store,
		Clients:       []proxy.ClientGroup{{Name: "lan", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Upstreams: []string{"*"}}},
		Limits:        proxy.Limits{Drop: o.drop},
		ShutdownGrace: time.Second,
		Observer:      e.obs,
		Logger:        slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Ready:         func() { close(ready) },
	})
	if err != nil {
		t.Fatal(err)
	}
	runProxy(t, p, ready, func() { e.checkLogs(t) })
	addrs := p.ListenAddrs()
	e.udp, e.tcp = addrs["udp"], addrs["tcp"]
	return e
}

// checkLogs fails the test if the log shows a secret: the trunk password,
// or a digest response or cnonce a client sent.
func (e *hostileEnv) checkLogs(t *testing.T) {
	t.Helper()
	logs := e.logs.String()
	for _, secret := range []string{hostilePassword, hostileClientResponse, hostileClientCnonce} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log shows %q:\n%s", secret, logs)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// countingObserver counts Refused and Discarded reasons.
type countingObserver struct {
	mu        sync.Mutex
	refused   map[string]int
	discarded map[string]int
}

func newCountingObserver() *countingObserver {
	return &countingObserver{refused: map[string]int{}, discarded: map[string]int{}}
}

func (o *countingObserver) RequestDone(string, string, int, string, time.Duration, time.Duration) {}
func (o *countingObserver) ChallengeAnswered(string, string, bool)                                {}
func (o *countingObserver) AuthRejected(string)                                                   {}
func (o *countingObserver) RequestResent(string)                                                  {}
func (o *countingObserver) UpstreamStateChanged(string, bool)                                     {}
func (o *countingObserver) PreemptiveAuth(string, bool)                                           {}
func (o *countingObserver) Failover(string, string)                                               {}

func (o *countingObserver) Refused(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refused[reason]++
}

func (o *countingObserver) Discarded(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.discarded[reason]++
}

func (o *countingObserver) refusals(reason string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refused[reason]
}

func (o *countingObserver) discards(reason string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.discarded[reason]
}

// udpPeer is a UDP socket the test speaks SIP through by hand: a client,
// an upstream or an attacker.
type udpPeer struct {
	conn net.PacketConn
	got  chan datagram

	mu   sync.Mutex
	seen [][]byte // everything received, in order
}

func newUDPPeer(t *testing.T, host string) *udpPeer {
	t.Helper()
	conn, err := net.ListenPacket("udp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	u := &udpPeer{conn: conn, got: make(chan datagram, 4096)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, src, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			d := datagram{bytes.Clone(buf[:n]), src}
			u.mu.Lock()
			u.seen = append(u.seen, d.data)
			u.mu.Unlock()
			select {
			case u.got <- d:
			default: // more than a test waits for: seen has it
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return u
}

// saw reports whether a datagram received so far contains all of subs.
func (u *udpPeer) saw(subs ...string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, d := range u.seen {
		if containsAll(d, subs) {
			return true
		}
	}
	return false
}

// count returns how many datagrams received so far start with prefix.
func (u *udpPeer) count(prefix string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, d := range u.seen {
		if bytes.HasPrefix(d, []byte(prefix)) {
			n++
		}
	}
	return n
}

func (u *udpPeer) addr() string { return u.conn.LocalAddr().String() }

func (u *udpPeer) send(t *testing.T, to string, msg []byte) {
	t.Helper()
	dst, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.conn.WriteTo(msg, dst); err != nil {
		t.Fatal(err)
	}
}

// next returns the next datagram received whose first line starts with
// prefix and that contains every one of with, skipping others
// (retransmissions, provisional responses).
func (u *udpPeer) next(t *testing.T, prefix string, with ...string) datagram {
	t.Helper()
	deadline := time.After(hostileWait)
	for {
		select {
		case d := <-u.got:
			if strings.HasPrefix(firstLine(d.data), prefix) && containsAll(d.data, with) {
				return d
			}
		case <-deadline:
			t.Fatalf("%s received nothing starting %q", u.addr(), prefix)
		}
	}
}

func containsAll(b []byte, subs []string) bool {
	for _, s := range subs {
		if !bytes.Contains(b, []byte(s)) {
			return false
		}
	}
	return true
}

// tcpUpstream is a TCP upstream the test answers by hand, on the
// connection each request came on.
type tcpUpstream struct {
	ln  net.Listener
	got chan tcpMessage
}

type tcpMessage struct {
	data []byte
	conn net.Conn
}

func newTCPUpstream(t *testing.T, host string) *tcpUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	u := &tcpUpstream{ln: ln, got: make(chan tcpMessage, 100)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				readSIPStream(c, func(msg []byte) { u.got <- tcpMessage{msg, c} })
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return u
}

func (u *tcpUpstream) addr() string { return u.ln.Addr().String() }

// next returns the next message received whose first line starts with
// prefix.
func (u *tcpUpstream) next(t *testing.T, prefix string) tcpMessage {
	t.Helper()
	deadline := time.After(hostileWait)
	for {
		select {
		case m := <-u.got:
			if strings.HasPrefix(firstLine(m.data), prefix) {
				return m
			}
		case <-deadline:
			t.Fatalf("tcp upstream received nothing starting %q", prefix)
		}
	}
}

// readSIPStream calls each with every SIP message read from r (framed by
// Content-Length, none meaning 0) until r fails.
func readSIPStream(r io.Reader, each func([]byte)) {
	br := bufio.NewReader(r)
	for {
		var msg []byte
		length := 0
		for {
			line, err := br.ReadBytes('\n')
			if err != nil {
				return
			}
			if len(msg) == 0 && len(bytes.TrimSpace(line)) == 0 {
				continue // keep-alive CRLF between messages
			}
			msg = append(msg, line...)
			if len(bytes.TrimSpace(line)) == 0 {
				break
			}
			name, value, ok := bytes.Cut(line, []byte(":"))
			if ok && (strings.EqualFold(string(bytes.TrimSpace(name)), "content-length") || strings.EqualFold(string(bytes.TrimSpace(name)), "l")) {
				length, _ = strconv.Atoi(string(bytes.TrimSpace(value)))
			}
		}
		body := make([]byte, length)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		each(append(msg, body...))
	}
}

// request builds a request from client (its address in the Via, with
// rport) to ruri: method, Call-ID, From tag, CSeq number, extra header
// lines, then a Content-Length of 0.
func request(method, ruri, client, callID string, cseq int, extra ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s SIP/2.0\r\n", method, ruri)
	fmt.Fprintf(&b, "Via: SIP/2.0/UDP %s;branch=z9hG4bK-%s-%d;rport\r\n", client, callID, cseq)
	fmt.Fprintf(&b, "Max-Forwards: 70\r\nFrom: <sip:1001@pbx-a.example.com>;tag=from-%s\r\n", callID)
	fmt.Fprintf(&b, "To: <sip:1002@pbx-a.example.com>\r\nCall-ID: %s\r\nCSeq: %d %s\r\n", callID, cseq, method)
	if method == "INVITE" {
		fmt.Fprintf(&b, "Contact: <sip:1001@%s>\r\n", client)
	}
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	return []byte(b.String())
}

// clientAuth is a Proxy-Authorization a client sends (for authproxy's
// own realm, not the upstream's): its response and cnonce must never be
// logged, and it must never go upstream.
var clientAuth = `Proxy-Authorization: Digest username="1001", realm="authproxy", nonce="abc", uri="sip:1002@pbx-a.example.com", response="` +
	hostileClientResponse + `", cnonce="` + hostileClientCnonce + `", nc=00000001, qop=auth, algorithm=MD5`

// response builds a response with status to the request req, copying
// its Via, From, To (tagged "up" unless it has a tag), Call-ID and CSeq,
// with extra header lines.
func response(req []byte, status string, extra ...string) []byte {
	out := []byte("SIP/2.0 " + status + "\r\n")
	for _, h := range extra {
		out = append(out, h+"\r\n"...)
	}
	for _, line := range bytes.Split(req, []byte("\r\n"))[1:] {
		if len(line) == 0 {
			break
		}
		switch {
		case hasHeader(line, "Via"), hasHeader(line, "From"), hasHeader(line, "Call-ID"), hasHeader(line, "CSeq"):
			out = append(append(out, line...), "\r\n"...)
		case hasHeader(line, "To"):
			out = append(out, line...)
			if !bytes.Contains(line, []byte("tag=")) {
				out = append(out, ";tag=up"...)
			}
			out = append(out, "\r\n"...)
		}
	}
	return append(out, "Content-Length: 0\r\n\r\n"...)
}

func hasHeader(line []byte, name string) bool {
	n, _, ok := bytes.Cut(line, []byte(":"))
	return ok && strings.EqualFold(string(bytes.TrimSpace(n)), name)
}

// header returns the value of the first header line called name in msg.
func header(msg []byte, name string) string {
	for _, line := range bytes.Split(msg, []byte("\r\n"))[1:] {
		if len(line) == 0 {
			break
		}
		if hasHeader(line, name) {
			_, v, _ := bytes.Cut(line, []byte(":"))
			return string(bytes.TrimSpace(v))
		}
	}
	return ""
}

// received returns a copy of every datagram received so far, in order.
func (u *udpPeer) received() [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.seen...)
}
