package proxy_test

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// inviteEnv is a proxy with one UDP listener and one UDP upstream
// (pbx-a, no preemptive answers), a UDP client and the upstream as
// scripted peers: what the lane's INVITE server transaction (invitetx.go)
// is tested with.
type inviteEnv struct {
	p          *proxy.Proxy
	addr       string // the proxy's UDP listener
	client, up *udpPeer
}

const inviteRURI = "sip:1002@pbx-a.example.com"

func startInviteEnv(t *testing.T, opts ...func(*proxy.Config)) *inviteEnv {
	t.Helper()
	e := &inviteEnv{client: newUDPPeer(t, "127.0.0.1"), up: newUDPPeer(t, "127.0.0.1")}
	store, err := credentials.NewStore([]credentials.Entry{{Username: "trunk", Password: credentials.NewSecret("trunk-secret"), Server: e.up.addr()}})
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	cfg := proxy.Config{
		Listeners:     []proxy.Listener{{Transport: "udp", Address: "127.0.0.1:0"}},
		Upstreams:     []proxy.Upstream{{Name: "pbx-a", Address: e.up.addr(), Transport: "udp", Domains: []string{"pbx-a.example.com"}, Preemptive: proxy.PreemptiveOff}},
		Credentials:   store,
		Clients:       []proxy.ClientGroup{{Name: "lan", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Upstreams: []string{"*"}}},
		ShutdownGrace: time.Second,
		Logger:        slog.New(slog.DiscardHandler),
		Ready:         func() { close(ready) },
	}
	for _, o := range opts {
		o(&cfg)
	}
	e.p, err = proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runProxy(t, e.p, ready, nil)
	e.addr = e.p.ListenAddrs()["udp"]
	return e
}

// invite sends the client's INVITE of callID and returns it with the
// INVITE the upstream received.
func (e *inviteEnv) invite(t *testing.T, callID string) (inv []byte, up datagram) {
	t.Helper()
	inv = request("INVITE", inviteRURI, e.client.addr(), callID, 1)
	e.client.send(t, e.addr, inv)
	return inv, e.up.next(t, "INVITE ", "Call-ID: "+callID)
}

// answer sends the upstream's response with status to the request d.
func (e *inviteEnv) answer(t *testing.T, d datagram, status string, extra ...string) {
	t.Helper()
	e.up.send(t, d.src.String(), response(d.data, status, extra...))
}

// clientAck is the client's ACK for res, its final response to the
// INVITE of callID: with the INVITE's branch for a non-2xx (RFC 3261
// §17.1.1.3), a new one for a 2xx (§13.2.2.4), routed through the proxy.
func (e *inviteEnv) clientAck(callID string, res []byte) []byte {
	ack := request("ACK", inviteRURI, e.client.addr(), callID, 1, "Route: <sip:"+e.addr+";lr>")
	ack = bytes.Replace(ack, []byte("To: <sip:1002@pbx-a.example.com>"), []byte("To: "+header(res, "To")), 1)
	if strings.HasPrefix(firstLine(res), "SIP/2.0 2") {
		ack = bytes.Replace(ack, []byte("branch=z9hG4bK-"+callID+"-1"), []byte("branch=z9hG4bK-"+callID+"-ack"), 1)
	}
	return ack
}

// barrier has the client send a MESSAGE through the proxy and waits for
// its answer: the proxy reads what the client and the upstream sent
// before in that order, so anything they caused is done by then.
func (e *inviteEnv) barrier(t *testing.T, callID string) {
	t.Helper()
	e.client.send(t, e.addr, request("MESSAGE", inviteRURI, e.client.addr(), callID, 1))
	e.answer(t, e.up.next(t, "MESSAGE ", "Call-ID: "+callID), "200 OK")
	e.client.next(t, "SIP/2.0 200 ", "Call-ID: "+callID)
}

// countWith returns how many datagrams u received start with prefix and
// contain every one of with.
func countWith(u *udpPeer, prefix string, with ...string) int {
	n := 0
	for _, d := range u.received() {
		if strings.HasPrefix(string(d), prefix) && containsAll(d, with) {
			n++
		}
	}
	return n
}

// drained checks that everything the lane kept for the INVITEs (server
// transactions, requests waiting under a branch, ACKs) goes once their
// timers are over.
func (e *inviteEnv) drained(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, "the lane empty after its timers", func() bool {
		proxy.SweepLane(e.p, time.Now().Add(time.Minute))
		branches, requests := proxy.LaneState(e.p)
		return proxy.LaneInvites(e.p) == 0 && proxy.LaneAcks(e.p) == 0 && len(branches) == 0 && requests == 0
	})
}

// A UDP client's INVITE on the lane's server transaction: a 100 Trying
// of its own when the upstream is slow (Timer 1xx), the 180 relayed and
// sent again for a retransmitted INVITE, the 200 relayed with its
// retransmission, a retransmitted INVITE after it absorbed, and the
// client's ACK for the 2xx forwarded end to end.
func TestLaneInviteCall(t *testing.T) {
	e := startInviteEnv(t)
	inv, d := e.invite(t, "li-call")
	e.client.next(t, "SIP/2.0 100 ", "Call-ID: li-call")
	e.answer(t, d, "180 Ringing")
	e.client.next(t, "SIP/2.0 180 ")
	e.client.send(t, e.addr, inv)
	e.client.next(t, "SIP/2.0 180 ")

	contact := "Contact: <sip:1002@" + e.up.addr() + ">"
	e.answer(t, d, "200 OK", contact)
	ok := e.client.next(t, "SIP/2.0 200 ", "CSeq: 1 INVITE")
	e.client.send(t, e.addr, inv) // absorbed (RFC 6026 §7.1)
	e.answer(t, d, "200 OK", contact)
	e.client.next(t, "SIP/2.0 200 ", "CSeq: 1 INVITE")
	e.client.send(t, e.addr, e.clientAck("li-call", ok.data))
	e.up.next(t, "ACK ", "branch=z9hG4bK-li-call-ack")
	e.barrier(t, "li-call-b")
	if n := e.up.count("INVITE "); n != 1 {
		t.Errorf("upstream got %d INVITEs, want the first alone", n)
	}
	if n := proxy.LaneInvites(e.p); n != 1 {
		t.Errorf("lane holds %d INVITE transactions during Timer L, want 1", n)
	}
	e.drained(t)
}

// A non-2xx final response is relayed once by the forwarding and
// retransmitted by the transaction on Timer G, and for a retransmitted
// INVITE, until the client's ACK, which stops Timer G and goes no
// further: authproxy's own ACK answered the upstream's.
func TestLaneInviteRejected(t *testing.T) {
	e := startInviteEnv(t)
	inv, d := e.invite(t, "li-busy")
	e.answer(t, d, "486 Busy Here")
	busy := e.client.next(t, "SIP/2.0 486 ")
	e.up.next(t, "ACK ", "Call-ID: li-busy")
	e.client.next(t, "SIP/2.0 486 ") // Timer G
	e.client.send(t, e.addr, inv)
	e.client.next(t, "SIP/2.0 486 ")

	e.client.send(t, e.addr, e.clientAck("li-busy", busy.data))
	e.barrier(t, "li-busy-b")
	if n := countWith(e.up, "ACK ", "Call-ID: li-busy\r\n"); n != 1 {
		t.Errorf("upstream got %d ACKs, want authproxy's alone (the client's for the 486 absorbed)", n)
	}
	// Confirmed: Timer G no longer fires.
	before := e.client.count("SIP/2.0 486 ")
	proxy.SweepLane(e.p, time.Now().Add(3*time.Second))
	e.barrier(t, "li-busy-c")
	if after := e.client.count("SIP/2.0 486 "); after != before {
		t.Errorf("486 sent %d more times after the ACK", after-before)
	}
	e.drained(t)
}

// The client's CANCEL, before and after the callee rings: 200 to the
// CANCEL (and to its retransmission), 487 to the INVITE, the CANCEL sent
// upstream once a provisional response came, the upstream's 487 ACKed by
// authproxy and the client's ACK for its 487 absorbed.
func TestLaneInviteCancel(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ringing bool // the upstream rang before the CANCEL
	}{
		{"before a provisional", false},
		{"after a provisional", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startInviteEnv(t)
			id := "li-cancel-" + map[bool]string{false: "early", true: "ringing"}[tc.ringing]
			_, d := e.invite(t, id)
			if tc.ringing {
				e.answer(t, d, "180 Ringing")
				e.client.next(t, "SIP/2.0 180 ")
			}
			cancel := request("CANCEL", inviteRURI, e.client.addr(), id, 1)
			e.client.send(t, e.addr, cancel)
			e.client.next(t, "SIP/2.0 200 ", "CSeq: 1 CANCEL")
			terminated := e.client.next(t, "SIP/2.0 487 ", "CSeq: 1 INVITE")
			if !tc.ringing {
				e.answer(t, d, "180 Ringing") // §9.1: the CANCEL waits for it
			}
			c := e.up.next(t, "CANCEL ", "Call-ID: "+id)
			if topBranch(t, c.data) != topBranch(t, d.data) {
				t.Errorf("CANCEL upstream with branch %s, want the INVITE's %s", topBranch(t, c.data), topBranch(t, d.data))
			}
			e.answer(t, c, "200 OK")
			e.answer(t, d, "487 Request Terminated")
			e.up.next(t, "ACK ", "Call-ID: "+id)

			e.client.send(t, e.addr, cancel)
			e.client.next(t, "SIP/2.0 200 ", "CSeq: 1 CANCEL")
			e.client.send(t, e.addr, e.clientAck(id, terminated.data))
			e.barrier(t, id+"-b")
			if n := countWith(e.up, "ACK ", "Call-ID: "+id+"\r\n"); n != 1 {
				t.Errorf("upstream got %d ACKs, want authproxy's alone (the client's for the 487 absorbed)", n)
			}
			if n := e.up.count("CANCEL "); n != 1 {
				t.Errorf("upstream got %d CANCELs, want 1", n)
			}
			e.drained(t)
		})
	}
}

// A 2xx crossing the client's CANCEL: the client has its 487, so
// authproxy ACKs the 2xx and hangs up upstream with a BYE.
func TestLaneInviteCancelCrosses2xx(t *testing.T) {
	e := startInviteEnv(t)
	id := "li-cross"
	_, d := e.invite(t, id)
	e.answer(t, d, "180 Ringing")
	e.client.next(t, "SIP/2.0 180 ")
	e.client.send(t, e.addr, request("CANCEL", inviteRURI, e.client.addr(), id, 1))
	e.client.next(t, "SIP/2.0 487 ", "CSeq: 1 INVITE")
	c := e.up.next(t, "CANCEL ", "Call-ID: "+id)
	e.answer(t, c, "200 OK")
	e.answer(t, d, "200 OK", "Contact: <sip:1002@"+e.up.addr()+">")
	e.up.next(t, "ACK ", "Call-ID: "+id)
	bye := e.up.next(t, "BYE ", "Call-ID: "+id)
	e.answer(t, bye, "200 OK")
	if e.client.saw("SIP/2.0 200 ", "CSeq: 1 INVITE") {
		t.Error("the client got the 2xx after its 487")
	}
	e.drained(t)
}

// A CANCEL from anywhere but its INVITE's source is refused as before
// (403, the call goes on); a CANCEL matching no INVITE gets 481 from
// sipgo's path.
func TestLaneInviteCancelRefused(t *testing.T) {
	e := startInviteEnv(t)
	id := "li-foreign"
	_, d := e.invite(t, id)
	e.answer(t, d, "180 Ringing")
	e.client.next(t, "SIP/2.0 180 ")
	other := newUDPPeer(t, "127.0.0.1")
	other.send(t, e.addr, request("CANCEL", inviteRURI, e.client.addr(), id, 1))
	other.next(t, "SIP/2.0 403 ", "CSeq: 1 CANCEL")
	e.answer(t, d, "200 OK", "Contact: <sip:1002@"+e.up.addr()+">")
	e.client.next(t, "SIP/2.0 200 ", "CSeq: 1 INVITE")

	e.client.send(t, e.addr, request("CANCEL", inviteRURI, e.client.addr(), "li-nothing", 1))
	e.client.next(t, "SIP/2.0 481 ", "CSeq: 1 CANCEL")
	if e.up.count("CANCEL ") != 0 {
		t.Error("a CANCEL went upstream")
	}
	e.drained(t)
}
