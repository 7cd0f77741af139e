package scenarios

import (
	"bytes"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// sipCallID returns the Call-ID header's value of a SIP message.
func sipCallID(msg []byte) string {
	m := regexp.MustCompile(`(?mi)^(?:call-id|i)[ \t]*:[ \t]*(\S+)\r?$`).FindSubmatch(msg)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// firstLine is the start line of a SIP message.
func firstLine(msg []byte) string {
	line, _, _ := bytes.Cut(msg, []byte("\r\n"))
	return string(line)
}

// captured is one message of a pcap, as the test reads it: its leg and
// direction, start line and CSeq method.
type captured struct {
	dir, line, method string
	pkt               peers.PCAPPacket
}

var cseqMethod = regexp.MustCompile(`(?mi)^CSeq[ \t]*:[ \t]*\d+[ \t]+(\S+)\r?$`)

// legs sorts the packets of callID by leg and direction: "client>proxy",
// "proxy>client", "proxy>pbx", "pbx>proxy"; "?" for a packet between other
// addresses.
func legs(pkts []peers.PCAPPacket, callID string, proxyAddr, pbxAddr netip.AddrPort) []captured {
	var out []captured
	for _, p := range pkts {
		if sipCallID(p.Payload) != callID {
			continue
		}
		var dir string
		switch {
		case p.Src == proxyAddr && p.Dst == pbxAddr:
			dir = "proxy>pbx"
		case p.Src == pbxAddr && p.Dst == proxyAddr:
			dir = "pbx>proxy"
		case p.Src == proxyAddr:
			dir = "proxy>client"
		case p.Dst == proxyAddr:
			dir = "client>proxy"
		default:
			dir = "?"
		}
		var method string
		if m := cseqMethod.FindSubmatch(p.Payload); m != nil {
			method = string(m[1])
		}
		out = append(out, captured{dir: dir, line: firstLine(p.Payload), method: method, pkt: p})
	}
	return out
}

// has reports whether cs holds a message in direction dir whose start
// line begins with line and whose CSeq method is method.
func has(cs []captured, dir, line, method string) bool {
	for _, c := range cs {
		if c.dir == dir && strings.HasPrefix(c.line, line) && c.method == method {
			return true
		}
	}
	return false
}

// exchange is one message a leg must show.
type exchange struct{ dir, line, method string }

// callExchanges are the messages of a challenged call on both legs.
var callExchanges = []exchange{
	{"client>proxy", "INVITE ", "INVITE"},
	{"proxy>pbx", "INVITE ", "INVITE"},
	{"pbx>proxy", "SIP/2.0 401", "INVITE"},
	{"proxy>pbx", "ACK ", "ACK"}, // the ACK of the 401, authproxy's own
	{"pbx>proxy", "SIP/2.0 200", "INVITE"},
	{"proxy>client", "SIP/2.0 200", "INVITE"},
	{"client>proxy", "ACK ", "ACK"},
	{"proxy>pbx", "ACK ", "ACK"},
	{"client>proxy", "BYE ", "BYE"},
	{"proxy>pbx", "BYE ", "BYE"},
	{"pbx>proxy", "SIP/2.0 200", "BYE"},
	{"proxy>client", "SIP/2.0 200", "BYE"},
}

// messageExchanges are those of a challenged MESSAGE (the fast lane).
var messageExchanges = []exchange{
	{"client>proxy", "MESSAGE ", "MESSAGE"},
	{"proxy>pbx", "MESSAGE ", "MESSAGE"},
	{"pbx>proxy", "SIP/2.0 401", "MESSAGE"},
	{"pbx>proxy", "SIP/2.0 200", "MESSAGE"},
	{"proxy>client", "SIP/2.0 200", "MESSAGE"},
}

func missingExchanges(cs []captured, want []exchange) []exchange {
	var out []exchange
	for _, e := range want {
		if !has(cs, e.dir, e.line, e.method) {
			out = append(out, e)
		}
	}
	return out
}

// digestResponse finds the response parameter of a digest credential.
var digestResponse = regexp.MustCompile(`(?i)\bresponse\s*=\s*"?([^",\s]+)`)

// TestHEPCaptureToSngrep: with capture on, a call (INVITE and BYE each
// challenged) and a challenged MESSAGE go through authproxy to pbx-a, and
// the HEPv3 packets reach sngrep, a real receiver. Its pcap shows both
// legs of each, in both directions, between the right addresses and ports
// (authproxy's listener, the phone, the PBX), with the HEP time, and every
// Authorization's response and cnonce redacted (the username kept); the
// packets themselves carry each message's Call-ID as correlation id, the
// same on both legs, and the agent id.
func TestHEPCaptureToSngrep(t *testing.T) {
	sng := peers.StartSngrep(t, "127.0.0.1")
	tee := startHEPRelay(t, sng.Addr)
	h := startHarness(t, harnessOptions{Mutate: func(c *proxy.Config, _ *harness) {
		c.Capture = proxy.Capture{HEP: tee.addr, AgentID: 4242}
	}})
	proxyAddr := netip.MustParseAddrPort(h.Addr["udp"])
	pbxAddr := netip.MustParseAddrPort(h.A.Addr())
	start := time.Now()

	call := answeredCall(t, h, "udp")
	if res := call.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE: %d", res.StatusCode)
	}
	messageID := "hep-message-" + uuid.NewString()
	if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001", CallID: messageID}); res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %d", res.StatusCode)
	}
	testutil.Eventually(t, "both legs of the call and the MESSAGE in sngrep's pcap", func() bool {
		pkts := sng.Packets(t)
		return len(missingExchanges(legs(pkts, call.CallID, proxyAddr, pbxAddr), callExchanges)) == 0 &&
			len(missingExchanges(legs(pkts, messageID, proxyAddr, pbxAddr), messageExchanges)) == 0
	})
	end := time.Now()
	if err := sng.Stop(); err != nil {
		t.Fatalf("stopping sngrep: %v", err)
	}
	pkts := sng.Packets(t) // complete now

	// The PBX saw the upstream leg's requests come from authproxy's
	// listener; the client leg is one socket of the client's, both ways.
	for _, r := range h.A.Requests() {
		if r.Source != proxyAddr.String() {
			t.Errorf("pbx-a got %s from %s, not from authproxy's listener %s", r.Method, r.Source, proxyAddr)
		}
	}
	for _, id := range []string{call.CallID, messageID} {
		var client netip.AddrPort
		for _, c := range legs(pkts, id, proxyAddr, pbxAddr) {
			if c.dir == "?" {
				t.Errorf("%s: %s -> %s is neither leg", c.line, c.pkt.Src, c.pkt.Dst)
			}
			peer := c.pkt.Src
			if c.dir == "proxy>client" {
				peer = c.pkt.Dst
			}
			if strings.Contains(c.dir, "client") {
				if !client.IsValid() {
					client = peer
				}
				if peer != client || !peer.Addr().IsLoopback() || peer == pbxAddr {
					t.Errorf("%s %s: client %s, want one loopback client address (%s)", c.dir, c.line, peer, client)
				}
			}
			if c.pkt.Proto != 17 {
				t.Errorf("%s: protocol %d, want UDP", c.line, c.pkt.Proto)
			}
			if c.pkt.Time.Before(start.Truncate(time.Microsecond)) || c.pkt.Time.After(end) {
				t.Errorf("%s %s at %v, outside the test's %v .. %v", c.dir, c.line, c.pkt.Time, start, end)
			}
		}
	}

	// The credentials the PBX received never reach the capture; the
	// parameters an operator reads do.
	var secrets []string
	for _, r := range h.A.Requests() {
		for _, a := range r.Authorization {
			if m := digestResponse.FindStringSubmatch(a); m != nil {
				secrets = append(secrets, m[1])
			}
		}
	}
	if len(secrets) < 3 {
		t.Fatalf("pbx-a got %d answers to challenges, want the INVITE's, the BYE's and the MESSAGE's", len(secrets))
	}
	authorized := 0
	for _, p := range pkts {
		for _, s := range secrets {
			if bytes.Contains(p.Payload, []byte(s)) {
				t.Fatalf("the digest response %s is in the capture:\n%s", s, p.Payload)
			}
		}
		if bytes.Contains(p.Payload, []byte("\r\nAuthorization:")) {
			authorized++
			for _, want := range []string{`username="alice"`, `realm="asterisk"`, `response="[redacted]"`} {
				if !bytes.Contains(p.Payload, []byte(want)) {
					t.Errorf("captured Authorization lacks %s:\n%s", want, p.Payload)
				}
			}
		}
	}
	if authorized < 3 {
		t.Errorf("%d captured messages carry Authorization, want at least 3", authorized)
	}

	// Correlation: every packet carries its message's Call-ID, so the
	// client's leg and the upstream's leg of a call share one.
	hepPkts, bad := tee.packets(), tee.errors()
	if len(bad) > 0 {
		t.Fatalf("authproxy sent %d packets that are not HEPv3: %v", len(bad), bad[0])
	}
	legsOf := map[string]map[string]bool{}
	for _, p := range hepPkts {
		if p.AgentID != 4242 {
			t.Errorf("agent id %d, want 4242", p.AgentID)
		}
		if id := sipCallID(p.Payload); p.CorrelationID != id {
			t.Errorf("correlation id %q on a message of Call-ID %q", p.CorrelationID, id)
		}
		leg := "client"
		if p.Src == pbxAddr || p.Dst == pbxAddr {
			leg = "upstream"
		}
		if legsOf[p.CorrelationID] == nil {
			legsOf[p.CorrelationID] = map[string]bool{}
		}
		legsOf[p.CorrelationID][leg] = true
	}
	for _, id := range []string{call.CallID, messageID} {
		if !legsOf[id]["client"] || !legsOf[id]["upstream"] {
			t.Errorf("correlation id %s ties legs %v, want client and upstream", id, legsOf[id])
		}
	}
	s := h.Proxy.CaptureStats()
	if s.Sent < uint64(len(hepPkts)) {
		t.Errorf("CaptureStats.Sent = %d, the receiver got %d", s.Sent, len(hepPkts))
	}
	for reason, n := range s.Dropped {
		if n != 0 {
			t.Errorf("%d messages dropped (%s)", n, reason)
		}
	}
}
