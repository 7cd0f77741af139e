package proxy_test

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/internal/testutil"
)

// A response carrying the branch of a request authproxy sent is believed
// only from where that request went: over UDP, from the upstream's
// address; over TCP, on the connection the request went on. A 407 from
// anywhere else must not make authproxy answer a nonce of the sender's
// choosing, and a 200 from anywhere else must not reach the client. Both
// request paths: an INVITE (sipgo's client transaction) and a MESSAGE (the
// fast lane, which matches responses by branch itself). The attacker is a
// third host or another configured upstream; the real upstream answers
// afterwards, and its answer is what the client gets.
func TestSpoofedResponsesDropped(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	for _, tc := range []struct {
		name     string
		method   string
		attacker func() *udpPeer
		spoof    string // status line of the spoofed response
	}{
		{"407 to an INVITE from a third host", "INVITE", func() *udpPeer { return newUDPPeer(t, refusedHost) }, "407 Proxy Authentication Required"},
		{"407 to an INVITE from another upstream", "INVITE", func() *udpPeer { return e.upB }, "407 Proxy Authentication Required"},
		{"407 to a MESSAGE from a third host", "MESSAGE", func() *udpPeer { return newUDPPeer(t, refusedHost) }, "407 Proxy Authentication Required"},
		{"200 to a MESSAGE from another upstream", "MESSAGE", func() *udpPeer { return e.upB }, "200 OK"},
		{"200 to an INVITE from the upstream's host, another port", "INVITE", func() *udpPeer { return newUDPPeer(t, "127.0.0.1") }, "200 OK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newUDPPeer(t, "127.0.0.1")
			callID := "spoof-" + strings.Map(keepAlnum, tc.name)
			client.send(t, e.udp, request(tc.method, "sip:1002@pbx-a.example.com", client.addr(), callID, 1))
			sent := e.upA.next(t, tc.method+" ")

			before := e.obs.discards("response-source")
			tc.attacker().send(t, e.udp, response(sent.data, tc.spoof, "X-Spoofed: yes",
				`Proxy-Authenticate: Digest realm="asterisk", nonce="attacker-chosen", qop="auth", algorithm=MD5`))
			testutil.Eventually(t, "the spoofed response dropped (counted) or believed", func() bool {
				return e.obs.discards("response-source") == before+1 || e.upA.saw("attacker-chosen") || client.saw("X-Spoofed")
			})
			if e.upA.saw("attacker-chosen") || client.saw("X-Spoofed") {
				t.Fatal("the spoofed response was believed: authproxy answered its nonce, or relayed it")
			}

			// The real upstream challenges: authproxy answers its nonce.
			e.upA.send(t, sent.src.String(), response(sent.data, "407 Proxy Authentication Required",
				`Proxy-Authenticate: Digest realm="asterisk", nonce="upstream-nonce", qop="auth", algorithm=MD5`))
			again := e.upA.next(t, tc.method+" ", "Proxy-Authorization:")
			if auth := header(again.data, "Proxy-Authorization"); !strings.Contains(auth, `nonce="upstream-nonce"`) {
				t.Fatalf("re-send answers %q, want the upstream's nonce", auth)
			}
			e.upA.send(t, again.src.String(), response(again.data, "202 Accepted"))
			got := client.next(t, "SIP/2.0 2")
			if line := firstLine(got.data); line != "SIP/2.0 202 Accepted" || bytes.Contains(got.data, []byte("X-Spoofed")) {
				t.Fatalf("client got %q:\n%s", line, got.data)
			}
			if e.upA.saw("attacker-chosen") {
				t.Fatal("authproxy answered the attacker's nonce")
			}
		})
	}
}

// Over TCP a response counts only on the connection its request went on:
// the same response on a connection of its own, even from the upstream's
// host, is dropped.
func TestSpoofedResponseOnAnotherTCPConnectionDropped(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	for _, host := range []string{refusedHost, "127.0.0.1"} {
		t.Run("from "+host, func(t *testing.T) {
			client := newUDPPeer(t, "127.0.0.1")
			callID := "tcp-spoof-" + host
			client.send(t, e.udp, request("MESSAGE", "sip:1002@pbx-t.example.com", client.addr(), callID, 1))
			sent := e.upT.next(t, "MESSAGE ")

			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(host)}}
			conn, err := d.Dial("tcp", e.tcp)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			before := e.obs.discards("response-source")
			if _, err := conn.Write(response(sent.data, "200 OK", "X-Spoofed: yes")); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, "the spoofed response dropped (counted) or relayed", func() bool {
				return e.obs.discards("response-source") == before+1 || client.saw("X-Spoofed")
			})
			if client.saw("X-Spoofed") {
				t.Fatal("the spoofed response reached the client")
			}

			if _, err := sent.conn.Write(response(sent.data, "202 Accepted")); err != nil {
				t.Fatal(err)
			}
			got := client.next(t, "SIP/2.0 2")
			if line := firstLine(got.data); line != "SIP/2.0 202 Accepted" || bytes.Contains(got.data, []byte("X-Spoofed")) {
				t.Fatalf("client got %q:\n%s", line, got.data)
			}
		})
	}
}

// keepAlnum keeps letters and digits (for Call-IDs made of test names).
func keepAlnum(r rune) rune {
	if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
		return r
	}
	return -1
}
