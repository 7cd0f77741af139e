package proxy

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// rawAnswer builds a response from a request's header lines alone when
// they are all there, whatever they hold, and nothing for a response, an
// ACK, or a request lacking one of them.
func TestRawAnswer(t *testing.T) {
	const req = "MESSAGE <sip:x@y> SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;rport\r\n" +
		"v: SIP/2.0/UDP 10.0.0.1\r\n" +
		"f: <<sip:a@b>;tag=1\r\n" +
		"To: <sip:c@d>\r\n" +
		"Call-ID: c1\r\n" +
		"CSeq: 99999999999999999999 MESSAGE\r\n" +
		"Proxy-Authorization: Digest response=\"secret\"\r\n" +
		"Content-Length: 0\r\n\r\n"
	got, ok := rawAnswer([]byte(req), "400 Bad Request (unparsable message)")
	if !ok {
		t.Fatal("no answer")
	}
	s := string(got)
	for _, want := range []string{"SIP/2.0 400 Bad Request (unparsable message)\r\n", "\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;rport\r\nv: SIP/2.0/UDP 10.0.0.1\r\n",
		"\r\nf: <<sip:a@b>;tag=1\r\n", "\r\nTo: <sip:c@d>;tag=", "\r\nCall-ID: c1\r\n", "\r\nCSeq: 99999999999999999999 MESSAGE\r\n", "\r\nContent-Length: 0\r\n\r\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("answer lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "secret") {
		t.Errorf("answer copies a header it should not:\n%s", s)
	}
	for _, tc := range []struct{ name, data string }{
		{"a response", strings.Replace(req, "MESSAGE <sip:x@y> SIP/2.0", "SIP/2.0 200 OK", 1)},
		{"an ACK", strings.Replace(req, "MESSAGE <sip:x@y>", "ACK <sip:x@y>", 1)},
		{"no Call-ID", strings.Replace(req, "Call-ID: c1\r\n", "", 1)},
		{"no Via", strings.Replace(strings.Replace(req, "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;rport\r\n", "", 1), "v: SIP/2.0/UDP 10.0.0.1\r\n", "", 1)},
		{"no line end", "MESSAGE x"},
	} {
		if got, ok := rawAnswer([]byte(tc.data), "400 Bad Request"); ok {
			t.Errorf("%s answered:\n%s", tc.name, got)
		}
	}
}

// FuzzRawAnswer: whatever the bytes, rawAnswer does not panic, and an
// answer it builds is a response (status line, headers, blank line) no
// larger than the request and its own lines: no amplification.
func FuzzRawAnswer(f *testing.F) {
	f.Add([]byte("MESSAGE <sip:x@y> SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n\r\n"))
	f.Add([]byte("INVITE sip:x SIP/2.0\nv: a\n f\nf: b\nt: c\ni: d\ncseq: e\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := rawAnswer(data, "400 Bad Request")
		if !ok {
			return
		}
		if !bytes.HasPrefix(got, []byte("SIP/2.0 400 Bad Request\r\n")) || !bytes.HasSuffix(got, []byte("\r\n\r\n")) {
			t.Fatalf("not a response:\n%q", got)
		}
		if len(got) > len(data)+len("SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n;tag=")+16+2*bytes.Count(data, []byte("\n")) {
			t.Fatalf("answer of %d bytes to a request of %d", len(got), len(data))
		}
	})
}

// The source of a datagram is found by its bytes, the latest first, and
// forgotten once recentLen newer ones came.
func TestRecentDatagrams(t *testing.T) {
	r := newRecentDatagrams()
	local := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060}
	a, b := netip.MustParseAddrPort("127.0.0.2:1"), netip.MustParseAddrPort("127.0.0.3:1")
	r.note([]byte("same"), a, local)
	r.note([]byte("same"), b, local)
	if d, ok := r.find("same"); !ok || d.from != b || d.local != local {
		t.Fatalf("found %v %v, want the latest source", d, ok)
	}
	if _, ok := r.find("never"); ok {
		t.Fatal("found a datagram never noted")
	}
	r.note([]byte("old"), a, local)
	for i := range recentLen {
		r.note([]byte(strconv.Itoa(i)), b, local)
	}
	if _, ok := r.find("old"); ok {
		t.Fatal("found a datagram recentLen datagrams old")
	}
}
