package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

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
// host, is dropped. A connection from a source no client group admits is
// closed before anything on it is read (the TCP listener's guard).
func TestSpoofedResponseOnAnotherTCPConnectionDropped(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	for _, tc := range []struct {
		host     string
		admitted bool // a client group admits it
	}{{refusedHost, false}, {"127.0.0.1", true}} {
		host := tc.host
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
			closed := make(chan struct{})
			go func() { // until either side closes the connection
				defer close(closed)
				_, _ = io.Copy(io.Discard, conn)
			}()
			defer func() { conn.Close(); <-closed }()
			before := e.obs.discards("response-source")
			// A write may fail once the guard has closed the connection.
			_, _ = conn.Write(response(sent.data, "200 OK", "X-Spoofed: yes"))
			if tc.admitted {
				testutil.Eventually(t, "the spoofed response dropped (counted) or relayed", func() bool {
					return e.obs.discards("response-source") == before+1 || client.saw("X-Spoofed")
				})
			} else {
				testutil.Eventually(t, "the connection closed by authproxy", func() bool {
					select {
					case <-closed:
						return true
					default:
						return client.saw("X-Spoofed")
					}
				})
			}
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

// A CANCEL cancels an INVITE only from the INVITE's source: from anyone
// else (a source no group admits, another port of an admitted address,
// another TCP connection) it is refused with 403, nothing reaches the
// upstream, and the caller's call goes on to its 200. From the INVITE's
// source it cancels: 200 to the CANCEL, 487 to the INVITE, a CANCEL
// upstream.
func TestCrossSourceCancelRefused(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	for _, tc := range []struct {
		name   string
		cancel func(t *testing.T, client *udpPeer, msg []byte) string // sends the CANCEL, returns its answer's status line
		allow  bool
	}{
		{"from a source no group admits", func(t *testing.T, _ *udpPeer, msg []byte) string {
			a := newUDPPeer(t, refusedHost)
			a.send(t, e.udp, msg)
			return firstLine(a.next(t, "SIP/2.0 ").data)
		}, false},
		{"from another port of an admitted address", func(t *testing.T, _ *udpPeer, msg []byte) string {
			a := newUDPPeer(t, "127.0.0.1")
			a.send(t, e.udp, msg)
			return firstLine(a.next(t, "SIP/2.0 ").data)
		}, false},
		{"over TCP from the INVITE's host", func(t *testing.T, _ *udpPeer, msg []byte) string {
			return firstLine(tcpExchange(t, "127.0.0.1", e.tcp, msg))
		}, false},
		{"from the INVITE's source", func(t *testing.T, client *udpPeer, msg []byte) string {
			client.send(t, e.udp, msg)
			return firstLine(client.next(t, "SIP/2.0 200 ", "CANCEL").data)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newUDPPeer(t, "127.0.0.1")
			callID := "cancel-" + strings.Map(keepAlnum, tc.name)
			client.send(t, e.udp, request("INVITE", "sip:1002@pbx-a.example.com", client.addr(), callID, 1))
			sent := e.upA.next(t, "INVITE ", callID)
			e.upA.send(t, sent.src.String(), response(sent.data, "180 Ringing"))
			client.next(t, "SIP/2.0 180 ")

			// A copy of the client's CANCEL: the INVITE's Via (branch),
			// From, To, Call-ID and CSeq number.
			got := tc.cancel(t, client, request("CANCEL", "sip:1002@pbx-a.example.com", client.addr(), callID, 1))
			if tc.allow {
				if got != "SIP/2.0 200 OK" {
					t.Fatalf("CANCEL from the INVITE's source answered %q", got)
				}
				e.upA.next(t, "CANCEL ", callID)
				client.next(t, "SIP/2.0 487 ")
				return
			}
			if !strings.HasPrefix(got, "SIP/2.0 403 ") {
				t.Fatalf("CANCEL answered %q, want 403", got)
			}
			e.upA.send(t, sent.src.String(), response(sent.data, "200 OK", "Contact: <sip:1002@"+e.upA.addr()+">"))
			final := client.next(t, "SIP/2.0 ", callID)
			for strings.HasPrefix(firstLine(final.data), "SIP/2.0 1") {
				final = client.next(t, "SIP/2.0 ", callID)
			}
			if line := firstLine(final.data); line != "SIP/2.0 200 OK" {
				t.Fatalf("the caller got %q, want the call's 200", line)
			}
			// Barrier: the caller's ACK reaches the upstream after anything
			// the CANCEL could have caused.
			client.send(t, e.udp, ack(client.addr(), callID, e.upA.addr()))
			e.upA.next(t, "ACK ", callID)
			if e.upA.saw("CANCEL ", callID) {
				t.Fatal("the refused CANCEL reached the upstream")
			}
		})
	}
}

// With limits.deny = "drop", a CANCEL from another source over UDP gets
// no answer at all, and still cancels nothing.
func TestCrossSourceCancelDropped(t *testing.T) {
	e := startHostile(t, hostileOptions{drop: true})
	client := newUDPPeer(t, "127.0.0.1")
	client.send(t, e.udp, request("INVITE", "sip:1002@pbx-a.example.com", client.addr(), "cancel-drop", 1))
	sent := e.upA.next(t, "INVITE ")
	e.upA.send(t, sent.src.String(), response(sent.data, "180 Ringing"))
	client.next(t, "SIP/2.0 180 ")

	attacker := newUDPPeer(t, refusedHost)
	attacker.send(t, e.udp, request("CANCEL", "sip:1002@pbx-a.example.com", client.addr(), "cancel-drop", 1))
	testutil.Eventually(t, "the CANCEL refused (counted) or obeyed", func() bool {
		return e.obs.refusals("cancel-source") == 1 || client.saw("SIP/2.0 487 ") || e.upA.saw("CANCEL ")
	})
	if client.saw("SIP/2.0 487 ") || e.upA.saw("CANCEL ") {
		t.Fatal("the CANCEL from another source cancelled the call")
	}
	e.upA.send(t, sent.src.String(), response(sent.data, "200 OK", "Contact: <sip:1002@"+e.upA.addr()+">"))
	if line := firstLine(client.next(t, "SIP/2.0 2").data); line != "SIP/2.0 200 OK" {
		t.Fatalf("the caller got %q, want the call's 200", line)
	}
	if attacker.count("SIP/2.0") != 0 {
		t.Fatal("the refused CANCEL was answered despite deny = drop")
	}
	if e.upA.count("CANCEL ") != 0 {
		t.Fatal("the refused CANCEL reached the upstream")
	}
}

// An ACK for a call's 2xx goes upstream only from the call's client: an
// ACK for it (Call-ID, tags, CSeq) from another port of an admitted
// address, or from a source no group admits, is dropped and counted.
func TestCrossSourceAckDropped(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	client := newUDPPeer(t, "127.0.0.1")
	client.send(t, e.udp, request("INVITE", "sip:1002@pbx-a.example.com", client.addr(), "ack-call", 1))
	sent := e.upA.next(t, "INVITE ")
	e.upA.send(t, sent.src.String(), response(sent.data, "200 OK", "Contact: <sip:1002@"+e.upA.addr()+">"))
	client.next(t, "SIP/2.0 200 ")

	for i, host := range []string{"127.0.0.1", refusedHost} {
		attacker := newUDPPeer(t, host)
		// A branch of its own for each ACK: sipgo matches an ACK to the
		// "transaction" of an earlier one with the same branch and sent-by
		// (RFC 3261 §17.2.3 ignores the source) until that one's handler
		// has returned, and would absorb it as a retransmission, unseen.
		msg := bytes.Replace(ack(client.addr(), "ack-call", e.upA.addr()), []byte("-ack;"), []byte(fmt.Sprintf("-ack-%d;", i)), 1)
		attacker.send(t, e.udp, msg)
		testutil.Eventually(t, "the ACK from "+host+" dropped (counted) or forwarded", func() bool {
			return e.obs.discards("ack-source") == i+1 || e.upA.count("ACK ") > 0
		})
		if e.upA.count("ACK ") > 0 {
			t.Fatalf("the ACK from %s reached the upstream", host)
		}
	}
	client.send(t, e.udp, ack(client.addr(), "ack-call", e.upA.addr()))
	e.upA.next(t, "ACK ")
	if n := e.upA.count("ACK "); n != 1 {
		t.Fatalf("the upstream got %d ACKs, want the caller's alone", n)
	}
}

// ack is the ACK a caller at client sends for the 2xx of its INVITE with
// callID (CSeq 1), to the callee's Contact at callee.
func ack(client, callID, callee string) []byte {
	msg := request("ACK", "sip:1002@"+callee, client, callID, 1)
	msg = bytes.Replace(msg, []byte("branch=z9hG4bK-"+callID+"-1;"), []byte("branch=z9hG4bK-"+callID+"-ack;"), 1)
	return bytes.Replace(msg, []byte("To: <sip:1002@pbx-a.example.com>"), []byte("To: <sip:1002@pbx-a.example.com>;tag=up"), 1)
}

// tcpExchange sends msg on a new TCP connection from host to addr and
// returns the first response read on it.
func tcpExchange(t *testing.T, host, addr string, msg []byte) []byte {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(host)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go readSIPStream(conn, func(m []byte) {
		select {
		case got <- m:
		default:
		}
	})
	select {
	case m := <-got:
		return m
	case <-time.After(hostileWait):
		t.Fatal("no response on the TCP connection")
		return nil
	}
}

// Malformed requests are refused at once, with a status and a reason
// phrase saying what is wrong (RFC 3261 §16.3 step 1, §8.2), or dropped
// when no response can be built, and nothing of them goes upstream: on
// the fast lane (MESSAGE) and on sipgo's transactions (INVITE), whether
// sipgo's parser reads them or refuses them. Each carries a client's
// Proxy-Authorization, which the log must not show. The listener serves a
// normal request afterwards.
func TestMalformedRequestsRefused(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	client := newUDPPeer(t, "127.0.0.1")
	msg := func(method, callID string) []byte {
		return request(method, "sip:1002@pbx-a.example.com", client.addr(), callID, 1, clientAuth)
	}
	edit := func(b []byte, old, new string) []byte {
		t.Helper()
		out := bytes.Replace(b, []byte(old), []byte(new), 1)
		if bytes.Equal(out, b) {
			t.Fatalf("%q not in the request", old)
		}
		return out
	}
	drop := func(b []byte, name string) []byte {
		t.Helper()
		i := bytes.Index(b, []byte("\r\n"+name+": "))
		if i < 0 {
			t.Fatalf("no %s in the request", name)
		}
		j := bytes.Index(b[i+2:], []byte("\r\n"))
		return append(b[:i:i], b[i+2+j:]...)
	}
	for i, tc := range []struct {
		name string
		msg  []byte
		want string // status line prefix; "" for no answer
	}{
		{"MESSAGE without Call-ID", drop(msg("MESSAGE", "m1"), "Call-ID"), "SIP/2.0 400 Bad Request (missing Call-ID)"},
		{"MESSAGE without From", drop(msg("MESSAGE", "m2"), "From"), "SIP/2.0 400 Bad Request (missing From)"},
		{"MESSAGE without To", drop(msg("MESSAGE", "m3"), "To"), "SIP/2.0 400 Bad Request (missing To)"},
		{"MESSAGE without CSeq", drop(msg("MESSAGE", "m4"), "CSeq"), "SIP/2.0 400 "},
		{"INVITE without To", drop(msg("INVITE", "m5"), "To"), "SIP/2.0 400 Bad Request (missing To)"},
		{"SIP/3.0", edit(msg("MESSAGE", "m6"), " SIP/2.0\r\n", " SIP/3.0\r\n"), "SIP/2.0 505 "},
		{"NUL in the Request-URI", edit(msg("MESSAGE", "m7"), "sip:1002@", "sip:10\x0002@"), "SIP/2.0 400 Bad Request (control character in Request-URI)"},
		{"control character in the Request-URI", edit(msg("INVITE", "m8"), "sip:1002@", "sip:10\x0102@"), "SIP/2.0 400 Bad Request (control character in Request-URI)"},
		{"Max-Forwards -1", edit(msg("MESSAGE", "m9"), "Max-Forwards: 70", "Max-Forwards: -1"), "SIP/2.0 400 Bad Request (malformed Max-Forwards)"},
		{"Max-Forwards abc", edit(msg("INVITE", "m10"), "Max-Forwards: 70", "Max-Forwards: abc"), "SIP/2.0 400 Bad Request (malformed Max-Forwards)"},
		{"CSeq method not the request's", edit(msg("MESSAGE", "m11"), "CSeq: 1 MESSAGE", "CSeq: 1 INVITE"), "SIP/2.0 400 Bad Request (CSeq method differs from request method)"},
		{"two Call-IDs", edit(msg("MESSAGE", "m12"), "Call-ID: m12", "Call-ID: m12\r\nCall-ID: other"), "SIP/2.0 400 Bad Request (more than one Call-ID)"},
		{"malformed Contact", edit(msg("INVITE", "m13"), "Contact: <sip:1001@", "Contact: <<sip:1001@"), "SIP/2.0 400 Bad Request (malformed Contact)"},
		{"60 kB header", edit(msg("MESSAGE", "m14"), "Content-Length: 0", "X-Large: "+strings.Repeat("x", 60<<10)+"\r\nContent-Length: 0"), "SIP/2.0 513 Message Too Large"},
		{"Request-URI the parser refuses", edit(msg("MESSAGE", "m15"), "MESSAGE sip:1002@pbx-a.example.com SIP/2.0", "MESSAGE <sip:1002@pbx-a.example.com> SIP/2.0"), "SIP/2.0 400 Bad Request (unparsable message)"},
		{"From the parser refuses", edit(msg("INVITE", "m16"), "From: <sip:1001@", "From: <<sip:1001@"), "SIP/2.0 400 Bad Request (unparsable message)"},
		{"CSeq number out of range", edit(msg("MESSAGE", "m17"), "CSeq: 1 MESSAGE", "CSeq: 36893488147419103232 MESSAGE"), "SIP/2.0 400 Bad Request (unparsable message)"},
		{"no Via and unparsable", drop(edit(msg("MESSAGE", "m18"), "From: <sip:1001@", "From: <<sip:1001@"), "Via"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			unparsable := e.obs.discards("unparsable")
			client.send(t, e.udp, tc.msg)
			callID := fmt.Sprintf("Call-ID: m%d\r\n", i+1)
			if tc.want == "" {
				testutil.Eventually(t, "the request dropped and counted", func() bool {
					return e.obs.discards("unparsable") == unparsable+1 || client.saw("SIP/2.0 ", callID)
				})
				if client.saw("SIP/2.0 ", callID) {
					t.Fatal("answered a request no response can be built for")
				}
				return
			}
			// Its answer, by its branch (an INVITE's 400 is retransmitted
			// until an ACK that never comes).
			branch := fmt.Sprintf(";branch=z9hG4bK-m%d-1;", i+1)
			got := client.next(t, "SIP/2.0 ", branch)
			for strings.HasPrefix(firstLine(got.data), "SIP/2.0 100 ") {
				got = client.next(t, "SIP/2.0 ", branch)
			}
			if line := firstLine(got.data); !strings.HasPrefix(line, tc.want) {
				t.Fatalf("answered %q, want %q", line, tc.want)
			}
		})
	}
	// The listener still serves, and the upstream gets this request and
	// nothing before it.
	client.send(t, e.udp, request("MESSAGE", "sip:1002@pbx-a.example.com", client.addr(), "after", 1))
	sent := e.upA.next(t, "MESSAGE ")
	if !bytes.Contains(sent.data, []byte("Call-ID: after")) {
		t.Fatalf("the upstream got a malformed request:\n%s", sent.data)
	}
	e.upA.send(t, sent.src.String(), response(sent.data, "200 OK"))
	client.next(t, "SIP/2.0 200 ", "Call-ID: after")
	e.upA.mu.Lock()
	n := len(e.upA.seen)
	e.upA.mu.Unlock()
	if n != 1 {
		t.Fatalf("the upstream got %d messages, want the last request alone", n)
	}
}

// A flood of datagrams sipgo's parser refuses, each carrying a client's
// digest response, from a source no group admits: each is counted (and
// answered 400, the source's only answer), but the log gets one line per
// sipgoLogInterval (10 s), at WARN, redacted, cut short. The listener
// serves a normal request afterwards.
func TestParseFailureFloodLoggedThrottledAndRedacted(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	attacker := newUDPPeer(t, refusedHost)
	bad := request("MESSAGE", "sip:1002@pbx-a.example.com", attacker.addr(), "flood", 1, clientAuth, "X-Pad: "+strings.Repeat("p", 2000))
	bad = bytes.Replace(bad, []byte("MESSAGE sip:1002@pbx-a.example.com SIP/2.0"), []byte("MESSAGE <sip:1002@pbx-a.example.com> SIP/2.0"), 1)
	counted := func() int { return e.obs.refusals("bad-request") + e.obs.discards("unparsable") }
	const flood, batch = 2000, 100
	start := time.Now()
	for sent := 0; sent < flood; sent += batch {
		for range batch {
			attacker.send(t, e.udp, bad)
		}
		// Paced by what authproxy has handled, so that the socket buffer
		// never overflows.
		testutil.Eventually(t, "the batch handled", func() bool { return counted() >= sent+batch })
	}
	elapsed := time.Since(start)

	logs := e.logs.String()
	lines := strings.Count(logs, `"msg":"failed to parse"`)
	if limit := 1 + int(elapsed/(10*time.Second)); lines < 1 || lines > limit {
		t.Errorf("%d \"failed to parse\" lines for %d datagrams in %v, want 1 to %d", lines, flood, elapsed, limit)
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "failed to parse") {
			if !strings.Contains(line, `"level":"WARN"`) || len(line) > 2048 {
				t.Errorf("parse failure logged at another level than WARN, or not cut short (%d bytes):\n%s", len(line), line)
			}
		}
	}
	if len(logs) > 64<<10 {
		t.Errorf("%d bytes of log for the flood", len(logs))
	}

	client := newUDPPeer(t, "127.0.0.1")
	client.send(t, e.udp, request("MESSAGE", "sip:1002@pbx-a.example.com", client.addr(), "after-flood", 1))
	sent := e.upA.next(t, "MESSAGE ", "after-flood")
	e.upA.send(t, sent.src.String(), response(sent.data, "200 OK"))
	client.next(t, "SIP/2.0 200 ")
}

// A CANCEL matching no INVITE gets 481 from an admitted source and, from
// a source no group admits, what every request from it gets: 403.
func TestUnmatchedCancelFromRefusedSource(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	for _, tc := range []struct{ host, want string }{
		{"127.0.0.1", "SIP/2.0 481 "},
		{refusedHost, "SIP/2.0 403 "},
	} {
		peer := newUDPPeer(t, tc.host)
		peer.send(t, e.udp, request("CANCEL", "sip:1002@pbx-a.example.com", peer.addr(), "no-invite-"+tc.host, 1))
		if got := firstLine(peer.next(t, "SIP/2.0 ").data); !strings.HasPrefix(got, tc.want) {
			t.Errorf("CANCEL from %s answered %q, want %q", tc.host, got, tc.want)
		}
	}
	if e.upA.count("CANCEL ") != 0 {
		t.Error("a CANCEL matching nothing reached the upstream")
	}
}
