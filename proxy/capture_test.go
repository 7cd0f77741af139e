package proxy

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/proxy/hep"
)

func TestRedactCredentials(t *testing.T) {
	tests := []struct {
		name, msg string
		gone      []string // must not survive
		kept      []string // must survive
	}{
		{
			name: "AuthorizationKeepsWhatOperatorsRead",
			msg: "INVITE sip:bob@pbx SIP/2.0\r\nCall-ID: c1\r\n" +
				"Authorization: Digest username=\"alice\", realm=\"asterisk\", nonce=\"n1\", uri=\"sip:bob@pbx\", " +
				"response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5, cnonce=\"CN0NCE\", qop=auth, nc=00000001\r\n" +
				"Content-Length: 0\r\n\r\n",
			gone: []string{"0123456789abcdef0123456789abcdef", "CN0NCE"},
			kept: []string{`username="alice"`, `realm="asterisk"`, `nonce="n1"`, `uri="sip:bob@pbx"`, "qop=auth", "nc=00000001",
				`response="[redacted]"`, `cnonce="[redacted]"`},
		},
		{
			name: "AnyCaseFoldedUnquoted",
			msg: "REGISTER sip:pbx SIP/2.0\r\nproxy-AUTHORIZATION: Digest username=\"bob\",\r\n\tRESPONSE=deadbeef02,\r\n" +
				" cnonce=\"split\r\n value\"\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
			gone: []string{"deadbeef02", "split", " value"},
			kept: []string{`username="bob"`, "Via: SIP/2.0/UDP h;branch=z9hG4bK1"},
		},
		{
			name: "AuthenticationInfo",
			msg:  "SIP/2.0 200 OK\r\nAuthentication-Info: qop=auth, rspauth=\"feedface\", cnonce=\"c9\", nc=00000001\r\n\r\n",
			gone: []string{"feedface", `"c9"`},
			kept: []string{"nc=00000001"},
		},
		{
			name: "ChallengeAndBodyUntouched",
			msg: "SIP/2.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"auth\"\r\n" +
				"Content-Length: 30\r\n\r\nAuthorization: response=\"body\"",
			kept: []string{`Proxy-Authenticate: Digest realm="r", nonce="n", qop="auth"`, `Authorization: response="body"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(redactCredentials([]byte(tt.msg)))
			for _, s := range tt.gone {
				if strings.Contains(got, s) {
					t.Errorf("%q survived:\n%s", s, got)
				}
			}
			for _, s := range tt.kept {
				if !strings.Contains(got, s) {
					t.Errorf("%q lost:\n%s", s, got)
				}
			}
			if len(tt.gone) == 0 && got != tt.msg {
				t.Errorf("changed a message with nothing to redact:\n%s", got)
			}
		})
	}
}

// FuzzRedactCredentials: whatever the message, a response, cnonce or
// rspauth value in a credential header does not survive, and the message
// is unchanged outside those headers.
func FuzzRedactCredentials(f *testing.F) {
	f.Add("Authorization", "response", `"SECRETVALUE"`)
	f.Add("proxy-authorization", "CNONCE", "SECRETVALUE")
	f.Add("Authentication-Info", "rspauth", "\"SECRET\r\n VALUE\"")
	f.Fuzz(func(t *testing.T, header, param, value string) {
		if strings.ContainsAny(header, ":\r\n") || strings.ContainsAny(param, "=\r\n\" ,;\t") {
			return
		}
		msg := "MESSAGE sip:a SIP/2.0\r\nVia: v\r\n" + header + ": Digest a=b, " + param + "=" + value + "\r\nCall-ID: x\r\n\r\nbody"
		got := string(redactCredentials([]byte(msg)))
		if !strings.HasPrefix(got, "MESSAGE sip:a SIP/2.0\r\nVia: v\r\n") || !strings.HasSuffix(got, "\r\nCall-ID: x\r\n\r\nbody") &&
			!strings.HasSuffix(got, "\r\n\r\nbody") {
			t.Fatalf("redaction changed the rest of the message:\n%q", got)
		}
		secret := strings.Trim(value, "\" \t\r\n")
		if !isCredentialHeader([]byte(strings.TrimSpace(header))) || !isCredentialSecret(param) ||
			len(secret) < 4 || strings.ContainsAny(value, ",; \t\r\n\"\\") {
			return
		}
		if strings.Contains(got, secret) {
			t.Fatalf("%q survived:\n%q", secret, got)
		}
	})
}

func isCredentialSecret(param string) bool {
	for _, s := range credentialSecrets {
		if strings.EqualFold(param, s) {
			return true
		}
	}
	return false
}

func TestCaptureCorrelation(t *testing.T) {
	tests := map[string]string{
		"INVITE sip:a SIP/2.0\r\nVia: v\r\nCall-ID:  abc@host \r\n\r\n":      "abc@host",
		"SIP/2.0 200 OK\r\ni: compact\r\n\r\n":                               "compact",
		"SIP/2.0 200 OK\r\nX: y\r\n\r\nCall-ID: in-the-body\r\n":             "",
		"BYE sip:a SIP/2.0\r\ncall-id: " + strings.Repeat("x", 300) + "\r\n": strings.Repeat("x", maxCorrelationID),
	}
	for msg, want := range tests {
		if got := captureCorrelation([]byte(msg)); got != want {
			t.Errorf("captureCorrelation(%q) = %q, want %q", msg, got, want)
		}
	}
}

// receiver is a UDP socket standing in for a HEP receiver.
func receiver(t *testing.T) (*net.UDPConn, string) {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc, pc.LocalAddr().String()
}

// TestCapturer_SendsAndStops: a tapped message arrives as a HEPv3 packet
// with its addresses, time, correlation and redaction; run returns once
// its context is done, after sending what was queued.
func TestCapturer_SendsAndStops(t *testing.T) {
	rx, addr := receiver(t)
	c, err := newCapturer(t.Context(), Capture{HEP: addr, AgentID: 7, AuthKey: "k"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	src, dst := netip.MustParseAddrPort("127.0.0.1:5060"), netip.MustParseAddrPort("127.0.0.2:5080")
	msg := "INVITE sip:b SIP/2.0\r\nCall-ID: call-1\r\nAuthorization: Digest username=\"u\", response=\"SECRET\"\r\n\r\n"
	before := time.Now()
	c.tap([]byte(msg), hep.ProtoUDP, src, dst)
	c.tap([]byte("\r\n\r\n"), hep.ProtoUDP, src, dst) // a keep-alive: not captured
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(ctx)
	}()
	cancel()
	<-done

	buf := make([]byte, 65536)
	if err := rx.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := rx.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	p, err := hep.Decode(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	if p.Src != src || p.Dst != dst || p.Proto != hep.ProtoUDP || p.AgentID != 7 || p.AuthKey != "k" || p.CorrelationID != "call-1" {
		t.Errorf("packet = %+v", p)
	}
	if p.Time.Before(before.Truncate(time.Microsecond)) || p.Time.After(time.Now()) {
		t.Errorf("time %v is not when the message was tapped", p.Time)
	}
	if strings.Contains(string(p.Payload), "SECRET") || !strings.Contains(string(p.Payload), `username="u"`) {
		t.Errorf("payload not redacted as it should be:\n%s", p.Payload)
	}
	if s := c.stats(); s.Sent != 1 || s.Dropped[CaptureQueueFull] != 0 {
		t.Errorf("stats = %+v, want 1 sent", s)
	}
}

// TestCapturer_DropsWhenFull: with no goroutine sending, the taps past the
// queue's length are dropped and counted, and tap never blocks.
func TestCapturer_DropsWhenFull(t *testing.T) {
	_, addr := receiver(t)
	c, err := newCapturer(t.Context(), Capture{HEP: addr}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	ap := netip.MustParseAddrPort("127.0.0.1:5060")
	for range captureQueueLen + 10 {
		c.tap([]byte("OPTIONS sip:a SIP/2.0\r\n\r\n"), hep.ProtoUDP, ap, ap)
	}
	if got := c.stats().Dropped[CaptureQueueFull]; got != 10 {
		t.Fatalf("dropped %d, want 10", got)
	}
	big := make([]byte, MaxMessageSize)
	c2, err := newCapturer(t.Context(), Capture{HEP: addr}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.conn.Close()
	for range captureQueueBytes/len(big) + 1 {
		c2.tap(big, hep.ProtoUDP, ap, ap)
	}
	if got := c2.stats().Dropped[CaptureQueueFull]; got != 1 {
		t.Fatalf("dropped %d over the byte bound, want 1", got)
	}
	var nilCapturer *capturer
	nilCapturer.tap(big, hep.ProtoUDP, ap, ap) // capture off: nothing, no panic
	nilCapturer.run(t.Context())
}

func TestValidateCapture(t *testing.T) {
	for hep, ok := range map[string]bool{
		"": true, "127.0.0.1:9060": true, "homer.example.net:9060": true, "[::1]:9060": true,
		"127.0.0.1": false, ":9060": false, "h:0": false, "h:70000": false, "h:x": false,
	} {
		if err := validateCapture(Capture{HEP: hep}); (err == nil) != ok {
			t.Errorf("validateCapture(%q) = %v, want ok %v", hep, err, ok)
		}
	}
}

// benchInvite is a forwarded INVITE with credentials and SDP, 986 bytes.
var benchInvite = []byte("INVITE sip:1002@pbx-a.example.com SIP/2.0\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.abcdefghijklmnop;rport\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK.qrstuvwxyz012345\r\n" +
	"Record-Route: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 69\r\n" +
	"From: <sip:1001@pbx-a.example.com>;tag=8xpx3gRt\r\nTo: <sip:1002@pbx-a.example.com>\r\n" +
	"Call-ID: 5c1f0a2e-3b7d-4e0a-9f5e-0d4c3b2a1f00\r\nCSeq: 2 INVITE\r\n" +
	"Contact: <sip:1001@127.0.0.1:40000>\r\n" +
	"Authorization: Digest username=\"alice\", realm=\"asterisk\", nonce=\"6f1c2b3a\", uri=\"sip:1002@pbx-a.example.com\", " +
	"response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5, cnonce=\"a1b2c3d4\", qop=auth, nc=00000001\r\n" +
	"Content-Type: application/sdp\r\nContent-Length: 300\r\n\r\n" + strings.Repeat("v=0\r\n", 60))

// BenchmarkCaptureTap is what capture costs the SIP path per message: a
// copy into the queue (a goroutine sends them meanwhile).
func BenchmarkCaptureTap(b *testing.B) {
	sink, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	c, err := newCapturer(b.Context(), Capture{HEP: sink.LocalAddr().String()}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(ctx)
	}()
	src, dst := netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("127.0.0.1:5060")
	b.ReportAllocs()
	for b.Loop() {
		c.tap(benchInvite, hep.ProtoUDP, src, dst)
	}
	cancel()
	<-done
}

// BenchmarkCaptureSend is the capture goroutine's work per message:
// redaction, correlation id, encoding and the send.
func BenchmarkCaptureSend(b *testing.B) {
	_, addr := receiverB(b)
	c, err := newCapturer(b.Context(), Capture{HEP: addr}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer c.conn.Close()
	m := capturedMsg{at: time.Now(), src: netip.MustParseAddrPort("127.0.0.1:40000"), dst: netip.MustParseAddrPort("127.0.0.1:5060"),
		proto: hep.ProtoUDP, data: benchInvite}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		c.queued.Add(int64(len(m.data)))
		buf = c.send(buf[:0], m)
	}
}

func receiverB(b *testing.B) (net.PacketConn, string) {
	b.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return pc, pc.LocalAddr().String()
}
