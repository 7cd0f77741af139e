package scenarios

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/hep"
)

// hepReceiver is an in-process HEP receiver: it decodes and keeps every
// packet and, when it has a next receiver, forwards each unchanged to it
// (what the pcap of a real receiver cannot show, the correlation id and
// the agent id, is checked on the packets it kept).
type hepReceiver struct {
	addr string
	mu   sync.Mutex
	pkts []hep.Packet
	bad  []error // packets that were not HEPv3
}

func startHEPReceiver(t *testing.T) *hepReceiver { return startHEPRelay(t, "") }

// startHEPRelay starts a receiver that forwards to next ("": to no one).
func startHEPRelay(t *testing.T, next string) *hepReceiver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var out net.Conn
	if next != "" {
		if out, err = net.Dial("udp", next); err != nil {
			t.Fatal(err)
		}
	}
	r := &hepReceiver{addr: pc.LocalAddr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p, err := hep.Decode(buf[:n])
			r.mu.Lock()
			if err != nil {
				r.bad = append(r.bad, err)
			} else {
				p.Payload = bytes.Clone(p.Payload)
				r.pkts = append(r.pkts, p)
			}
			r.mu.Unlock()
			if out != nil {
				_, _ = out.Write(buf[:n])
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
		if out != nil {
			out.Close()
		}
	})
	return r
}

// errors returns what was received that was not HEPv3.
func (r *hepReceiver) errors() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.bad...)
}

// find returns the packets of callID whose start line begins with line,
// sent from src to dst over proto.
func (r *hepReceiver) find(callID, line string, proto uint8, src, dst netip.AddrPort) []hep.Packet {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []hep.Packet
	for _, p := range r.pkts {
		if p.CorrelationID == callID && strings.HasPrefix(firstLine(p.Payload), line) && p.Proto == proto && p.Src == src && p.Dst == dst {
			out = append(out, p)
		}
	}
	return out
}

// TestHEPCaptureStreams: messages over TCP and TLS are captured too, as
// HEP protocol TCP: a client's MESSAGE over authproxy's TCP listener
// (both directions, between the client's connection and the listener),
// and an OPTIONS to a TLS upstream over the connection authproxy made, in
// clear text, its Authorization redacted.
func TestHEPCaptureStreams(t *testing.T) {
	rx := startHEPReceiver(t)
	ca := newTestCA(t)
	up := startTLSUpstream(t, "127.0.0.5", ca.issue(t, "pbx-tls.test"))
	creds := func(a, b string) []credentials.Entry {
		return append(defaultCredentials(a, b),
			credentials.Entry{Username: "tls-user", Password: credentials.NewSecret("tls-pw"), Server: up.TLSAddr()})
	}
	h := startHarness(t, harnessOptions{
		Credentials: creds,
		ExtraUpstreams: []proxy.Upstream{{Name: "tls", Address: up.TLSAddr(), Transport: "tls", RootCAs: ca.pool,
			ServerName: "pbx-tls.test", Domains: []string{"tls.example.com"}}},
		Mutate: func(c *proxy.Config, _ *harness) { c.Capture = proxy.Capture{HEP: rx.addr} },
	})

	messageID := "hep-tcp-" + uuid.NewString()
	if res := h.final(t, "tcp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001", CallID: messageID}); res.StatusCode != 200 {
		t.Fatalf("MESSAGE over TCP: %d", res.StatusCode)
	}
	optionsID := "hep-tls-" + uuid.NewString()
	if res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1@tls.example.com", FromUser: "1", CallID: optionsID}); res.StatusCode != 200 {
		t.Fatalf("OPTIONS to the TLS upstream: %d", res.StatusCode)
	}

	listener := netip.MustParseAddrPort(h.Addr["tcp"])
	var client netip.AddrPort
	testutil.Eventually(t, "the MESSAGE over TCP captured", func() bool {
		rx.mu.Lock()
		for _, p := range rx.pkts {
			if p.CorrelationID == messageID && p.Dst == listener && p.Proto == hep.ProtoTCP {
				client = p.Src
			}
		}
		rx.mu.Unlock()
		return client.IsValid() && len(rx.find(messageID, "SIP/2.0 200", hep.ProtoTCP, listener, client)) == 1 &&
			len(rx.find(messageID, "MESSAGE ", hep.ProtoTCP, client, listener)) >= 1
	})
	if got := rx.find(messageID, "MESSAGE ", hep.ProtoTCP, client, listener); len(got) != 1 {
		t.Errorf("captured %d copies of the MESSAGE from %s to the TCP listener %s, want 1", len(got), client, listener)
	}

	// The TLS connection's local address is authproxy's; the upstream
	// recorded where its requests came from.
	upAddr := netip.MustParseAddrPort(up.TLSAddr())
	rs := up.Requests()
	if len(rs) != 2 {
		t.Fatalf("the TLS upstream got %d requests, want the challenged OPTIONS and its answer", len(rs))
	}
	local := netip.MustParseAddrPort(rs[0].Source)
	// A message is captured once its read or write returned, so the
	// answer written may be captured after the 200 read: wait for both.
	testutil.Eventually(t, "the OPTIONS over TLS captured", func() bool {
		return len(rx.find(optionsID, "SIP/2.0 200", hep.ProtoTCP, upAddr, local)) == 1 &&
			len(rx.find(optionsID, "OPTIONS ", hep.ProtoTCP, local, upAddr)) >= 2
	})
	if got := rx.find(optionsID, "SIP/2.0 407", hep.ProtoTCP, upAddr, local); len(got) != 1 {
		t.Errorf("captured %d challenges (407) from the TLS upstream, want 1", len(got))
	}
	sent := rx.find(optionsID, "OPTIONS ", hep.ProtoTCP, local, upAddr)
	if len(sent) != 2 {
		t.Fatalf("captured %d OPTIONS to the TLS upstream, want 2 (the challenged one, the answer)", len(sent))
	}
	if p := sent[1].Payload; !bytes.Contains(p, []byte(`response="[redacted]"`)) || !bytes.Contains(p, []byte(`username="tls-user"`)) {
		t.Errorf("the answer as captured:\n%s", p)
	}
	if bad := rx.errors(); len(bad) != 0 {
		t.Errorf("%d packets were not HEPv3: %v", len(bad), bad)
	}
}

// TestHEPCaptureUpstreamTCP: with capture on, authproxy makes its TCP
// connections to upstreams itself so that they are captured: a call (its
// INVITE challenged) to an upstream over TCP shows on the
// upstream leg as TCP between the connection's ends, the PBX's view of
// them, and the call works as without capture.
func TestHEPCaptureUpstreamTCP(t *testing.T) {
	rx := startHEPReceiver(t)
	h := startHarness(t, harnessOptions{
		UpstreamTCP: true,
		Mutate:      func(c *proxy.Config, _ *harness) { c.Capture = proxy.Capture{HEP: rx.addr} },
	})
	call := answeredCall(t, h, "udp")
	if res := call.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE: %d", res.StatusCode)
	}
	waitCallState(t, h.A, call.CallID, "terminated")
	rs := h.A.Requests()
	if len(rs) == 0 || rs[0].Transport != "TCP" {
		t.Fatalf("pbx-a got %v, want the call over TCP", summarize(rs))
	}
	local := netip.MustParseAddrPort(rs[0].Source)
	pbx := netip.MustParseAddrPort(h.A.Addr())
	for _, r := range rs {
		if r.Source != rs[0].Source {
			t.Errorf("pbx-a got %s from %s, the call's first request from %s: one connection expected", r.Method, r.Source, local)
		}
	}
	// The client's ACK and its BYE take separate ways through authproxy,
	// so the ACK may reach the upstream after the BYE's 200: wait for
	// every message, then count them.
	wants := []struct {
		line     string
		src, dst netip.AddrPort
		n        int
	}{
		{"INVITE ", local, pbx, 2}, // challenged, then answered
		{"SIP/2.0 401", pbx, local, 1},
		{"ACK ", local, pbx, 2}, // the 401's and the 200's
		{"BYE ", local, pbx, 1},
		{"SIP/2.0 200", pbx, local, 2}, // the INVITE's and the BYE's
	}
	testutil.Eventually(t, "every message of the call captured on the upstream leg", func() bool {
		for _, want := range wants {
			if len(rx.find(call.CallID, want.line, hep.ProtoTCP, want.src, want.dst)) < want.n {
				return false
			}
		}
		return true
	})
	for _, want := range wants {
		if got := rx.find(call.CallID, want.line, hep.ProtoTCP, want.src, want.dst); len(got) != want.n {
			t.Errorf("captured %d %q from %s to %s over TCP, want %d", len(got), want.line, want.src, want.dst, want.n)
		}
	}
	assertNoCallErrors(t, h.A)
}

// TestHEPCaptureIPv6: over IPv6 the packets carry the IPv6 addresses
// (HEPv3 chunks 5 and 6), and a request the upstream sends into the
// dialog (the callee's BYE) is captured on both legs too.
func TestHEPCaptureIPv6(t *testing.T) {
	rx := startHEPReceiver(t)
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Host: "::1"}, Mutate: func(cfg *proxy.Config, _ *harness) {
		cfg.Listeners = []proxy.Listener{{Transport: "udp", Address: "127.0.0.1:0"}, {Transport: "udp", Address: "[::1]:0"}}
		cfg.Clients = []proxy.ClientGroup{{Name: "loopback", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, Upstreams: []string{"*"}}}
		cfg.Capture = proxy.Capture{HEP: rx.addr}
	}})
	ph := siptest.StartPhoneAt(t, "::1", "1001", "udp", h.Addr["udp6"])
	c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
	if res := c.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		t.Fatalf("INVITE: %d", res.StatusCode)
	}
	c.Ack()
	waitAck(t, h.A, c.CallID)
	if code := h.A.HangUp(t, c.CallID); code != 200 {
		t.Fatalf("callee BYE: %d", code)
	}
	c.Phone.WaitReceived(sip.BYE, 5*time.Second)

	listener := netip.MustParseAddrPort(h.Addr["udp6"])
	pbx := netip.MustParseAddrPort(h.A.Addr())
	// The phone sends from a socket of its own; authproxy sends into the
	// dialog where the INVITE came from.
	var phone netip.AddrPort
	testutil.Eventually(t, "the phone's INVITE captured", func() bool {
		for _, p := range rx.packets() {
			if p.CorrelationID == c.CallID && p.Dst == listener && strings.HasPrefix(firstLine(p.Payload), "INVITE ") {
				phone = p.Src
			}
		}
		return phone.IsValid()
	})
	testutil.Eventually(t, "the callee's BYE captured on both legs", func() bool {
		return len(rx.find(c.CallID, "BYE ", hep.ProtoUDP, pbx, listener)) == 1 &&
			len(rx.find(c.CallID, "BYE ", hep.ProtoUDP, listener, phone)) == 1
	})
	if got := rx.find(c.CallID, "INVITE ", hep.ProtoUDP, listener, pbx); len(got) != 2 {
		t.Errorf("captured %d INVITEs from %s to %s, want 2 (challenged, answered)", len(got), listener, pbx)
	}
	for _, p := range rx.packets() {
		if p.CorrelationID == c.CallID && (!p.Src.Addr().Is6() || !p.Dst.Addr().Is6() || p.Src.Addr().Is4In6()) {
			t.Errorf("%s -> %s: not IPv6", p.Src, p.Dst)
		}
	}
}

// packets returns what r received so far.
func (r *hepReceiver) packets() []hep.Packet {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hep.Packet(nil), r.pkts...)
}
