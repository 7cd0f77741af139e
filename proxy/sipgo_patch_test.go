package proxy

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/testutil"
)

// The patched sipgo (internal/sipgo, PATCHES.md) must keep header lookups
// case-insensitive (RFC 3261 §7.3.1) while no longer allocating per header.
func TestPatchedSipgoHeaderLookup(t *testing.T) {
	req := sip.NewRequest(sip.MESSAGE, sip.Uri{User: "bob", Host: "pbx.example"})
	req.AppendHeader(sip.NewHeader("User-Agent", "phone"))
	req.AppendHeader(sip.NewHeader("X-Custom-Header", "a"))
	req.AppendHeader(sip.NewHeader("x-custom-header", "b"))
	req.AppendHeader(sip.NewHeader("Proxy-Require", "foo"))
	for _, tc := range []struct {
		name string
		want int
	}{
		{"user-agent", 1}, {"USER-AGENT", 1}, {"User-Agent", 1},
		{"X-CUSTOM-HEADER", 2}, {"proxy-require", 1}, {"Require", 0},
	} {
		if got := len(req.GetHeaders(tc.name)); got != tc.want {
			t.Errorf("GetHeaders(%q) = %d headers, want %d", tc.name, got, tc.want)
		}
		if h := req.GetHeader(tc.name); (h != nil) != (tc.want > 0) {
			t.Errorf("GetHeader(%q) = %v", tc.name, h)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = req.GetHeader("Proxy-Require") }); allocs != 0 {
		t.Errorf("GetHeader allocates %v times, want 0", allocs)
	}
}

// answeringServer serves MESSAGEs on a UDP listener of a fresh sipgo UA
// with a handler that answers each with 202 and X-Call: <its call number>
// (plus a body, so answers differ in length) and counts, once it returns,
// whether the transaction had already ended. send sends the MESSAGE with
// the given branch and returns the response.
type answeringServer struct {
	calls, endedAtOnce atomic.Int32
	handled            chan struct{}
	send               func(branch string) string
}

func newAnsweringServer(t *testing.T) *answeringServer {
	t.Helper()
	ua, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ua.Close() })
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	as := &answeringServer{handled: make(chan struct{}, 10000)}
	srv.OnMessage(func(req *sip.Request, tx sip.ServerTransaction) {
		n := as.calls.Add(1)
		res := sip.NewResponseFromRequest(req, 202, "Accepted", []byte(strings.Repeat("x", int(n%97))))
		res.AppendHeader(sip.NewHeader("X-Call", fmt.Sprint(n)))
		if err := tx.Respond(res); err != nil {
			t.Errorf("Respond: %v", err)
		}
		select {
		case <-tx.Done():
			as.endedAtOnce.Add(1)
		default:
		}
		as.handled <- struct{}{}
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeUDP(pc) }()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	buf := make([]byte, 4096)
	as.send = func(branch string) string {
		t.Helper()
		msg := fmt.Sprintf("MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-%s;rport\r\n"+
			"From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: %s@test\r\nCSeq: 1 MESSAGE\r\n"+
			"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n", conn.LocalAddr(), branch, branch)
		if _, err := conn.WriteTo([]byte(msg), pc.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		// The answer comes: the deadline only ends a wait for one that
		// never will, so it is long enough for a busy machine.
		_ = conn.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no response: %v", err)
		}
		return string(buf[:n])
	}
	return as
}

// waitHandled waits for n handler calls to return: a handler runs on after
// its response went out.
func (as *answeringServer) waitHandled(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-as.handled:
		case <-time.After(testutil.EventuallyLimit):
			t.Fatal("handler did not return")
		}
	}
}

// A non-INVITE server transaction over a UDP listener ends the moment it
// answers (PATCHES.md, 6: answeredStore): its Done is closed when Respond
// returns, retransmissions within Timer J get the same bytes without
// reaching the handler, and once Timer J (plus at most a quarter of it)
// has passed the store lets the answer go, so the same request is new
// again.
func TestPatchedSipgoAnsweredTransactionEndsAtOnce(t *testing.T) {
	saved := sip.Timer_J
	// Read when the UA is made. Long enough that the retransmissions
	// below, sent at once, come within it even on a busy machine.
	sip.Timer_J = 5 * time.Second
	t.Cleanup(func() { sip.Timer_J = saved })
	as := newAnsweringServer(t)
	first := as.send("answered")
	if !strings.Contains(first, "X-Call: 1") {
		t.Fatalf("first response:\n%s", first)
	}
	for range 2 {
		if got := as.send("answered"); got != first {
			t.Errorf("retransmission answered with\n%s\nwant the first response:\n%s", got, first)
		}
	}
	if n := as.calls.Load(); n != 1 {
		t.Fatalf("handler called %d times within Timer J, want 1", n)
	}
	// Retransmitted until the store has let the answer go: then the
	// handler answers the request as new.
	var got string
	testutil.Eventually(t, "the answer let go after Timer J", func() bool {
		got = as.send("answered")
		return got != first
	})
	if !strings.Contains(got, "X-Call: 2") {
		t.Errorf("after Timer J the request was answered with:\n%s", got)
	}
	as.waitHandled(t, 2)
	if n := as.endedAtOnce.Load(); n != 2 {
		t.Errorf("%d of 2 transactions ended when Respond returned", n)
	}
}

// Thousands of answers (many slabs per shard and generation, answers of
// different lengths) each come back byte for byte to their own request's
// retransmission, and only to it.
func TestPatchedSipgoAnsweredStoreKeepsEachAnswer(t *testing.T) {
	as := newAnsweringServer(t)
	const n = 2000
	first := make([]string, n)
	for i := range first {
		first[i] = as.send(fmt.Sprintf("many-%d", i))
	}
	as.waitHandled(t, n)
	for i := n - 1; i >= 0; i-- {
		if got := as.send(fmt.Sprintf("many-%d", i)); got != first[i] {
			t.Fatalf("retransmission %d answered with\n%s\nwant:\n%s", i, got, first[i])
		}
	}
	if c := as.calls.Load(); c != n {
		t.Errorf("handler called %d times, want %d", c, n)
	}
	if e := as.endedAtOnce.Load(); e != n {
		t.Errorf("%d of %d transactions ended when Respond returned", e, n)
	}
}

// The patched UDP transport reuses a datagram's buffer once it is parsed
// (PATCHES.md, 7), which is only safe while nothing the parser returns
// points into that buffer. Parse, overwrite the buffer, then read every
// header (the lazily parsed ones parse now, from what was kept) and the
// body: all must equal a parse of an untouched copy.
func TestPatchedSipgoParserKeepsNoReferenceToItsInput(t *testing.T) {
	for _, raw := range []string{
		"INVITE sip:1002@pbx.example;transport=udp SIP/2.0\r\n" +
			"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1;rport\r\n" +
			"v: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-2\r\n" +
			"Max-Forwards: 70\r\n" +
			"Route: <sip:edge.example;lr>, <sip:core.example;lr>\r\n" +
			"Record-Route: <sip:rr.example;lr>\r\n" +
			"f: \"Alice\" <sip:1001@pbx.example>;tag=abc\r\n" +
			"To: <sip:1002@pbx.example>\r\n" +
			"i: call-1@10.0.0.1\r\n" +
			"CSeq: 7 INVITE\r\n" +
			"m: <sip:1001@10.0.0.1:5060>;expires=60\r\n" +
			"Proxy-Authorization: Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"0123\"\r\n" +
			"Subject: folded\r\n continuation\r\n" +
			"X-Custom: value\r\n" +
			"c: application/sdp\r\n" +
			"l: 13\r\n\r\nv=0\r\no=- 1 1\r\n",
		"SIP/2.0 407 Proxy Authentication Required\r\n" +
			"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1;received=10.0.0.9;rport=5062\r\n" +
			"From: <sip:1001@pbx.example>;tag=abc\r\nTo: <sip:1002@pbx.example>;tag=xyz\r\n" +
			"Call-ID: call-1\r\nCSeq: 7 INVITE\r\n" +
			"Proxy-Authenticate: Digest realm=\"asterisk\", nonce=\"abc\", qop=\"auth\"\r\n" +
			"Content-Length: 0\r\n\r\n",
	} {
		buf := []byte(raw)
		msg, err := sip.ParseMessage(buf)
		if err != nil {
			t.Fatal(err)
		}
		for i := range buf {
			buf[i] = 'X'
		}
		want, err := sip.ParseMessage([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		describe := func(m sip.Message) string {
			var b strings.Builder
			b.WriteString(m.String())
			for _, h := range []sip.Header{m.Via(), m.From(), m.To(), m.CallID(), m.CSeq(), m.ContentLength()} {
				if h != nil {
					b.WriteString("|" + h.Value())
				}
			}
			if r, ok := m.(*sip.Request); ok {
				b.WriteString("|" + r.Recipient.String())
				for _, h := range []sip.Header{r.Route(), r.RecordRoute(), r.MaxForwards(), r.Contact(), r.ContentType()} {
					if h != nil {
						b.WriteString("|" + h.Value())
					}
				}
			}
			for _, v := range m.GetHeaders("Via") {
				b.WriteString("|" + v.Value())
			}
			b.Write(m.Body())
			return b.String()
		}
		if got, w := describe(msg), describe(want); got != w {
			t.Errorf("after overwriting the input:\n%s\nwant:\n%s", got, w)
		}
	}
}

// The patched sipgo must bracket IPv6 hosts when it writes a URI and
// nothing else, without parsing every host as an IP address (upstream's
// quick reject ranged over indices, so it parsed, and allocated for, every
// host it wrote).
func TestPatchedSipgoURIHostBrackets(t *testing.T) {
	for _, tc := range []struct{ host, want string }{
		{"127.0.0.1", "sip:u@127.0.0.1:5060"},
		{"pbx.example.com", "sip:u@pbx.example.com:5060"},
		{"localhost", "sip:u@localhost:5060"},
		{"2001:db8::1", "sip:u@[2001:db8::1]:5060"},
		{"::1", "sip:u@[::1]:5060"},
		{"[2001:db8::2]", "sip:u@[2001:db8::2]:5060"},
		{"::ffff:10.0.0.1", "sip:u@::ffff:10.0.0.1:5060"}, // upstream: IPv4-mapped is IPv4
	} {
		u := sip.Uri{Scheme: "sip", User: "u", Host: tc.host, Port: 5060}
		if got := u.String(); got != tc.want {
			t.Errorf("host %q: %q, want %q", tc.host, got, tc.want)
		}
	}
	u := sip.Uri{Scheme: "sip", User: "u", Host: "pbx.example.com", Port: 5060}
	var b strings.Builder
	b.Grow(64)
	if allocs := testing.AllocsPerRun(100, func() { b.Reset(); b.Grow(64); u.StringWrite(&b) }); allocs > 2 {
		t.Errorf("writing a URI with a host name allocates %v times, want 2 (the builder, strconv.Itoa of the port)", allocs)
	}
}
