package tcpguard

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/testutil"
)

// server serves a Guard's Listener on loopback the way the SIP stack does:
// one goroutine accepting, one reading each connection. It keeps what
// each connection read.
type server struct {
	ln   *Listener
	addr string

	mu    sync.Mutex
	reads []*bytes.Buffer // per accepted connection
	ended []error         // the error that ended each reader
}

func serve(t *testing.T, g *Guard, tlsConf *tls.Config) *server {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: g.Listen(inner, tlsConf), addr: inner.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = s.ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			buf := &bytes.Buffer{}
			s.reads = append(s.reads, buf)
			s.ended = append(s.ended, nil)
			i := len(s.reads) - 1
			s.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				b := make([]byte, 4096)
				for {
					n, err := c.Read(b)
					s.mu.Lock()
					buf.Write(b[:n])
					if err != nil {
						s.ended[i] = err
					}
					s.mu.Unlock()
					if err != nil {
						return
					}
				}
			})
			// Close the connection when the listener closes (test end).
			wg.Go(func() {
				<-s.ln.done
				_ = c.Close()
			})
		}
	})
	return s
}

// received reports whether some connection read a message containing
// marker.
func (s *server) received(marker string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.reads {
		if strings.Contains(b.String(), marker) {
			return true
		}
	}
	return false
}

func (s *server) read(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads[i].String()
}

// dial connects to addr from the local address from ("" for any).
func dial(t *testing.T, addr, from string) net.Conn {
	t.Helper()
	d := net.Dialer{}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitClosed reads c until the server closes it and returns what it read;
// it fails the test if that does not happen within testutil's limit.
func waitClosed(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	b, err := io.ReadAll(c)
	if errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	if err != nil {
		t.Fatalf("connection not closed by the server: %v (read %q)", err, b)
	}
	return string(b)
}

// request is a complete OPTIONS whose Call-ID is callID.
func request(callID string) string {
	return sipMsg("", "OPTIONS sip:pbx.example.com SIP/2.0", "Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-"+callID,
		"From: <sip:1001@pbx.example.com>;tag=1", "To: <sip:pbx.example.com>", "Call-ID: "+callID,
		"CSeq: 1 OPTIONS", "Max-Forwards: 70", "Content-Length: 0")
}

// works sends a request on c and waits until the server read it.
func works(t *testing.T, s *server, c net.Conn, callID string) {
	t.Helper()
	if _, err := c.Write([]byte(request(callID))); err != nil {
		t.Fatalf("write %s: %v", callID, err)
	}
	testutil.Eventually(t, "the server reads "+callID, func() bool { return s.received("Call-ID: " + callID) })
}

func TestListener_RefusedSourceClosedAtOnce(t *testing.T) {
	g := New(Config{Classify: func(netip.Addr) Peer { return Refused }})
	s := serve(t, g, nil)
	c := dial(t, s.addr, "")
	_, _ = c.Write([]byte(request("refused")))
	if got := waitClosed(t, c); got != "" {
		t.Fatalf("refused connection was answered %q", got)
	}
	if st := g.Stats(); st.Refused[ReasonSourceDenied] != 1 || st.Accepted != 0 || st.Open != 0 {
		t.Fatalf("stats %+v, want one refused for its source and none accepted", st)
	}
}

func TestListener_Caps(t *testing.T) {
	tests := []struct {
		name    string
		limits  Limits
		sources []string // of the connections that must work; the last one is refused
		last    string
		reason  string
	}{
		{"PerSource", Limits{MaxConnsPerSource: 2}, []string{"127.0.0.1", "127.0.0.1", "127.0.0.2"}, "127.0.0.1", ReasonPerSourceLimit},
		{"Total", Limits{MaxConns: 3}, []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}, "127.0.0.4", ReasonTotalLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			classify := func(a netip.Addr) Peer {
				if a == netip.MustParseAddr("127.0.0.9") {
					return Upstream
				}
				return Client
			}
			g := New(Config{Limits: tt.limits, Classify: classify})
			s := serve(t, g, nil)
			var conns []net.Conn
			for i, src := range tt.sources {
				c := dial(t, s.addr, src)
				works(t, s, c, "first-"+string(rune('a'+i)))
				conns = append(conns, c)
			}
			extra := dial(t, s.addr, tt.last)
			_, _ = extra.Write([]byte(request("over-the-cap")))
			if got := waitClosed(t, extra); got != "" {
				t.Fatalf("connection over the cap was answered %q", got)
			}
			// An upstream is not counted.
			works(t, s, dial(t, s.addr, "127.0.0.9"), "upstream")
			for i, c := range conns {
				works(t, s, c, "again-"+string(rune('a'+i)))
			}
			if st := g.Stats(); st.Refused[tt.reason] != 1 || st.Open != len(conns)+1 {
				t.Fatalf("stats %+v, want one refused (%s) and %d open", st, tt.reason, len(conns)+1)
			}
			// Closing one connection frees its place.
			_ = conns[0].Close()
			testutil.Eventually(t, "the closed connection's place freed", func() bool { return g.Stats().Open == len(conns) })
			works(t, s, dial(t, s.addr, tt.sources[0]), "after-close")
		})
	}
}

func TestConn_Deadlines(t *testing.T) {
	const short = 150 * time.Millisecond
	tests := []struct {
		name   string
		limits Limits
		send   func(t *testing.T, s *server, c net.Conn)
		reason string
	}{
		{
			name: "NoFirstMessage", limits: Limits{MessageTimeout: short, IdleTimeout: time.Hour},
			send: func(*testing.T, *server, net.Conn) {}, reason: ReasonMessage,
		},
		{
			name: "Idle", limits: Limits{MessageTimeout: time.Hour, IdleTimeout: short},
			send: func(t *testing.T, s *server, c net.Conn) { works(t, s, c, "idle") }, reason: ReasonIdle,
		},
		{
			// Slowloris: a header trickled a byte at a time for as long as
			// the connection lasts; each byte would reset a read timeout, not
			// the message deadline.
			name: "Trickle", limits: Limits{MessageTimeout: short, IdleTimeout: time.Hour},
			send: func(t *testing.T, s *server, c net.Conn) {
				works(t, s, c, "before-the-trickle")
				go func() {
					msg := []byte("OPTIONS sip:pbx.example.com SIP/2.0\r\n" + strings.Repeat("X-Pad: p\r\n", 10000))
					for _, b := range msg {
						if _, err := c.Write([]byte{b}); err != nil {
							return // closed: the point of the test
						}
						time.Sleep(time.Millisecond)
					}
				}()
			},
			reason: ReasonMessage,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := New(Config{Limits: tt.limits})
			s := serve(t, g, nil)
			c := dial(t, s.addr, "")
			tt.send(t, s, c)
			waitClosed(t, c)
			testutil.Eventually(t, "the connection counted closed", func() bool { return g.Stats().Open == 0 })
			if st := g.Stats(); st.Closed[tt.reason] != 1 {
				t.Fatalf("closed %v, want one %s", st.Closed, tt.reason)
			}
		})
	}
}

// TestConn_Deadline pins when each wait ends, without waiting.
func TestConn_Deadline(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 10, 0, 0, 0, time.UTC)
	lim := Limits{MessageTimeout: 10 * time.Second, IdleTimeout: time.Hour}
	c := &conn{lim: lim, since: t0}
	c.fr.MaxSize = 0
	check := func(what string, want time.Time) {
		t.Helper()
		if got := c.deadline(); !got.Equal(want) {
			t.Fatalf("%s: deadline %v, want %v", what, got, want)
		}
	}
	feed := func(s string, at time.Time) {
		t.Helper()
		b := []byte(s)
		if _, why := c.frame(b, len(b), at); why != cNone {
			t.Fatalf("frame %q: closing for %s", s, counterReasons[why])
		}
	}
	check("before any byte", t0.Add(10*time.Second))
	feed("\r\n", t0.Add(time.Second)) // keep-alives do not make up for a first message
	check("after a keep-alive", t0.Add(10*time.Second))
	feed(options, t0.Add(2*time.Second))
	check("after the first message", t0.Add(2*time.Second+time.Hour))
	feed("\r\n", t0.Add(3*time.Second)) // RFC 5626 keep-alives count as activity
	check("after a keep-alive", t0.Add(3*time.Second+time.Hour))
	feed(options[:10], t0.Add(4*time.Second))
	check("in a message", t0.Add(14*time.Second))
	feed(options[10:20], t0.Add(5*time.Second)) // more bytes do not push it back
	check("still in the message", t0.Add(14*time.Second))
	feed(options[20:], t0.Add(6*time.Second))
	check("after it", t0.Add(6*time.Second+time.Hour))

	c = &conn{since: t0}
	check("no limits", time.Time{})
}

func TestConn_Ping(t *testing.T) {
	g := New(Config{Limits: Limits{IdleTimeout: time.Hour}})
	s := serve(t, g, nil)
	c := dial(t, s.addr, "")
	works(t, s, c, "first")
	if _, err := c.Write([]byte("\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	pong := make([]byte, 2)
	_ = c.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	if _, err := io.ReadFull(c, pong); err != nil || string(pong) != "\r\n" {
		t.Fatalf("pong %q, %v; want CRLF (RFC 5626 §3.5.1)", pong, err)
	}
	works(t, s, c, "second")
	if got, want := s.read(0), request("first")+request("second"); got != want {
		t.Fatalf("the server read %q, want the two messages without the keep-alive %q", got, want)
	}
}

func TestConn_TooLarge(t *testing.T) {
	g := New(Config{Limits: Limits{MaxMessageSize: 1000}})
	s := serve(t, g, nil)
	c := dial(t, s.addr, "")
	works(t, s, c, "small")
	big := sipMsg(strings.Repeat("b", 2000), "MESSAGE sip:1001@h SIP/2.0", "Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-big;rport",
		"From: <sip:a@h>;tag=1", "To: <sip:1001@h>", "Call-ID: big", "CSeq: 7 MESSAGE", "Max-Forwards: 70", "Content-Length: 2000")
	if _, err := c.Write([]byte(big)); err != nil {
		t.Fatal(err)
	}
	answer := waitClosed(t, c)
	msg, err := sip.ParseMessage([]byte(answer))
	if err != nil {
		t.Fatalf("answer %q: %v", answer, err)
	}
	res, ok := msg.(*sip.Response)
	if !ok || res.StatusCode != StatusMessageTooLarge || res.CallID().Value() != "big" || res.CSeq().Value() != "7 MESSAGE" {
		t.Fatalf("answer %q, want a 513 to the request", answer)
	}
	if rport, _ := res.Via().Params.Get("rport"); rport == "" {
		t.Fatalf("answer's Via %q has no rport value (RFC 3581 §4)", res.Via().Value())
	}
	if got := s.read(0); strings.Contains(got, "Call-ID: big\r\n") && strings.HasSuffix(got, "\r\n\r\n") {
		t.Fatalf("the server read the whole header block of the large request: %q", got)
	}
	if st := g.Stats(); st.Closed[ReasonTooLarge] != 1 {
		t.Fatalf("closed %v, want one too large", st.Closed)
	}
}

func TestConn_TLS(t *testing.T) {
	conf, _ := testutil.SelfSignedTLS(t)
	g := New(Config{Limits: Limits{HandshakeTimeout: 150 * time.Millisecond, MessageTimeout: time.Hour}})
	s := serve(t, g, conf)

	t.Run("Serves", func(t *testing.T) {
		raw := dial(t, s.addr, "")
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a test certificate
		works(t, s, c, "over-tls")
	})
	t.Run("HandshakeNeverCompleted", func(t *testing.T) {
		c := dial(t, s.addr, "")
		_, _ = c.Write([]byte{0x16, 0x03, 0x01}) // the start of a ClientHello, and no more
		waitClosed(t, c)
		testutil.Eventually(t, "the handshake timeout counted", func() bool {
			return g.Stats().Closed[ReasonHandshake] == 1
		})
	})
}

func TestListener_AcceptBackoff(t *testing.T) {
	logs := &bytes.Buffer{}
	g := New(Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	inner := &failingListener{fails: 20, err: &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}}
	l := g.Listen(inner, nil)
	clock := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var waits []time.Duration
	l.retry.now = func() time.Time { return clock }
	l.retry.wait = func(d time.Duration, _ <-chan struct{}) bool {
		waits = append(waits, d)
		clock = clock.Add(d)
		return true
	}
	c, err := l.Accept()
	if err != nil || c == nil {
		t.Fatalf("Accept: %v, %v; want the connection after the failures", c, err)
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !equalDurations(waits, want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	// 13.3 s of failures: logged at 0, 5.3 and 10.3 s, then once recovered.
	if n := strings.Count(logs.String(), "accepting a connection failed"); n != 3 {
		t.Fatalf("%d failure lines, want 3:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "accepting connections again") || !strings.Contains(logs.String(), "failures=20") {
		t.Fatalf("no recovery line counting 20 failures:\n%s", logs)
	}
	if st := g.Stats(); st.AcceptErrors != 20 {
		t.Fatalf("accept errors %d, want 20", st.AcceptErrors)
	}
}

func TestListener_AcceptStops(t *testing.T) {
	t.Run("OnAPermanentError", func(t *testing.T) {
		permanent := errors.New("listener broken")
		l := New(Config{}).Listen(&failingListener{fails: 1, err: permanent}, nil)
		if _, err := l.Accept(); !errors.Is(err, permanent) {
			t.Fatalf("Accept: %v, want %v", err, permanent)
		}
	})
	t.Run("ClosedDuringBackoff", func(t *testing.T) {
		l := New(Config{}).Listen(&failingListener{fails: 1 << 30, err: syscall.EMFILE}, nil)
		done := make(chan error, 1)
		go func() {
			_, err := l.Accept()
			done <- err
		}()
		testutil.Eventually(t, "a retry", func() bool { return l.g.Stats().AcceptErrors > 0 })
		_ = l.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Accept: %v, want net.ErrClosed", err)
			}
		case <-time.After(testutil.EventuallyLimit):
			t.Fatal("Accept did not return after Close")
		}
	})
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// failingListener fails fails times with err, then returns one end of a
// pipe per Accept.
type failingListener struct {
	mu    sync.Mutex
	fails int
	err   error
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fails > 0 {
		l.fails--
		return nil, l.err
	}
	a, _ := net.Pipe()
	return a, nil
}

func (l *failingListener) Close() error { return nil }
func (l *failingListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060}
}
