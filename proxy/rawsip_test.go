package proxy

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

const scanOK = "SIP/2.0 200 OK\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ours;rport=5060\r\n" +
	"Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-client;rport=5062;received=127.0.0.9\r\n" +
	"From: <sip:1001@pbx>;tag=a\r\nTo: <sip:1002@pbx>;tag=b\r\nCall-ID: c1\r\n" +
	"CSeq: 7 MESSAGE\r\nContent-Length: 0\r\n\r\n"

func TestScanResponse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     string
		ok     bool
		status int
		branch string
		method string
		seq    uint32
	}{
		{name: "plain", in: scanOK, ok: true, status: 200, branch: "z9hG4bK-ours", method: "MESSAGE", seq: 7},
		{name: "compact via, cseq first", in: "SIP/2.0 180 Ringing\r\nCSeq: 12 OPTIONS\r\nv: SIP/2.0/UDP [::1]:5060;rport;branch=b1\r\nCall-ID: x\r\n\r\n",
			ok: true, status: 180, branch: "b1", method: "OPTIONS", seq: 12},
		{name: "odd case and spaces", in: "SIP/2.0 486 Busy\r\nVIA :  SIP/2.0/UDP host-1.example;branch=b2;rport\r\ncseq:\t3\tMESSAGE \r\n\r\nbody",
			ok: true, status: 486, branch: "b2", method: "MESSAGE", seq: 3},
		{name: "two values on the top Via line", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=b1, SIP/2.0/UDP g;branch=b2\r\nCSeq: 1 MESSAGE\r\n\r\n"},
		{name: "folded line", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=b1\r\nSubject: a\r\n b\r\nCSeq: 1 MESSAGE\r\n\r\n"},
		{name: "bare LF", in: "SIP/2.0 200 OK\nVia: SIP/2.0/UDP h;branch=b1\nCSeq: 1 MESSAGE\n\n"},
		{name: "branch spelt otherwise", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h; Branch = b1\r\nCSeq: 1 MESSAGE\r\n\r\n"},
		{name: "TCP Via", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=b1\r\nCSeq: 1 MESSAGE\r\n\r\n"},
		{name: "odd sent-by", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP // 0:;branch=b1\r\nCSeq: 1 MESSAGE\r\n\r\n"},
		{name: "branch twice", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=b1;branch=b2\r\nCSeq: 1 MESSAGE\r\n\r\n"},
		{name: "no branch", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;rport\r\nCSeq: 1 MESSAGE\r\n\r\n"},
		{name: "no CSeq", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=b1\r\n\r\n"},
		{name: "CSeq too large", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=b1\r\nCSeq: 2147483648 MESSAGE\r\n\r\n"},
		{name: "CSeq with two spaces", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=b1\r\nCSeq: 1  MESSAGE\r\n\r\n"},
		{name: "CSeq without method", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=b1\r\nCSeq: 5\r\n\r\n"},
		{name: "status out of range", in: "SIP/2.0 700 X\r\nVia: SIP/2.0/UDP h;branch=b1\r\nCSeq: 1 MESSAGE\r\n\r\n"},
		{name: "request", in: "MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=b1\r\nCSeq: 1 MESSAGE\r\n\r\n"},
		{name: "headers never end", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=b1\r\nCSeq: 1 MESSAGE\r\n"},
		{name: "CR inside a line", in: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=b1\rX: y\r\nCSeq: 1 MESSAGE\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, ok := scanResponse([]byte(tc.in))
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if r.status != tc.status || string(r.branch) != tc.branch || string(r.method) != tc.method || r.seq != tc.seq {
				t.Errorf("got status %d branch %q method %q seq %d", r.status, r.branch, r.method, r.seq)
			}
			checkRelayBytes(t, []byte(tc.in), r, r.seq)
			checkRelayBytes(t, []byte(tc.in), r, r.seq+1000)
		})
	}
}

// checkRelayBytes checks that relaying data as bytes gives what relaying
// the parsed response does (prepareRelay): top Via removed, CSeq number
// seq, nothing else changed.
func checkRelayBytes(t testing.TB, data []byte, r scannedResponse, seq uint32) {
	t.Helper()
	want, err := sip.ParseMessage(data)
	if err != nil {
		return // nothing to compare with: the parser refuses it
	}
	res, ok := want.(*sip.Response)
	if !ok {
		t.Fatalf("scanned as a response, parsed as %T", want)
	}
	if res.StatusCode != r.status {
		t.Fatalf("status %d, parser says %d", r.status, res.StatusCode)
	}
	via := res.Via()
	if via == nil {
		t.Fatalf("scanned Via branch %q, parser found no Via", r.branch)
	}
	if b, _ := via.Params.Get("branch"); b != string(r.branch) {
		t.Fatalf("branch %q, parser says %q", r.branch, b)
	}
	cs := res.CSeq()
	if cs == nil || cs.SeqNo != r.seq || string(cs.MethodName) != string(r.method) {
		t.Fatalf("CSeq %d %s, parser says %v", r.seq, r.method, cs)
	}
	removeFirst(res, "Via")
	res.CSeq().SeqNo = seq
	out := r.relayBytes(nil, data, seq)
	got, err := sip.ParseMessage(out)
	if err != nil {
		t.Fatalf("relayed bytes do not parse: %v\n%s", err, out)
	}
	if got.String() != res.String() {
		t.Fatalf("relayed bytes:\n%s\nwant (parsed and edited):\n%s", got, res)
	}
}

// FuzzScanResponse checks, for any datagram, that scanResponse either
// refuses it or reads it as sipgo's parser does, and that the bytes it
// relays parse into what relaying the parsed response would send.
func FuzzScanResponse(f *testing.F) {
	f.Add([]byte(scanOK))
	f.Add([]byte(strings.ReplaceAll(scanOK, "CSeq: 7", "CSeq:  2147483647")))
	f.Add([]byte("SIP/2.0 180 Ringing\r\nCSeq: 12 OPTIONS\r\nv: SIP/2.0/UDP [::1]:5060;rport;branch=b1\r\nCall-ID: x\r\n\r\n"))
	f.Add([]byte("SIP/2.0 486 Busy\r\nVIA :  SIP/2.0/UDP host-1.example;branch=b2;rport\r\ncseq:\t3\tMESSAGE \r\nContent-Length: 4\r\n\r\nbody"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, ok := scanResponse(data)
		if !ok {
			return
		}
		checkRelayBytes(t, data, r, r.seq)
		checkRelayBytes(t, data, r, 12345)
	})
}

const forwardOK = "MESSAGE sip:1002@pbx.example.com SIP/2.0\r\n" +
	"Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-c1;rport\r\n" +
	"Max-Forwards: 70\r\nFrom: <sip:1001@pbx.example.com>;tag=f1\r\nTo: <sip:1002@pbx.example.com>\r\n" +
	"Call-ID: c1@x\r\nCSeq: 4 MESSAGE\r\nProxy-Authorization: Digest username=\"x\"\r\n" +
	"P-Asserted-Identity: <sip:boss@x>\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

// checkAppendForward checks that the bytes appendForward sends for data
// parse into the request buildForward's edits make of the parsed copy,
// whenever appendForward does not decline.
func checkAppendForward(t testing.TB, data []byte, flags byte, shift uint32) (sent bool) {
	t.Helper()
	msg, err := sip.ParseMessage(data)
	if err != nil {
		return false
	}
	req, ok := msg.(*sip.Request)
	if !ok || req.CSeq() == nil {
		return false
	}
	e := forwardEdits{dropAuth: flags&1 != 0, dropIdentity: flags&2 != 0, maxForwards: 70, addMF: true, seq: req.CSeq().SeqNo + shift}
	e.dropRoutes = min(int(flags>>4&3), len(headersNamed(req, "Route")))
	if mf := req.MaxForwards(); mf != nil {
		e.maxForwards, e.addMF = mf.Val()-1, false
	}
	if flags&4 != 0 {
		e.rport, e.received = "5999", "192.0.2.9"
	} else if flags&8 != 0 {
		e.received = "192.0.2.9"
	}
	extra := []authAnswer{{header: "Proxy-Authorization", value: `Digest username="u", realm="r", nonce="n", uri="sip:a", response="0"`}}
	via := appendVia(nil, "127.0.0.1", 5060, "z9hG4bK-ours")

	received := bytes.Clone(data)
	out, ok := e.appendForward([]byte("junk"), data, len(req.Body()), via, extra)
	if !bytes.Equal(data, received) {
		t.Fatalf("appendForward changed the received datagram")
	}
	if string(out[:4]) != "junk" {
		t.Fatalf("appendForward overwrote dst")
	}
	if !ok {
		if len(out) != 4 {
			t.Fatalf("appendForward declined but left %d bytes", len(out)-4)
		}
		return false
	}
	want := req.Clone()
	e.applyToRequest(want)
	want.PrependHeader(ourVia("UDP", "127.0.0.1", 5060, "z9hG4bK-ours"))
	for _, a := range extra {
		want.AppendHeader(sip.NewHeader(a.header, a.value))
	}
	got, err := sip.ParseMessage(out[4:])
	if err != nil {
		t.Fatalf("forwarded bytes do not parse: %v\n%s", err, out[4:])
	}
	if got.String() != want.String() {
		t.Fatalf("forwarded bytes:\n%s\nwant (parsed copy, edited):\n%s", got, want)
	}
	return true
}

func TestAppendForward(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		flags byte
		shift uint32
		sent  bool
	}{
		{name: "all edits", in: forwardOK, flags: 1 | 2 | 4, shift: 3, sent: true},
		{name: "received only, identity kept", in: forwardOK, flags: 1 | 8, sent: true},
		{name: "no Max-Forwards", in: strings.Replace(forwardOK, "Max-Forwards: 70\r\n", "", 1), flags: 1 | 4, sent: true},
		{name: "compact Via, odd case", in: strings.Replace(strings.Replace(forwardOK, "Via:", "v :", 1), "Max-Forwards:", "max-forwards:", 1), flags: 1 | 2 | 4, sent: true},
		{name: "received already there", in: strings.Replace(forwardOK, ";rport\r\n", ";received=10.1.1.1;rport\r\n", 1), flags: 1 | 4, sent: true},
		{name: "two Vias on a line", in: strings.Replace(forwardOK, ";rport\r\n", ";rport, SIP/2.0/UDP 10.0.0.6;branch=z9hG4bK-c0\r\n", 1), flags: 1},
		{name: "IPv6 sent-by", in: strings.Replace(forwardOK, "10.0.0.5:5062", "[2001:db8::5]:5062", 1), flags: 1 | 4, sent: true},
		{name: "folded header", in: strings.Replace(forwardOK, "Content-Type: text/plain", "Subject: a\r\n b\r\nContent-Type: text/plain", 1), flags: 1},
		{name: "bytes after the body", in: forwardOK + "xx", flags: 1},
		{name: "own Route removed", in: strings.Replace(forwardOK, "Max-Forwards", "Route: <sip:127.0.0.1:5060;lr>\r\nroute : <sip:10.9.9.9;lr>\r\nMax-Forwards", 1), flags: 1 | 1<<4, sent: true},
		{name: "two own Routes removed", in: strings.Replace(forwardOK, "Max-Forwards", "Route: <sip:127.0.0.1:5060;lr>\r\nContact: <sip:a@b>\r\nRoute: <sip:127.0.0.1:5080;lr>\r\nRoute: <sip:10.9.9.9;lr>\r\nMax-Forwards", 1), flags: 1 | 2<<4, sent: true},
		{name: "two Routes on a line", in: strings.Replace(forwardOK, "Max-Forwards", "Route: <sip:127.0.0.1:5060;lr>, <sip:10.9.9.9;lr>\r\nMax-Forwards", 1), flags: 1 | 1<<4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if sent := checkAppendForward(t, []byte(tc.in), tc.flags, tc.shift); sent != tc.sent {
				t.Fatalf("sent as bytes = %v, want %v", sent, tc.sent)
			}
		})
	}
}

// appendVia writes what ourVia's header serialises to.
func TestAppendVia(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "proxy.example.com", "2001:db8::1"} {
		want := "Via: " + ourVia("UDP", host, 5070, "z9hG4bK-b").Value() + "\r\n"
		if got := string(appendVia(nil, host, 5070, "z9hG4bK-b")); got != want {
			t.Errorf("host %s: got %q, want %q", host, got, want)
		}
	}
}

// FuzzAppendForward checks, for any datagram sipgo parses into a request
// and any edits, that appendForward declines or sends what buildForward's
// parsed copy would be.
func FuzzAppendForward(f *testing.F) {
	f.Add([]byte(forwardOK), byte(7), uint32(0))
	f.Add([]byte(strings.Replace(forwardOK, "Max-Forwards: 70\r\n", "", 1)), byte(9), uint32(2))
	f.Add([]byte(strings.Replace(forwardOK, "Via:", "v:", 1)), byte(1), uint32(1))
	f.Add([]byte(strings.Replace(forwardOK, "Max-Forwards", "Route: <sip:127.0.0.1:5060;lr>\r\nRoute: <sip:10.9.9.9;lr>\r\nMax-Forwards", 1)), byte(1|1<<4), uint32(1))
	f.Fuzz(func(t *testing.T, data []byte, flags byte, shift uint32) {
		checkAppendForward(t, data, flags, shift)
	})
}
