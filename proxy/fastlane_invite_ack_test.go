package proxy

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// sentInvite is an INVITE as authproxy sends it: our Via on top, the
// client's below, a Route, our Record-Route, a body.
const sentInvite = "INVITE sip:1002@pbx.example.com SIP/2.0\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK.ours;rport\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-client;rport=5999;received=127.0.0.1\r\n" +
	"Record-Route: <sip:127.0.0.1:5070;lr>\r\n" +
	"Route: <sip:10.0.0.9;lr>\r\n" +
	"Max-Forwards: 69\r\n" +
	"From: <sip:1001@pbx.example.com>;tag=caller\r\n" +
	"To: <sip:1002@pbx.example.com>\r\n" +
	"Call-ID: ack-test\r\n" +
	"CSeq: 7 INVITE\r\n" +
	"Contact: <sip:1001@127.0.0.1:5999>\r\n" +
	"Content-Type: application/sdp\r\n" +
	"Content-Length: 4\r\n\r\nv=0\n"

// The ACK for a non-2xx final response built from the INVITE's bytes
// (RFC 3261 §17.1.1.3), and what it declines.
func TestAppendNon2xxAck(t *testing.T) {
	want := "ACK sip:1002@pbx.example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK.ours;rport\r\n" +
		"Route: <sip:10.0.0.9;lr>\r\n" +
		"From: <sip:1001@pbx.example.com>;tag=caller\r\n" +
		"Call-ID: ack-test\r\n" +
		"CSeq: 7 ACK\r\n" +
		"To: <sip:1002@pbx.example.com>;tag=up\r\n" +
		"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	got, ok := appendNon2xxAck(nil, []byte(sentInvite), []byte("<sip:1002@pbx.example.com>;tag=up"))
	if !ok || string(got) != want {
		t.Fatalf("got (%v)\n%s\nwant\n%s", ok, got, want)
	}
	for _, tc := range []struct{ name, inv, to string }{
		{"To with a line break", sentInvite, "<sip:a@b>;tag=x\r\nX-Injected: 1"},
		{"empty To", sentInvite, ""},
		{"no CSeq", strings.Replace(sentInvite, "CSeq: 7 INVITE\r\n", "", 1), "<sip:a@b>"},
		{"not an INVITE", strings.Replace(sentInvite, "INVITE sip", "BYE sip", 1), "<sip:a@b>"},
		{"two Vias on the top line", strings.Replace(sentInvite, ";rport\r\nVia:", ";rport,", 1), "<sip:a@b>"},
		{"folded line", strings.Replace(sentInvite, "Contact:", "Contact:\r\n ", 1), "<sip:a@b>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, ok := appendNon2xxAck([]byte("x"), []byte(tc.inv), []byte(tc.to)); ok || string(out) != "x" {
				t.Errorf("built %q, want it declined", out)
			}
		})
	}
}

// FuzzAppendNon2xxAck checks, for any INVITE bytes and any response (the
// upstream's, untrusted), that responseTo and appendNon2xxAck decline or
// build one message, an ACK of well-formed lines; and that when the
// INVITE and the To parse, the ACK parses, with the INVITE's top Via
// alone, its Call-ID and CSeq number. The response's bytes are tried as a
// To value too.
func FuzzAppendNon2xxAck(f *testing.F) {
	f.Add([]byte(sentInvite), []byte("SIP/2.0 486 Busy Here\r\nTo: <sip:1002@pbx.example.com>;tag=up\r\n\r\n"))
	f.Add([]byte(strings.NewReplacer("Via:", "v:", "From:", "f:", "Call-ID:", "i:").Replace(sentInvite)), []byte("SIP/2.0 407 X\r\nt: sip:x@y;tag=a\r\n\r\n"))
	f.Add([]byte(sentInvite), []byte("\"A\" <sip:1002@pbx.example.com>;tag=up"))
	f.Fuzz(func(t *testing.T, inv, res []byte) {
		if to, ok := responseTo(res); ok {
			checkBuiltAck(t, inv, to)
		}
		checkBuiltAck(t, inv, res)
	})
}

// checkBuiltAck checks what appendNon2xxAck makes of inv and to.
func checkBuiltAck(t *testing.T, inv, to []byte) {
	out, ok := appendNon2xxAck([]byte("x"), inv, to)
	if !ok {
		if string(out) != "x" {
			t.Fatalf("declined with %q appended", out)
		}
		return
	}
	ack := out[1:]
	if !bytes.HasPrefix(ack, []byte("ACK ")) || bytes.Index(ack, []byte("\r\n\r\n")) != len(ack)-4 {
		t.Fatalf("not one ACK without body:\n%q", ack)
	}
	for i, c := range ack {
		if (c == '\n' && (i == 0 || ack[i-1] != '\r')) || (c == '\r' && (i+1 == len(ack) || ack[i+1] != '\n')) {
			t.Fatalf("bare CR or LF at %d:\n%q", i, ack)
		}
	}
	checkParsedAck(t, inv, to, ack)
}

// checkParsedAck checks the ACK against the INVITE and To it was built
// from, when both parse.
func checkParsedAck(t *testing.T, inv, to, ack []byte) {
	m, err := sip.ParseMessage(inv)
	if err != nil {
		return
	}
	req, isReq := m.(*sip.Request)
	if !isReq || req.Method != sip.INVITE || req.Via() == nil || req.CSeq() == nil || req.CallID() == nil {
		return
	}
	probe := "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: " + string(to) + "\r\nFrom: <sip:a@b>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
	if _, err := sip.ParseMessage([]byte(probe)); err != nil {
		return // the upstream's To is not one the parser reads
	}
	am, err := sip.ParseMessage(ack)
	if err != nil {
		t.Fatalf("ACK does not parse: %v\n%s", err, ack)
	}
	a, isReq := am.(*sip.Request)
	if !isReq || a.Method != sip.ACK {
		t.Fatalf("not an ACK:\n%s", ack)
	}
	if vias := a.GetHeaders("Via"); len(vias) != 1 || a.Via().Value() != req.Via().Value() {
		t.Fatalf("ACK Vias %v, want the INVITE's top Via %q alone", vias, req.Via().Value())
	}
	if a.CSeq() == nil || a.CSeq().SeqNo != req.CSeq().SeqNo || a.CSeq().MethodName != sip.ACK {
		t.Fatalf("ACK CSeq %v, want %d ACK", a.CSeq(), req.CSeq().SeqNo)
	}
	if a.CallID() == nil || a.CallID().Value() != req.CallID().Value() {
		t.Fatalf("ACK Call-ID %v, want %q", a.CallID(), req.CallID().Value())
	}
}
