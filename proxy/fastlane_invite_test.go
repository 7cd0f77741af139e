package proxy_test

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/authproxy/authproxy/proxy"
)

// The INVITE's client side on the fast lane (fastlane_invite.go): the
// scenarios of invitetx_test.go run there too; these are the lane's own.

// checkNon2xxAck checks that ack is the ACK RFC 3261 §17.1.1.3 asks for a
// non-2xx final response to inv (as the upstream received it): its
// Request-URI, its top Via alone, its From and Call-ID, its CSeq number
// with ACK, the response's To (tag "up"), no body.
func checkNon2xxAck(t *testing.T, ack, inv []byte) {
	t.Helper()
	invLine := firstLine(inv)
	if want := "ACK" + invLine[len("INVITE"):]; firstLine(ack) != want {
		t.Errorf("ACK line %q, want %q", firstLine(ack), want)
	}
	if n := bytes.Count(ack, []byte("\r\nVia:")); n != 1 || topBranch(t, ack) != topBranch(t, inv) {
		t.Errorf("ACK has %d Via lines, branch %s; want the INVITE's top Via (%s) alone", n, topBranch(t, ack), topBranch(t, inv))
	}
	for _, h := range []string{"From", "Call-ID"} {
		if header(ack, h) != header(inv, h) {
			t.Errorf("ACK %s %q, want the INVITE's %q", h, header(ack, h), header(inv, h))
		}
	}
	num, _, _ := bytes.Cut([]byte(header(inv, "CSeq")), []byte(" "))
	if got := header(ack, "CSeq"); got != string(num)+" ACK" {
		t.Errorf("ACK CSeq %q, want %s ACK", got, num)
	}
	if to := header(ack, "To"); !bytes.HasSuffix([]byte(to), []byte(";tag=up")) {
		t.Errorf("ACK To %q, want the response's (tag up)", to)
	}
	if header(ack, "Content-Length") != "0" || !bytes.HasSuffix(ack, []byte("\r\n\r\n")) {
		t.Errorf("ACK has a body:\n%s", ack)
	}
}

// waitsUnder fails unless the lane waits under the INVITE d's top branch.
func waitsUnder(t *testing.T, p *proxy.Proxy, d datagram) {
	t.Helper()
	if branches, _ := proxy.LaneState(p); !slices.Contains(branches, topBranch(t, d.data)) {
		t.Fatalf("the lane waits under %v, not the INVITE's branch %s: the INVITE went off the lane", branches, topBranch(t, d.data))
	}
}

// An INVITE lost on its way upstream is retransmitted by the lane (Timer
// A, the client having stopped at our 100) with the same branch, until a
// response; a non-2xx final response is ACKed by the lane, again for its
// retransmission (Timer D).
func TestLaneInviteTimerA(t *testing.T) {
	e := startInviteEnv(t)
	_, lost := e.invite(t, "la-lost")
	waitsUnder(t, e.p, lost)
	e.client.next(t, "SIP/2.0 100 ", "Call-ID: la-lost")
	again := e.up.next(t, "INVITE ", "Call-ID: la-lost")
	if !bytes.Equal(again.data, lost.data) {
		t.Fatalf("Timer A sent another INVITE:\n%s\nwas:\n%s", again.data, lost.data)
	}
	e.answer(t, again, "180 Ringing")
	e.client.next(t, "SIP/2.0 180 ")
	e.answer(t, again, "486 Busy Here")
	e.client.next(t, "SIP/2.0 486 ")
	ack := e.up.next(t, "ACK ", "Call-ID: la-lost")
	checkNon2xxAck(t, ack.data, again.data)
	e.answer(t, again, "486 Busy Here") // our ACK lost
	if ack2 := e.up.next(t, "ACK ", "Call-ID: la-lost"); !bytes.Equal(ack2.data, ack.data) {
		t.Errorf("ACK sent again as\n%s\nwas:\n%s", ack2.data, ack.data)
	}
	e.barrier(t, "la-lost-b")
	if n := countWith(e.up, "INVITE ", "Call-ID: la-lost\r\n"); n != 2 {
		t.Errorf("upstream got %d INVITEs, want 2 (Timer A once, stopped by the 180)", n)
	}
	e.drained(t)
}

// A challenged INVITE on the lane: the 407 ACKed (and again when the
// upstream retransmits it), the re-send with credentials, CSeq+1 and a new
// branch; the client's CANCEL then goes upstream with the re-send's
// branch and CSeq, and the upstream's 487 is ACKed. The upstream's
// responses read on the listener's read loop, then by its workers.
func TestLaneInviteChallenged(t *testing.T) {
	eachHandOff(t, "challenged", func(t *testing.T, _ int64) { testLaneInviteChallenged(t) })
}

func testLaneInviteChallenged(t *testing.T) {
	e := startInviteEnv(t)
	id := "la-auth"
	_, d := e.invite(t, id)
	waitsUnder(t, e.p, d)
	chal := `Proxy-Authenticate: Digest realm="pbx", nonce="n1", qop="auth", algorithm=MD5`
	e.answer(t, d, "407 Proxy Authentication Required", chal)
	ack := e.up.next(t, "ACK ", "Call-ID: "+id)
	checkNon2xxAck(t, ack.data, d.data)
	again := e.up.next(t, "INVITE ", "Call-ID: "+id, "Proxy-Authorization: Digest", "CSeq: 2 INVITE")
	if topBranch(t, again.data) == topBranch(t, d.data) {
		t.Fatal("the re-send has the challenged INVITE's branch")
	}
	waitsUnder(t, e.p, again)
	e.answer(t, d, "407 Proxy Authentication Required", chal) // our ACK lost
	if ack2 := e.up.next(t, "ACK ", "Call-ID: "+id); !bytes.Equal(ack2.data, ack.data) {
		t.Errorf("ACK sent again as\n%s\nwas:\n%s", ack2.data, ack.data)
	}

	e.answer(t, again, "180 Ringing")
	e.client.next(t, "SIP/2.0 180 ", "CSeq: 1 INVITE")
	e.client.send(t, e.addr, request("CANCEL", inviteRURI, e.client.addr(), id, 1))
	e.client.next(t, "SIP/2.0 200 ", "CSeq: 1 CANCEL")
	e.client.next(t, "SIP/2.0 487 ", "CSeq: 1 INVITE")
	c := e.up.next(t, "CANCEL ", "Call-ID: "+id)
	if topBranch(t, c.data) != topBranch(t, again.data) || header(c.data, "CSeq") != "2 CANCEL" {
		t.Errorf("CANCEL upstream with branch %s, CSeq %q; want the re-send's %s, 2 CANCEL", topBranch(t, c.data), header(c.data, "CSeq"), topBranch(t, again.data))
	}
	e.answer(t, c, "200 OK")
	e.answer(t, again, "487 Request Terminated")
	checkNon2xxAck(t, e.up.next(t, "ACK ", "Call-ID: "+id, "CSeq: 2 ACK").data, again.data)
	e.drained(t)
}

// 2xx responses from two forks (two To tags) are both relayed, each
// dialog recorded, and the client's ACK for each goes upstream.
func TestLaneInviteForked2xx(t *testing.T) {
	e := startInviteEnv(t)
	id := "la-fork"
	_, d := e.invite(t, id)
	contact := "Contact: <sip:1002@" + e.up.addr() + ">"
	e.answer(t, d, "200 OK", contact)
	ok1 := e.client.next(t, "SIP/2.0 200 ", ";tag=up\r\n")
	fork := bytes.Replace(response(d.data, "200 OK", contact), []byte(";tag=up\r\n"), []byte(";tag=up2\r\n"), 1)
	e.up.send(t, d.src.String(), fork)
	ok2 := e.client.next(t, "SIP/2.0 200 ", ";tag=up2\r\n")
	for _, tag := range []string{"up", "up2"} {
		if !proxy.HasDialog(e.p, id, "from-"+id, tag) {
			t.Errorf("no dialog recorded for the 2xx of To tag %s", tag)
		}
	}
	for i, ok := range [][]byte{ok1.data, ok2.data} {
		ack := e.clientAck(id, ok)
		ack = bytes.Replace(ack, []byte("-ack;"), []byte("-ack"+string(rune('a'+i))+";"), 1)
		e.client.send(t, e.addr, ack)
		e.up.next(t, "ACK ", "Call-ID: "+id, header(ok, "To"))
	}
	e.drained(t)
}

// Timer C on the lane: a callee that rings and never answers gets a
// CANCEL, the client a 408, and the upstream's 487 is ACKed, not relayed.
func TestLaneInviteTimerC(t *testing.T) {
	e := startInviteEnv(t, func(c *proxy.Config) { c.TimerC = 300 * time.Millisecond })
	id := "la-timer-c"
	_, d := e.invite(t, id)
	e.answer(t, d, "180 Ringing")
	e.client.next(t, "SIP/2.0 180 ")
	c := e.up.next(t, "CANCEL ", "Call-ID: "+id)
	e.client.next(t, "SIP/2.0 408 ", "CSeq: 1 INVITE")
	e.answer(t, c, "200 OK")
	e.answer(t, d, "487 Request Terminated")
	checkNon2xxAck(t, e.up.next(t, "ACK ", "Call-ID: "+id).data, d.data)
	e.barrier(t, id+"-b")
	if e.client.saw("SIP/2.0 487 ") {
		t.Error("the upstream's 487 was relayed after our 408")
	}
	e.drained(t)
}

// Failover from the lane: a 503, which the lane ACKs, or no response
// within FailoverTimeout (Timer A retransmitting meanwhile) moves the
// INVITE to the group's next upstream, off the lane with sipgo's client
// transactions and the same server transaction; the call goes on there.
func TestLaneInviteFailover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer bool // pbx-a answers 503, else nothing
	}{
		{"503", true},
		{"timeout", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newUDPPeer(t, "127.0.0.1")
			e := startInviteEnv(t, func(c *proxy.Config) {
				c.FailoverTimeout = 700 * time.Millisecond
				c.Upstreams[0].Domains = nil
				c.Upstreams = append(c.Upstreams, proxy.Upstream{Name: "pbx-b", Address: b.addr(), Transport: "udp"})
				c.Groups = []proxy.UpstreamGroup{{Name: "both", Upstreams: []string{"pbx-a", "pbx-b"}, Domains: []string{"pbx-a.example.com"}}}
			})
			id := "la-failover-" + tc.name
			_, d := e.invite(t, id)
			waitsUnder(t, e.p, d)
			if tc.answer {
				e.answer(t, d, "503 Service Unavailable")
				checkNon2xxAck(t, e.up.next(t, "ACK ", "Call-ID: "+id).data, d.data)
			} else {
				e.up.next(t, "INVITE ", "Call-ID: "+id) // Timer A
			}
			db := b.next(t, "INVITE ", "Call-ID: "+id)
			b.send(t, db.src.String(), response(db.data, "180 Ringing"))
			e.client.next(t, "SIP/2.0 180 ")
			b.send(t, db.src.String(), response(db.data, "200 OK", "Contact: <sip:1002@"+b.addr()+">"))
			ok := e.client.next(t, "SIP/2.0 200 ", "CSeq: 1 INVITE")
			if !proxy.HasDialog(e.p, id, "from-"+id, "up") {
				t.Error("no dialog recorded for the 2xx from pbx-b")
			}
			e.client.send(t, e.addr, e.clientAck(id, ok.data))
			b.next(t, "ACK ", "Call-ID: "+id)
			e.drained(t)
		})
	}
}

// The INVITE goes upstream as the client's bytes edited, our
// Record-Route added (§16.6 step 4), unless it has Record-Route entries
// already (ours must come first): then as the parsed copy, ours on top.
func TestLaneInviteRecordRoute(t *testing.T) {
	e := startInviteEnv(t)
	rr := "Record-Route: <sip:" + e.addr + ";lr>"
	inv := request("INVITE", inviteRURI, e.client.addr(), "la-rr", 1, "X-Odd:   spaced")
	e.client.send(t, e.addr, inv)
	d := e.up.next(t, "INVITE ", "Call-ID: la-rr")
	if !containsAll(d.data, []string{"\r\nX-Odd:   spaced\r\n", "\r\n" + rr + "\r\n"}) {
		t.Errorf("INVITE not sent as the client's bytes with our Record-Route:\n%s", d.data)
	}
	e.answer(t, d, "486 Busy Here")
	e.client.next(t, "SIP/2.0 486 ", "Call-ID: la-rr")

	inv = request("INVITE", inviteRURI, e.client.addr(), "la-rr2", 1, "X-Odd:   spaced", "Record-Route: <sip:10.1.1.1;lr>")
	e.client.send(t, e.addr, inv)
	d = e.up.next(t, "INVITE ", "Call-ID: la-rr2")
	if i, j := bytes.Index(d.data, []byte(rr)), bytes.Index(d.data, []byte("<sip:10.1.1.1;lr>")); i < 0 || j < i || bytes.Contains(d.data, []byte("X-Odd:   spaced")) {
		t.Errorf("INVITE with a Record-Route not sent as the parsed copy with ours on top:\n%s", d.data)
	}
	e.answer(t, d, "486 Busy Here")
	e.client.next(t, "SIP/2.0 486 ", "Call-ID: la-rr2")
	e.drained(t)
}
