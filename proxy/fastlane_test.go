package proxy_test

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/authproxy/authproxy/proxy"
)

// scriptedUpstream is a UDP upstream the test answers by hand.
type scriptedUpstream struct {
	conn net.PacketConn
	got  chan datagram
}

type datagram struct {
	data []byte
	src  net.Addr
}

func startScriptedUpstream(t *testing.T) *scriptedUpstream {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &scriptedUpstream{conn: conn, got: make(chan datagram, 100)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, src, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			u.got <- datagram{bytes.Clone(buf[:n]), src}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return u
}

// next returns the next datagram the upstream received, failing after
// wait.
func (u *scriptedUpstream) next(t *testing.T, wait time.Duration) datagram {
	t.Helper()
	select {
	case d := <-u.got:
		return d
	case <-time.After(wait):
		t.Fatalf("upstream received nothing in %v", wait)
		return datagram{}
	}
}

// answer sends a response with status line status and the extra header
// lines to request d, its Via, From, To (tagged), Call-ID and CSeq copied.
func (u *scriptedUpstream) answer(t *testing.T, d datagram, status string, extra ...string) {
	t.Helper()
	out := []byte("SIP/2.0 " + status + "\r\n")
	for _, h := range extra {
		out = append(out, h+"\r\n"...)
	}
	out = appendResponseHeaders(out, d.data)
	if _, err := u.conn.WriteTo(out, d.src); err != nil {
		t.Fatal(err)
	}
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(b, []byte("\r\n"))
	return string(line)
}

func topBranch(t *testing.T, b []byte) string {
	t.Helper()
	i := bytes.Index(b, []byte("branch="))
	if i < 0 {
		t.Fatalf("no branch in %q", b)
	}
	rest := b[i+len("branch="):]
	if j := bytes.IndexAny(rest, ";\r"); j >= 0 {
		rest = rest[:j]
	}
	return string(rest)
}

// laneClient is a UDP client sending one MESSAGE (and its retransmissions).
type laneClient struct {
	conn net.PacketConn
	dst  net.Addr
	msg  []byte
}

func newLaneClient(t *testing.T, proxyAddr, callID string) *laneClient {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	dst, err := net.ResolveUDPAddr("udp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	return &laneClient{conn: conn, dst: dst, msg: laneMessage(conn.LocalAddr(), callID)}
}

// laneMessage is the MESSAGE of Call-ID callID a lane client at local
// sends.
func laneMessage(local net.Addr, callID string) []byte {
	return fmt.Appendf(nil, "MESSAGE sip:1002@pbx.example.com SIP/2.0\r\n"+
		"Via: SIP/2.0/UDP %s;branch=z9hG4bK-%s;rport\r\nMax-Forwards: 70\r\n"+
		"From: <sip:1001@pbx.example.com>;tag=c-%s\r\nTo: <sip:1002@pbx.example.com>\r\n"+
		"Call-ID: %s\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		local, callID, callID, callID)
}

// other is a client on the same socket sending the MESSAGE of another
// Call-ID: authproxy reads what the two send in the order they sent it,
// so a request of other serves as a barrier for c's.
func (c *laneClient) other(callID string) *laneClient {
	return &laneClient{conn: c.conn, dst: c.dst, msg: laneMessage(c.conn.LocalAddr(), callID)}
}

func (c *laneClient) send(t *testing.T) {
	t.Helper()
	if _, err := c.conn.WriteTo(c.msg, c.dst); err != nil {
		t.Fatal(err)
	}
}

// read returns the status line of the next response, or "" after wait.
func (c *laneClient) read(t *testing.T, wait time.Duration) string {
	t.Helper()
	buf := make([]byte, 65535)
	_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	n, _, err := c.conn.ReadFrom(buf)
	if err != nil {
		return ""
	}
	return firstLine(buf[:n])
}

// The fast lane (out-of-dialog MESSAGE over UDP) acts as a transaction
// stateful proxy would: a client's retransmission while the upstream has
// not answered goes on to the upstream at once, with the same branch; 100
// is not relayed, other provisional responses and the final one are; a
// retransmission after the final response is answered with it again
// without reaching the upstream; an upstream's retransmitted final
// response is not relayed twice. Both ways a UDP listener handles what it
// reads: on its read loop, and through its workers, as above 10,000
// datagrams a second.
func TestFastLaneTransactionBehaviour(t *testing.T) {
	for _, tc := range []struct {
		name      string
		handOffAt int64
	}{
		{"read loop", proxy.UDPHandOffAbove.Load()},
		{"workers", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			was := proxy.UDPHandOffAbove.Swap(tc.handOffAt)
			defer proxy.UDPHandOffAbove.Store(was)
			testFastLaneTransactionBehaviour(t)
		})
	}
}

func testFastLaneTransactionBehaviour(t *testing.T) {
	up := startScriptedUpstream(t)
	addr := startLoopbackProxy(t, up.conn.LocalAddr().String(), proxy.PreemptiveOff)
	c := newLaneClient(t, addr, "lane-1")

	c.send(t)
	first := up.next(t, 2*time.Second)
	// The client retransmits (Timer E): the lane passes it on, with the
	// same branch (there is no client transaction of authproxy's to send
	// a retransmission of its own).
	c.send(t)
	second := up.next(t, 2*time.Second)
	if b1, b2 := topBranch(t, first.data), topBranch(t, second.data); b1 != b2 {
		t.Fatalf("retransmission went upstream as a new transaction: branch %s, then %s", b1, b2)
	}
	if !bytes.Contains(first.data, []byte("Max-Forwards: 69")) {
		t.Errorf("Max-Forwards not decremented:\n%s", first.data)
	}

	up.answer(t, first, "100 Trying")
	up.answer(t, first, "180 Ringing")
	if got := c.read(t, 2*time.Second); got != "SIP/2.0 180 Ringing" {
		t.Fatalf("client got %q first, want the 180 (and no 100)", got)
	}
	up.answer(t, first, "202 Accepted")
	if got := c.read(t, 2*time.Second); got != "SIP/2.0 202 Accepted" {
		t.Fatalf("client got %q, want 202", got)
	}
	// The upstream retransmits its final response, then answers another
	// request of the client's: authproxy reads the two in that order, so
	// the client's next datagram is that answer unless the retransmission
	// was relayed.
	barrier := c.other("lane-1b")
	barrier.send(t)
	b := up.next(t, 2*time.Second)
	up.answer(t, first, "202 Accepted") // the upstream's retransmission
	up.answer(t, b, "200 OK")
	if got := c.read(t, 2*time.Second); got != "SIP/2.0 200 OK" {
		t.Fatalf("client got %q after its final response, want only the next request's 200", got)
	}

	c.send(t) // retransmitted after the final response
	if got := c.read(t, 2*time.Second); got != "SIP/2.0 202 Accepted" {
		t.Fatalf("retransmission answered %q, want the 202 again", got)
	}
	// A request the client sends after the retransmission is what the
	// upstream gets next: the retransmission did not go on.
	c.other("lane-1c").send(t)
	if d := up.next(t, 2*time.Second); !bytes.Contains(d.data, []byte("\r\nCall-ID: lane-1c\r\n")) {
		t.Fatalf("upstream got %q after the final response, want the next request", firstLine(d.data))
	}
}

// A 401/407 on the fast lane is answered as on the usual path: the
// request goes again with credentials and CSeq+1, and the client gets the
// upstream's final answer to that (fastlane_challenge_test.go has the
// rest).
func TestFastLaneChallenge(t *testing.T) {
	up, c, again := laneAfterChallenge(t, "lane-2")
	if !bytes.Contains(again.data, []byte("Proxy-Authorization: Digest")) || !bytes.Contains(again.data, []byte("CSeq: 2 MESSAGE")) {
		t.Fatalf("re-send without credentials or CSeq+1:\n%s", again.data)
	}
	up.answer(t, again, "200 OK")
	if got := c.read(t, 2*time.Second); got != "SIP/2.0 200 OK" {
		t.Fatalf("client got %q, want 200", got)
	}
}

// laneAfterChallenge starts an upstream, a proxy (preemptive off) and a
// lane client whose MESSAGE the upstream challenges, and returns them
// with the request authproxy sent again, not answered yet.
func laneAfterChallenge(t *testing.T, callID string) (*scriptedUpstream, *laneClient, datagram) {
	t.Helper()
	up := startScriptedUpstream(t)
	addr := startLoopbackProxy(t, up.conn.LocalAddr().String(), proxy.PreemptiveOff)
	c := newLaneClient(t, addr, callID)
	c.send(t)
	first := up.next(t, 2*time.Second)
	up.answer(t, first, "407 Proxy Authentication Required",
		`Proxy-Authenticate: Digest realm="bench", nonce="n1", qop="auth", algorithm=MD5`)
	return up, c, up.next(t, 2*time.Second)
}

// A request on the fast lane goes on as the client's bytes with
// authproxy's edits, and its response comes back
// as the bytes the upstream sent: our Via gone, the client's
// own CSeq number back where authproxy shifted it after a challenge in the
// same Call-ID, every other header as the upstream wrote it.
func TestFastLaneRawRelay(t *testing.T) {
	up, c, again := laneAfterChallenge(t, "lane-3")
	up.answer(t, again, "200 OK")
	if got := c.read(t, 2*time.Second); got != "SIP/2.0 200 OK" {
		t.Fatalf("client got %q, want 200", got)
	}

	// The next MESSAGE of the dialer's Call-ID: CSeq 2 goes up as 3, sent
	// on as the client's bytes edited: its header spelt
	// oddly arrives verbatim, which a parsed copy would not.
	c.msg = bytes.Replace(c.msg, []byte("CSeq: 1 MESSAGE"), []byte("CSeq: 2 MESSAGE\r\nX-Odd:   spaced"), 1)
	c.msg = bytes.Replace(c.msg, []byte("branch=z9hG4bK-lane-3"), []byte("branch=z9hG4bK-lane-3b"), 1)
	c.send(t)
	next := up.next(t, 2*time.Second)
	for _, want := range []string{"\r\nCSeq: 3 MESSAGE\r\n", "\r\nX-Odd:   spaced\r\n", "\r\nMax-Forwards: 69\r\n", ";branch=z9hG4bK-lane-3b;rport=", "\r\n\r\nhello"} {
		if !bytes.Contains(next.data, []byte(want)) {
			t.Errorf("forwarded request lacks %q:\n%s", want, next.data)
		}
	}
	up.answer(t, next, "202 Accepted", "X-Upstream: kept as is")
	buf := make([]byte, 65535)
	_ = c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, _, err := c.conn.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no response relayed: %v", err)
	}
	res := buf[:n]
	for _, want := range []string{"SIP/2.0 202 Accepted\r\n", "\r\nX-Upstream: kept as is\r\n", "\r\nCSeq: 2 MESSAGE\r\n", "branch=z9hG4bK-lane-3b"} {
		if !bytes.Contains(res, []byte(want)) {
			t.Errorf("relayed response lacks %q:\n%s", want, res)
		}
	}
	if vias := bytes.Count(res, []byte("\r\nVia:")); vias != 1 {
		t.Errorf("relayed response has %d Via lines, want the client's alone:\n%s", vias, res)
	}
}
