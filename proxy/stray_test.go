package proxy

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A 2xx retransmission that arrives after the INVITE transactions ended is
// relayed to the caller of a known dialog, our Via removed and the CSeq
// back in the caller's numbering, when it comes from where the INVITE went;
// any other stray response is dropped.
func TestStray2xxRelayedOnlyForKnownDialogs(t *testing.T) {
	sp := newSocketlessProxy(t, func(*sip.Request) *sip.Response { return nil })
	p := sp.p
	var sent []*sip.Response
	p.strayWriter = func(r *sip.Response) error { sent = append(sent, r); return nil }
	up := p.rt.Load().upstreams[0]
	p.dialogs.put(&dialog{key: dialogKey{callID: "c1@h", callerTag: "caller", calleeTag: "callee"}, up: up,
		clientTransport: "UDP", clientAddr: "127.0.0.9:5070", inviteCSeq: 1, inviteUpCSeq: 2, lastUse: time.Now()})

	if err := p.pinRequest("z9hG4bK-ours", sip.INVITE, "UDP", up.Address); err != nil {
		t.Fatal(err)
	}
	p.pins.release("z9hG4bK-ours", true, time.Now()) // the INVITE transaction ended
	raw := func(via, method, callID, fromTag string, status int) *sip.Response {
		t.Helper()
		m, err := sip.ParseMessage([]byte("SIP/2.0 " + strconv.Itoa(status) + " X\r\n" +
			via + "Via: SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bK-phone;received=127.0.0.9;rport=5070\r\n" +
			"From: <sip:1001@pbx-a.example.com>;tag=" + fromTag + "\r\nTo: <sip:1002@pbx-a.example.com>;tag=callee\r\n" +
			"Call-ID: " + callID + "\r\nCSeq: 2 " + method + "\r\nContent-Length: 0\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		res := m.(*sip.Response)
		res.SetTransport("UDP")
		res.SetSource(up.Address)
		return res
	}
	elsewhere := func(res *sip.Response, transport, source string) *sip.Response {
		res.SetTransport(transport)
		res.SetSource(source)
		return res
	}
	ours := "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ours\r\n"
	for _, tc := range []struct {
		name  string
		res   *sip.Response
		relay bool
	}{
		{"2xx of a known dialog", raw(ours, "INVITE", "c1@h", "caller", 200), true},
		{"unknown dialog", raw(ours, "INVITE", "other@h", "caller", 200), false},
		{"not ours", raw("Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-x\r\n", "INVITE", "c1@h", "caller", 200), false},
		{"not a 2xx", raw(ours, "INVITE", "c1@h", "caller", 486), false},
		{"not an INVITE", raw(ours, "BYE", "c1@h", "caller", 200), false},
		{"from another address", elsewhere(raw(ours, "INVITE", "c1@h", "caller", 200), "UDP", "127.0.0.66:5060"), false},
		{"over another transport", elsewhere(raw(ours, "INVITE", "c1@h", "caller", 200), "TCP", up.Address), false},
		{"branch never sent", raw("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-unsent\r\n", "INVITE", "c1@h", "caller", 200), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sent = nil
			p.handleStrayResponse(tc.res)
			if !tc.relay {
				if len(sent) != 0 {
					t.Fatalf("relayed %v", sent[0])
				}
				return
			}
			if len(sent) != 1 {
				t.Fatal("not relayed")
			}
			out := sent[0]
			if vias := out.GetHeaders("Via"); len(vias) != 1 || !strings.Contains(vias[0].Value(), "z9hG4bK-phone") {
				t.Errorf("Via headers %v, want only the phone's", vias)
			}
			if out.CSeq().SeqNo != 1 {
				t.Errorf("CSeq %d, want the caller's 1", out.CSeq().SeqNo)
			}
			if got := out.Destination(); got != "127.0.0.9:5070" {
				t.Errorf("destination %q", got)
			}
		})
	}
}

// Only an initial INVITE over UDP is remembered for absorbing its late
// retransmissions, by top Via branch and Call-ID.
func TestAcceptedKey(t *testing.T) {
	parse := func(method, transport, via, toTag string) *sip.Request {
		t.Helper()
		to := "To: <sip:1002@pbx-a.example.com>\r\n"
		if toTag != "" {
			to = "To: <sip:1002@pbx-a.example.com>;tag=" + toTag + "\r\n"
		}
		m, err := sip.ParseMessage([]byte(method + " sip:1002@pbx-a.example.com SIP/2.0\r\n" + via +
			"From: <sip:1001@pbx-a.example.com>;tag=caller\r\n" + to +
			"Call-ID: c1@h\r\nCSeq: 1 " + method + "\r\nContent-Length: 0\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		req := m.(*sip.Request)
		req.SetTransport(transport)
		return req
	}
	via := "Via: SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bK-1;rport\r\n"
	for _, tc := range []struct {
		name string
		req  *sip.Request
		want string
	}{
		{"initial INVITE over UDP", parse("INVITE", "UDP", via, ""), "z9hG4bK-1 c1@h"},
		{"re-INVITE", parse("INVITE", "UDP", via, "callee"), ""},
		{"over TCP", parse("INVITE", "TCP", via, ""), ""},
		{"MESSAGE", parse("MESSAGE", "UDP", via, ""), ""},
		{"no branch", parse("INVITE", "UDP", "Via: SIP/2.0/UDP 127.0.0.9:5070\r\n", ""), ""},
	} {
		got, ok := acceptedKey(tc.req)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%s: %q %v, want %q", tc.name, got, ok, tc.want)
		}
	}
}
