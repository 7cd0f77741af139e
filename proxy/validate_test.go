package proxy

import (
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// malformedRequest answers what RFC 3261 §16.3 step 1 and §8.2 refuse,
// naming the fault, and lets a plain request through. Requests are parsed
// with the proxy's parser, lenient about the headers of lenientHeaders.
func TestMalformedRequest(t *testing.T) {
	parser := sip.NewParser(sip.WithHeadersParsers(lenientHeaderParsers()))
	const plain = "MESSAGE sip:1002@pbx.example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;rport\r\nMax-Forwards: 70\r\n" +
		"From: <sip:1001@pbx.example.com>;tag=a\r\nTo: <sip:1002@pbx.example.com>\r\n" +
		"Call-ID: c1\r\nCSeq: 1 MESSAGE\r\nContact: <sip:1001@127.0.0.1:5999>\r\nContent-Length: 0\r\n\r\n"
	for _, tc := range []struct {
		name, old, new string
		code           int
		reason         string
	}{
		{"plain", "", "", 0, ""},
		{"SIP/2.1", " SIP/2.0\r\n", " SIP/2.1\r\n", 505, "Version Not Supported"},
		{"http: Request-URI", "MESSAGE sip:", "MESSAGE http:", 416, "Unsupported URI Scheme"},
		{"tel: Request-URI", "MESSAGE sip:1002@pbx.example.com", "MESSAGE tel:+4930123", 0, ""},
		{"NUL in user", "sip:1002@pbx", "sip:10\x0002@pbx", 400, "control character"},
		{"DEL in host", "@pbx.example.com SIP", "@pbx.exam\x7fple.com SIP", 400, "control character"},
		{"headers in Request-URI", "pbx.example.com SIP/2.0", "pbx.example.com?Route=x SIP/2.0", 400, "headers in Request-URI"},
		{"no From", "From: <sip:1001@pbx.example.com>;tag=a\r\n", "", 400, "missing From"},
		{"no To", "To: <sip:1002@pbx.example.com>\r\n", "", 400, "missing To"},
		{"no Call-ID", "Call-ID: c1\r\n", "", 400, "missing Call-ID"},
		{"no CSeq", "CSeq: 1 MESSAGE\r\n", "", 400, "missing CSeq"},
		{"no Via", "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;rport\r\n", "", 400, "missing Via"},
		{"CSeq method", "CSeq: 1 MESSAGE", "CSeq: 1 OPTIONS", 400, "CSeq method"},
		{"two To", "Call-ID: c1\r\n", "Call-ID: c1\r\nTo: <sip:x@y>\r\n", 400, "more than one To"},
		{"two CSeq", "Call-ID: c1\r\n", "Call-ID: c1\r\nCSeq: 2 MESSAGE\r\n", 400, "more than one CSeq"},
		{"two Max-Forwards", "Call-ID: c1\r\n", "Call-ID: c1\r\nMax-Forwards: 3\r\n", 400, "more than one Max-Forwards"},
		{"two Content-Length", "Call-ID: c1\r\n", "Call-ID: c1\r\nl: 0\r\n", 400, "more than one Content-Length"},
		{"Max-Forwards -1", "Max-Forwards: 70", "Max-Forwards: -1", 400, "malformed Max-Forwards"},
		{"Max-Forwards abc", "Max-Forwards: 70", "Max-Forwards: abc", 400, "malformed Max-Forwards"},
		{"malformed Contact", "Contact: <sip:1001@", "Contact: <<sip:1001@", 400, "malformed Contact"},
		{"malformed compact Contact", "Contact: <sip:1001@", "m: <<sip:1001@", 400, "malformed Contact"},
		{"two Contacts on one line", "Contact: <sip:1001@127.0.0.1:5999>", "Contact: <sip:1001@127.0.0.1:5999>, <sip:1001@127.0.0.1:6000>", 0, ""},
		{"malformed Route", "Call-ID: c1\r\n", "Call-ID: c1\r\nRoute: <nope>\r\n", 400, "malformed Route"},
		{"Refer-To", "Call-ID: c1\r\n", "Call-ID: c1\r\nRefer-To: <sip:x@y>\r\nReferred-By: <sip:z@y>\r\n", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := plain
			if tc.old != "" {
				if !strings.Contains(raw, tc.old) {
					t.Fatalf("%q not in the request", tc.old)
				}
				raw = strings.Replace(raw, tc.old, tc.new, 1)
			}
			m, err := parser.ParseSIP([]byte(raw))
			if err != nil {
				t.Fatalf("the proxy's parser refuses it: %v", err)
			}
			code, reason := malformedRequest(m.(*sip.Request))
			if code != tc.code || !strings.Contains(reason, tc.reason) {
				t.Fatalf("%d %q, want %d with %q", code, reason, tc.code, tc.reason)
			}
		})
	}
}

// The lenient parsers keep what they cannot read as text and still split
// a header holding several values; everything else parses as sipgo's own
// parsers do.
func TestLenientHeaderParsers(t *testing.T) {
	parser := sip.NewParser(sip.WithHeadersParsers(lenientHeaderParsers()))
	m, err := parser.ParseSIP([]byte("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n" +
		"Max-Forwards: abc\r\nContact: <sip:x@y>, <sip:z@y>\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\n" +
		"Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	req := m.(*sip.Request)
	if req.MaxForwards() != nil {
		t.Error("an unreadable Max-Forwards parsed")
	}
	if h := req.GetHeader("Max-Forwards"); h == nil || h.Value() != "abc" {
		t.Errorf("the unreadable Max-Forwards not kept as text: %v", h)
	}
	if n := len(req.GetHeaders("Contact")); n != 2 {
		t.Errorf("%d Contacts, want the line's two", n)
	}
	for _, h := range req.GetHeaders("Contact") {
		if _, ok := h.(*sip.ContactHeader); !ok {
			t.Errorf("Contact %v kept as text", h)
		}
	}
	if _, err := parser.ParseSIP([]byte("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <<sip:a@b>\r\n\r\n")); err == nil {
		t.Error("a From sipgo cannot read parsed: From stays strict")
	}
}

func TestMessageTooLarge(t *testing.T) {
	if datagramTooLarge(MaxDatagramSize) || !datagramTooLarge(MaxDatagramSize+1) {
		t.Fatal("the limit is not MaxDatagramSize")
	}
	if MaxDatagramSize+1024 > sip.UDPMTUSize-200 {
		t.Fatalf("MaxDatagramSize %d leaves no kilobyte for authproxy's headers below the UDP send limit %d", MaxDatagramSize, sip.UDPMTUSize-200)
	}
}
