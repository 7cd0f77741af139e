package proxy

import (
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// sipgo's header lookups are case-insensitive (RFC 3261 §7.3.1): the
// forwarding code looks headers up by their canonical names.
func TestSipgoHeaderLookup(t *testing.T) {
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
}

// authproxy parses the fast lane's datagrams in the UDP listener's read
// buffer (laneSocket), which sipgo reuses for the next datagram, which is
// only safe while nothing the parser returns points into that buffer. Parse, overwrite the buffer, then read every
// header (the lazily parsed ones parse now, from what was kept) and the
// body: all must equal a parse of an untouched copy.
func TestSipgoParserKeepsNoReferenceToItsInput(t *testing.T) {
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

// sipgo brackets IPv6 hosts when it writes a URI, and nothing else: the
// Via, Record-Route and Contact authproxy writes carry its listeners'
// addresses.
func TestSipgoURIHostBrackets(t *testing.T) {
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
}
