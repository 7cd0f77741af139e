package proxy

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// The patched sipgo (internal/sipgo, PATCHES.md) must keep header lookups
// case-insensitive (RFC 3261 §7.3.1) while no longer allocating per header.
func TestPatchedSipgoHeaderLookup(t *testing.T) {
	req := sip.NewRequest(sip.MESSAGE, sip.Uri{User: "bob", Host: "pbx.example"})
	req.AppendHeader(sip.NewHeader("User-Agent", "phone"))
	req.AppendHeader(sip.NewHeader("X-Custom-Header", "a"))
	req.AppendHeader(sip.NewHeader("x-custom-header", "b"))
	req.AppendHeader(sip.NewHeader("Proxy-Require", "foo"))
	for _, tc := range []struct {
		name string
		want int
	}{
		{"user-agent", 1}, {"USER-AGENT", 1}, {"User-Agent", 1},
		{"X-CUSTOM-HEADER", 2}, {"proxy-require", 1}, {"Require", 0},
	} {
		if got := len(req.GetHeaders(tc.name)); got != tc.want {
			t.Errorf("GetHeaders(%q) = %d headers, want %d", tc.name, got, tc.want)
		}
		if h := req.GetHeader(tc.name); (h != nil) != (tc.want > 0) {
			t.Errorf("GetHeader(%q) = %v", tc.name, h)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = req.GetHeader("Proxy-Require") }); allocs != 0 {
		t.Errorf("GetHeader allocates %v times, want 0", allocs)
	}
}

// A completed non-INVITE server transaction over UDP keeps only its
// response's bytes (PATCHES.md): a retransmitted request still gets the
// same response again, and the handler sees the request once.
func TestPatchedSipgoCompletedTransactionAnswersRetransmissions(t *testing.T) {
	ua, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ua.Close() })
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	srv.OnMessage(func(req *sip.Request, tx sip.ServerTransaction) {
		calls.Add(1)
		res := sip.NewResponseFromRequest(req, 200, "OK", nil)
		res.AppendHeader(sip.NewHeader("X-Answer", "first"))
		if err := tx.Respond(res); err != nil {
			t.Error(err)
		}
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeUDP(pc) }()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := fmt.Sprintf("MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-retrans;rport\r\n"+
		"From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: retrans@test\r\nCSeq: 1 MESSAGE\r\n"+
		"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n", conn.LocalAddr())
	read := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no response: %v", err)
		}
		return string(buf[:n])
	}
	var first string
	for i := range 3 {
		if _, err := conn.WriteTo([]byte(msg), pc.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		got := read()
		if !strings.HasPrefix(got, "SIP/2.0 200") || !strings.Contains(got, "X-Answer: first") {
			t.Fatalf("response %d:\n%s", i, got)
		}
		if i == 0 {
			first = got
			time.Sleep(50 * time.Millisecond) // the transaction completes
		} else if got != first {
			t.Errorf("retransmitted response differs:\n%s\nfirst:\n%s", got, first)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}
}

// A non-INVITE server transaction over a UDP listener ends the moment it
// answers (PATCHES.md, answeredStore): its Done is closed when Respond
// returns, retransmissions within Timer J get the same bytes without
// reaching the handler, and after Timer J (plus at most a quarter of it)
// the store has let the answer go, so the same request is new again.
func TestPatchedSipgoAnsweredTransactionEndsAtOnce(t *testing.T) {
	saved := sip.Timer_J
	sip.Timer_J = 400 * time.Millisecond // read when the UA is made
	t.Cleanup(func() { sip.Timer_J = saved })
	ua, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ua.Close() })
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	var calls, endedAtOnce atomic.Int32
	srv.OnMessage(func(req *sip.Request, tx sip.ServerTransaction) {
		n := calls.Add(1)
		res := sip.NewResponseFromRequest(req, 202, "Accepted", nil)
		res.AppendHeader(sip.NewHeader("X-Call", fmt.Sprint(n)))
		if err := tx.Respond(res); err != nil {
			t.Errorf("Respond: %v", err)
		}
		select {
		case <-tx.Done():
			endedAtOnce.Add(1)
		default:
		}
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeUDP(pc) }()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := fmt.Sprintf("MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-answered;rport\r\n"+
		"From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: answered@test\r\nCSeq: 1 MESSAGE\r\n"+
		"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n", conn.LocalAddr())
	send := func() string {
		t.Helper()
		if _, err := conn.WriteTo([]byte(msg), pc.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no response: %v", err)
		}
		return string(buf[:n])
	}
	first := send()
	if !strings.Contains(first, "X-Call: 1") {
		t.Fatalf("first response:\n%s", first)
	}
	for range 2 {
		time.Sleep(50 * time.Millisecond)
		if got := send(); got != first {
			t.Errorf("retransmission answered with\n%s\nwant the first response:\n%s", got, first)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler called %d times within Timer J, want 1", n)
	}
	time.Sleep(600 * time.Millisecond) // > Timer J + one span (500 ms)
	if got := send(); !strings.Contains(got, "X-Call: 2") {
		t.Errorf("after Timer J the request was answered from the store:\n%s", got)
	}
	if n := endedAtOnce.Load(); n != 2 {
		t.Errorf("%d of 2 transactions ended when Respond returned", n)
	}
}
