package proxy_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// streamDialog is a call a TCP or TLS client set up through a proxy
// whose UDP upstream challenged its INVITE (so authproxy shifts the
// dialog's CSeq numbers by one), the INVITE taking the usual path: the
// proxy, its UDP address, the upstream, the caller's connection, the
// caller's route set (the 200's Record-Route reversed, RFC 3261
// §12.1.2), the authenticated INVITE as the upstream received it and the
// ACK the caller sent for its 200.
type streamDialog struct {
	p            *proxy.Proxy
	udpAddr      string
	up           *udpPeer
	c            *streamClient
	callID       string
	routes       []string
	authedInvite []byte
	ack          []byte
}

// startStreamDialog sets up the call over the stream listener lst
// (client: the client's TLS configuration, nil for TCP), ACKs its 200,
// and checks that the ACK reached the upstream as the authenticated
// INVITE's. timeout is UpstreamTimeout (0: the default).
func startStreamDialog(t *testing.T, callID string, lst proxy.Listener, client *tls.Config, timeout time.Duration) *streamDialog {
	t.Helper()
	d := &streamDialog{up: newUDPPeer(t, "127.0.0.1"), callID: callID}
	var addr string
	d.p, addr = startStreamProxy(t, d.up.addr(), proxy.PreemptiveOff, timeout, lst, nil)
	d.udpAddr = d.p.ListenAddrs()["udp"]
	d.c = dialStream(t, addr, client)
	d.c.send(t, d.request("INVITE", "sip:1002@pbx.example.com", 1))
	first := d.up.next(t, "INVITE ")
	if onLane(t, d.p, first) {
		t.Fatal("INVITE on the fast lane")
	}
	d.up.send(t, first.src.String(), response(first.data, "407 Proxy Authentication Required",
		`Proxy-Authenticate: Digest realm="bench", nonce="n-invite", qop="auth", algorithm=MD5`))
	authed := d.up.next(t, "INVITE ", "Proxy-Authorization:")
	if cs := header(authed.data, "CSeq"); cs != "2 INVITE" {
		t.Fatalf("authenticated INVITE CSeq %q, want 2 INVITE", cs)
	}
	d.authedInvite = authed.data
	// The callee's UAS copies the Record-Route into its 2xx (§12.1.1).
	extra := []string{"Contact: <sip:1002@" + d.up.addr() + ">"}
	for _, line := range strings.Split(string(authed.data), "\r\n") {
		if strings.HasPrefix(line, "Record-Route:") {
			extra = append(extra, line)
		}
	}
	d.up.send(t, authed.src.String(), response(authed.data, "200 OK", extra...))
	ok := d.read(t, "SIP/2.0 200 ")
	if cs := header(ok, "CSeq"); cs != "1 INVITE" {
		t.Fatalf("200 reached the caller with CSeq %q, want 1 INVITE", cs)
	}
	var rr []string
	for _, line := range strings.Split(string(ok), "\r\n") {
		if strings.HasPrefix(line, "Record-Route:") {
			rr = append(rr, routeEntry.FindAllString(line, -1)...)
		}
	}
	if len(rr) == 0 {
		t.Fatalf("200 reached the caller without Record-Route:\n%s", ok)
	}
	slices.Reverse(rr)
	d.routes = rr
	d.ack = d.withRoutes(d.stream(ack(d.c.conn.LocalAddr().String(), callID, d.up.addr())))
	d.c.send(t, d.ack)
	d.checkAck(t, d.up.next(t, "ACK "))
	return d
}

// routeEntry matches one name-addr of a Record-Route line.
var routeEntry = regexp.MustCompile(`<[^>]*>`)

// stream makes msg, a request as a UDP client sends it, the caller's
// over its connection: its Via and Contact name its transport.
func (d *streamDialog) stream(msg []byte) []byte {
	transport := "TCP"
	if _, ok := d.c.conn.(*tls.Conn); ok {
		transport = "TLS"
	}
	msg = bytes.Replace(msg, []byte("SIP/2.0/UDP"), []byte("SIP/2.0/"+transport), 1)
	contact := fmt.Sprintf("Contact: <sip:1001@%s>", d.c.conn.LocalAddr())
	return bytes.Replace(msg, []byte(contact), []byte(contact[:len(contact)-1]+";transport="+strings.ToLower(transport)+">"), 1)
}

// request is the caller's request of method to ruri, CSeq seq, over its
// connection.
func (d *streamDialog) request(method, ruri string, seq int, extra ...string) []byte {
	return d.stream(request(method, ruri, d.c.conn.LocalAddr().String(), d.callID, seq, extra...))
}

// withRoutes puts the caller's route set on msg.
func (d *streamDialog) withRoutes(msg []byte) []byte {
	lines := "Max-Forwards: 70\r\n"
	for _, r := range d.routes {
		lines += "Route: " + r + "\r\n"
	}
	return bytes.Replace(msg, []byte("Max-Forwards: 70\r\n"), []byte(lines), 1)
}

// inDialogRequest is the caller's request of method in the dialog, CSeq
// seq, to the callee's Contact along its route set, with a header spelt
// oddly (X-Odd), which arrives verbatim only when the request is sent on
// as the client's bytes.
func (d *streamDialog) inDialogRequest(method string, seq int) []byte {
	return d.withRoutes(inDialog(d.request(method, "sip:1002@"+d.up.addr(), seq, "X-Odd:   spaced")))
}

// read returns the next message on the caller's connection whose first
// line starts with prefix, skipping others (provisional responses).
func (d *streamDialog) read(t *testing.T, prefix string) []byte {
	t.Helper()
	for {
		if msg := d.c.read(t); strings.HasPrefix(firstLine(msg), prefix) {
			return msg
		}
	}
}

// checkAck fails the test unless got, an ACK the upstream received, is
// the authenticated INVITE's: its CSeq and credentials (RFC 3261 §22.1).
func (d *streamDialog) checkAck(t *testing.T, got datagram) {
	t.Helper()
	if cs := header(got.data, "CSeq"); cs != "2 ACK" {
		t.Errorf("ACK CSeq %q upstream, want 2 ACK (the authenticated INVITE's):\n%s", cs, got.data)
	}
	if want := header(d.authedInvite, "Proxy-Authorization"); header(got.data, "Proxy-Authorization") != want {
		t.Errorf("ACK credentials %q upstream, want the INVITE's %q", header(got.data, "Proxy-Authorization"), want)
	}
}

// laneEmpty waits until the fast lane of d's proxy holds nothing.
func (d *streamDialog) laneEmpty(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, "the lane to hold nothing", func() bool {
		branches, requests := proxy.LaneState(d.p)
		return len(branches) == 0 && requests == 0
	})
}

// A caller over TCP or TLS, in a call it set up through the usual path,
// hangs up on its connection: the BYE takes the fast lane (the lane
// waits under the branch the upstream got) toward the UDP upstream, and
// everything the usual path does for it still happens: authproxy's Route
// entries removed (RFC 3261 §16.4; two after the double Record-Route of
// RFC 5658), the CSeq shifted by the INVITE's challenge (§12.2.1.1), a
// 407 answered on the lane with the caller's credentials and CSeq+1
// (§22.2), the 200 with the caller's own CSeq back on its connection
// (§18.2.2), the dialog ended (§15.1.1), and the caller's ACK for the
// INVITE's 200, sent again after the BYE (§13.2.2.4), still reaching the
// upstream as the authenticated INVITE's.
func TestStreamLaneInDialogBye(t *testing.T) {
	serverTLS, clientTLS := testutil.SelfSignedTLS(t)
	for _, tc := range []struct {
		name       string
		lst        proxy.Listener
		client     *tls.Config
		challenged bool
	}{
		{name: "tcp", lst: proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"}},
		{name: "tcp challenged", lst: proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"}, challenged: true},
		{name: "tls challenged", lst: proxy.Listener{Transport: "tls", Address: "127.0.0.1:0", TLS: serverTLS}, client: clientTLS, challenged: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startStreamDialog(t, strings.ReplaceAll("stream-bye-"+tc.name, " ", "-"), tc.lst, tc.client, 0)
			d.c.send(t, d.inDialogRequest("BYE", 2))
			sent := d.up.next(t, "BYE ")
			if !onLane(t, d.p, sent) {
				t.Fatalf("BYE from a %s client not on the fast lane:\n%s", tc.lst.Transport, sent.data)
			}
			if cs := header(sent.data, "CSeq"); cs != "3 BYE" {
				t.Errorf("BYE went upstream with CSeq %q, want 3 BYE (shifted by the INVITE's challenge)", cs)
			}
			if bytes.Contains(sent.data, []byte("\r\nRoute:")) {
				t.Errorf("BYE went upstream with authproxy's Route (route set %v):\n%s", d.routes, sent.data)
			}
			if !bytes.Contains(sent.data, []byte("\r\nX-Odd:   spaced\r\n")) {
				t.Errorf("BYE went upstream as a parsed copy, not as the client's bytes edited:\n%s", sent.data)
			}
			if tc.challenged {
				d.up.send(t, sent.src.String(), response(sent.data, "407 Proxy Authentication Required",
					`Proxy-Authenticate: Digest realm="bench", nonce="n-bye", qop="auth", algorithm=MD5`))
				sent = d.up.next(t, "BYE ", "Proxy-Authorization:")
				if !onLane(t, d.p, sent) {
					t.Fatal("authenticated BYE not waited on by the lane")
				}
				if cs := header(sent.data, "CSeq"); cs != "4 BYE" {
					t.Errorf("re-sent BYE CSeq %q, want 4 BYE", cs)
				}
				if got := header(sent.data, "Proxy-Authorization"); !strings.Contains(got, `username="bench"`) || !strings.Contains(got, `nonce="n-bye"`) {
					t.Errorf("re-sent BYE answers with %q, want the bench credential for nonce n-bye", got)
				}
			}
			d.up.send(t, sent.src.String(), response(sent.data, "200 OK"))
			got := d.read(t, "SIP/2.0 ")
			if firstLine(got) != "SIP/2.0 200 OK" || header(got, "CSeq") != "2 BYE" {
				t.Fatalf("caller got, for its BYE:\n%s", got)
			}
			if vias := bytes.Count(got, []byte("\r\nVia:")); vias != 1 {
				t.Errorf("response has %d Via lines, want the caller's alone:\n%s", vias, got)
			}
			d.laneEmpty(t)
			if n := d.p.DialogCount(); n != 0 {
				t.Errorf("%d dialogs after the BYE's 200, want 0", n)
			}

			// The caller's ACK for the INVITE's 200, again.
			d.c.send(t, d.ack)
			d.checkAck(t, d.up.next(t, "ACK "))
		})
	}
}

// The upstream's BYE toward a TCP caller (route's toClient) stays off the
// fast lane: sipgo's transactions forward it on the caller's connection
// and its 200 back to the upstream, and the dialog ends.
func TestStreamLaneInDialogUpstreamBye(t *testing.T) {
	d := startStreamDialog(t, "stream-up-bye", proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"}, nil, 0)
	// The callee's route set is the Record-Route as it received it
	// (§12.1.1): the caller's reversed.
	var routes []string
	for _, r := range slices.Backward(d.routes) {
		routes = append(routes, "Route: "+r)
	}
	bye := fmt.Appendf(nil, "BYE sip:1001@%s;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-up-bye-%s;rport\r\n"+
		"Max-Forwards: 70\r\n%s\r\nFrom: <sip:1002@pbx-a.example.com>;tag=up\r\nTo: <sip:1001@pbx-a.example.com>;tag=from-%s\r\n"+
		"Call-ID: %s\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
		d.c.conn.LocalAddr(), d.up.addr(), d.callID, strings.Join(routes, "\r\n"), d.callID, d.callID)
	d.up.send(t, d.udpAddr, bye)
	got := d.read(t, "BYE ")
	if branches, _ := proxy.LaneState(d.p); len(branches) != 0 {
		t.Fatalf("the lane waits under %v for the upstream's BYE, want nothing on the lane", branches)
	}
	if cs := header(got, "CSeq"); cs != "1 BYE" {
		t.Errorf("upstream's BYE reached the caller with CSeq %q, want 1 BYE (the callee's numbering is not shifted)", cs)
	}
	d.c.send(t, response(got, "200 OK"))
	res := d.up.next(t, "SIP/2.0 200 ", "CSeq: 1 BYE")
	if vias := bytes.Count(res.data, []byte("\r\nVia:")); vias != 1 {
		t.Errorf("200 reached the upstream with %d Via lines, want its own alone:\n%s", vias, res.data)
	}
	testutil.Eventually(t, "the dialog to end", func() bool { return d.p.DialogCount() == 0 })
}

// A caller whose connection closes while its BYE waits on the lane has
// the BYE followed to its end all the same, as the usual path does (its
// sipgo server transaction outlives the connection; outlivesClient): the
// lane goes on retransmitting it toward the UDP upstream (Timer E), a
// challenge to it is answered, and its final response (or Timer F's 408)
// ends the dialog (§15.1.1) and the lane's entry, reaching no one.
func TestStreamLaneInDialogByeClientGone(t *testing.T) {
	for _, tc := range []struct {
		name     string
		timeout  time.Duration // UpstreamTimeout
		answered bool          // the upstream answers the BYE: 407, then 200
	}{
		{name: "answered", answered: true},
		{name: "unanswered", timeout: 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startStreamDialog(t, "stream-bye-gone-"+tc.name, proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"}, nil, tc.timeout)
			d.c.send(t, d.inDialogRequest("BYE", 2))
			sent := d.up.next(t, "BYE ")
			if !onLane(t, d.p, sent) {
				t.Fatal("BYE not on the fast lane")
			}
			d.c.conn.Close()
			testutil.Eventually(t, "the connection to close", func() bool { return d.p.TCPStats().Open == 0 })
			if !tc.answered {
				testutil.Eventually(t, "the dialog to end at Timer F", func() bool { return d.p.DialogCount() == 0 })
				d.laneEmpty(t)
				return
			}
			// Two retransmissions after the close was seen: at least one
			// was sent after it.
			n := d.up.count("BYE ")
			testutil.Eventually(t, "the lane to retransmit the BYE", func() bool { return d.up.count("BYE ") >= n+2 })
			if !onLane(t, d.p, sent) {
				t.Fatal("BYE no longer waited on by the lane after its client left")
			}
			d.up.send(t, sent.src.String(), response(sent.data, "407 Proxy Authentication Required",
				`Proxy-Authenticate: Digest realm="bench", nonce="n-bye-gone", qop="auth", algorithm=MD5`))
			sent = d.up.next(t, "BYE ", `nonce="n-bye-gone"`)
			if cs := header(sent.data, "CSeq"); cs != "4 BYE" {
				t.Errorf("re-sent BYE CSeq %q, want 4 BYE", cs)
			}
			if n := d.p.DialogCount(); n != 1 {
				t.Errorf("%d dialogs while the authenticated BYE waits, want 1", n)
			}
			d.up.send(t, sent.src.String(), response(sent.data, "200 OK"))
			testutil.Eventually(t, "the dialog to end", func() bool { return d.p.DialogCount() == 0 })
			d.laneEmpty(t)
		})
	}
}

// What outlivesClient matches: on the usual path, a TCP caller's request
// in the dialog (an UPDATE, which keeps sipgo's transactions) whose
// connection closes while it waits is still followed by relayLoop, its
// challenge answered toward the upstream, sipgo's server transaction not
// ending with the connection.
func TestStreamUsualPathOutlivesConnection(t *testing.T) {
	d := startStreamDialog(t, "stream-update-gone", proxy.Listener{Transport: "tcp", Address: "127.0.0.1:0"}, nil, 0)
	d.c.send(t, d.inDialogRequest("UPDATE", 2))
	sent := d.up.next(t, "UPDATE ")
	if onLane(t, d.p, sent) {
		t.Fatal("UPDATE on the fast lane")
	}
	d.c.conn.Close()
	testutil.Eventually(t, "the connection to close", func() bool { return d.p.TCPStats().Open == 0 })
	d.up.send(t, sent.src.String(), response(sent.data, "407 Proxy Authentication Required",
		`Proxy-Authenticate: Digest realm="bench", nonce="n-update-gone", qop="auth", algorithm=MD5`))
	sent = d.up.next(t, "UPDATE ", `nonce="n-update-gone"`)
	if cs := header(sent.data, "CSeq"); cs != "4 UPDATE" {
		t.Errorf("re-sent UPDATE CSeq %q, want 4 UPDATE", cs)
	}
	d.up.send(t, sent.src.String(), response(sent.data, "200 OK"))
}
