package proxy_test

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// laneDialog is a call established through a proxy whose UDP upstream
// challenged its INVITE (so authproxy shifts the dialog's CSeq numbers by
// one): the proxy, its UDP address, the upstream, the caller and the
// authenticated INVITE as the upstream received it.
type laneDialog struct {
	p            *proxy.Proxy
	addr         string
	up, client   *udpPeer
	callID       string
	authedInvite []byte
}

func startLaneDialog(t *testing.T, callID string, upstreamTimeout time.Duration) *laneDialog {
	t.Helper()
	d := &laneDialog{up: newUDPPeer(t, "127.0.0.1"), client: newUDPPeer(t, "127.0.0.1"), callID: callID}
	d.p, d.addr, _ = startLaneProxy(t, d.up.addr(), upstreamTimeout)
	d.client.send(t, d.addr, request("INVITE", "sip:1002@pbx.example.com", d.client.addr(), callID, 1))
	first := d.up.next(t, "INVITE ")
	d.up.send(t, first.src.String(), response(first.data, "407 Proxy Authentication Required",
		`Proxy-Authenticate: Digest realm="bench", nonce="n-invite", qop="auth", algorithm=MD5`))
	authed := d.up.next(t, "INVITE ", "Proxy-Authorization:")
	if cs := header(authed.data, "CSeq"); cs != "2 INVITE" {
		t.Fatalf("authenticated INVITE CSeq %q, want 2 INVITE", cs)
	}
	d.authedInvite = authed.data
	d.up.send(t, authed.src.String(), response(authed.data, "200 OK", "Contact: <sip:1002@"+d.up.addr()+">"))
	d.client.next(t, "SIP/2.0 200 ", "CSeq: 1 INVITE")
	return d
}

// inDialogRequest is the caller's request of method in the dialog, CSeq
// seq, to the callee's Contact, with the Route authproxy's Record-Route
// gives and a header spelt oddly (X-Odd), which arrives verbatim only when
// the request is sent on as the client's bytes.
func (d *laneDialog) inDialogRequest(method string, seq int) []byte {
	return inDialog(request(method, "sip:1002@"+d.up.addr(), d.client.addr(), d.callID, seq, "Route: <sip:"+d.addr+";lr>", "X-Odd:   spaced"))
}

// onLane fails the test unless the fast lane waits for a response under
// the top Via branch of sent (the request as the upstream received it):
// no sipgo client transaction holds it.
func (d *laneDialog) onLane(t *testing.T, sent []byte) {
	t.Helper()
	if branches, _ := proxy.LaneState(d.p); !slices.Equal(branches, []string{topBranch(t, sent)}) {
		t.Fatalf("the lane waits under %v, want the forwarded request's branch %s:\n%s", branches, topBranch(t, sent), sent)
	}
}

// A caller's BYE, or INFO, over UDP in a dialog authproxy holds takes the
// fast lane (no sipgo transaction: the lane waits for its response under
// the forwarded request's branch), and everything the usual path does for
// it still happens: authproxy's Route entry removed (RFC 3261 §16.4)
// from the client's datagram sent on, the CSeq shifted by the INVITE's
// challenge (§12.2.1.1), a 407 answered on the lane with the caller's
// credentials and CSeq+1 (§22.2), the client's own CSeq back on the
// response, the dialog ended by the BYE's 200 (§15.1.1), a retransmission
// after the final response answered again without reaching the upstream
// (§17.2.2), and the caller's ACK sent after the BYE still reaching the
// upstream as the authenticated INVITE's: its CSeq and credentials
// (§22.1). Both ways a UDP listener reads.
func TestFastLaneInDialog(t *testing.T) {
	for _, tc := range []struct {
		name       string
		method     string
		challenged bool
		dialogs    int // left after the final response
	}{
		{name: "bye", method: "BYE"},
		{name: "bye challenged", method: "BYE", challenged: true},
		{name: "info", method: "INFO", dialogs: 1},
		{name: "info challenged", method: "INFO", challenged: true, dialogs: 1},
	} {
		eachHandOff(t, tc.name, func(t *testing.T, handOffAt int64) {
			d := startLaneDialog(t, fmt.Sprintf("lane-dlg-%s-%t-%d", tc.method, tc.challenged, handOffAt), 0)
			req := d.inDialogRequest(tc.method, 2)
			d.client.send(t, d.addr, req)
			sent := d.up.next(t, tc.method+" ")
			d.onLane(t, sent.data)
			if cs := header(sent.data, "CSeq"); cs != "3 "+tc.method {
				t.Errorf("%s went upstream with CSeq %q, want 3 %s (shifted by the INVITE's challenge)", tc.method, cs, tc.method)
			}
			if bytes.Contains(sent.data, []byte("\r\nRoute:")) {
				t.Errorf("%s went upstream with authproxy's Route:\n%s", tc.method, sent.data)
			}
			if !bytes.Contains(sent.data, []byte("\r\nX-Odd:   spaced\r\n")) {
				t.Errorf("%s went upstream as a parsed copy, not as the client's bytes edited:\n%s", tc.method, sent.data)
			}
			if tc.challenged {
				d.up.send(t, sent.src.String(), response(sent.data, "407 Proxy Authentication Required",
					`Proxy-Authenticate: Digest realm="bench", nonce="n-`+tc.method+`", qop="auth", algorithm=MD5`))
				sent = d.up.next(t, tc.method+" ", "Proxy-Authorization:")
				d.onLane(t, sent.data)
				if cs := header(sent.data, "CSeq"); cs != "4 "+tc.method {
					t.Errorf("re-sent %s CSeq %q, want 4 %s", tc.method, cs, tc.method)
				}
				if got := header(sent.data, "Proxy-Authorization"); !bytes.Contains([]byte(got), []byte(`username="bench"`)) || !bytes.Contains([]byte(got), []byte(`nonce="n-`+tc.method+`"`)) {
					t.Errorf("re-sent %s answers with %q, want the bench credential for nonce n-%s", tc.method, got, tc.method)
				}
			}
			d.up.send(t, sent.src.String(), response(sent.data, "200 OK"))
			d.client.next(t, "SIP/2.0 200 ", "CSeq: 2 "+tc.method)
			testutil.Eventually(t, "the lane to hold nothing", func() bool {
				branches, requests := proxy.LaneState(d.p)
				return len(branches) == 0 && requests == 0
			})
			if n := d.p.DialogCount(); n != tc.dialogs {
				t.Errorf("%d dialogs after the %s's 200, want %d", n, tc.method, tc.dialogs)
			}

			// A retransmission of the request: the 200 again, from
			// the answered store.
			d.client.send(t, d.addr, req)
			d.client.next(t, "SIP/2.0 200 ", "CSeq: 2 "+tc.method)

			// The caller's ACK for the INVITE's 200, late.
			d.client.send(t, d.addr, ack(d.client.addr(), d.callID, d.up.addr()))
			got := d.up.next(t, "ACK ", "Proxy-Authorization:")
			if cs := header(got.data, "CSeq"); cs != "2 ACK" {
				t.Errorf("ACK CSeq %q upstream, want 2 ACK (the authenticated INVITE's):\n%s", cs, got.data)
			}
			if want := header(d.authedInvite, "Proxy-Authorization"); header(got.data, "Proxy-Authorization") != want {
				t.Errorf("ACK credentials %q upstream, want the INVITE's %q", header(got.data, "Proxy-Authorization"), want)
			}
			want := 1
			if tc.challenged {
				want = 2
			}
			if n := d.up.count(tc.method + " "); n != want {
				t.Errorf("the upstream received %d %s requests, want %d: the retransmission went on", n, tc.method, want)
			}
		})
	}
}

// A BYE on the fast lane the upstream never answers ends at Timer F
// (UpstreamTimeout): the caller gets 408, and the dialog ends as after a
// 2xx (RFC 3261 §15.1.1), the lane keeping nothing.
func TestFastLaneInDialogByeTimeout(t *testing.T) {
	d := startLaneDialog(t, "lane-dlg-bye-timeout", 500*time.Millisecond)
	d.client.send(t, d.addr, d.inDialogRequest("BYE", 2))
	sent := d.up.next(t, "BYE ")
	d.onLane(t, sent.data)
	d.client.next(t, "SIP/2.0 408 ", "CSeq: 2 BYE")
	if n := d.p.DialogCount(); n != 0 {
		t.Errorf("%d dialogs after the BYE timed out, want 0", n)
	}
	testutil.Eventually(t, "the lane to hold nothing", func() bool {
		branches, requests := proxy.LaneState(d.p)
		return len(branches) == 0 && requests == 0
	})
}

// What the fast lane leaves to sipgo's transactions in a dialog: a
// request the upstream sends into it toward the caller (route's
// toClient), a caller's UPDATE (a target refresh, RFC 3311), and a BYE
// whose dialog authproxy does not know. Each is forwarded the usual way
// and answered.
func TestFastLaneInDialogNotTaken(t *testing.T) {
	for _, tc := range []struct {
		name    string
		send    func(d *laneDialog) (from *udpPeer, msg []byte)
		to      func(d *laneDialog) *udpPeer // where it is forwarded
		method  string
		dialogs int
	}{
		{
			name: "upstream's bye",
			send: func(d *laneDialog) (*udpPeer, []byte) {
				return d.up, fmt.Appendf(nil, "BYE sip:1001@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-up-bye-%s;rport\r\n"+
					"Max-Forwards: 70\r\nFrom: <sip:1002@pbx-a.example.com>;tag=up\r\nTo: <sip:1001@pbx-a.example.com>;tag=from-%s\r\n"+
					"Call-ID: %s\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n", d.client.addr(), d.up.addr(), d.callID, d.callID, d.callID)
			},
			to:     func(d *laneDialog) *udpPeer { return d.client },
			method: "BYE",
		},
		{
			name:    "caller's update",
			send:    func(d *laneDialog) (*udpPeer, []byte) { return d.client, d.inDialogRequest("UPDATE", 2) },
			to:      func(d *laneDialog) *udpPeer { return d.up },
			method:  "UPDATE",
			dialogs: 1,
		},
		{
			name: "bye of an unknown dialog",
			send: func(d *laneDialog) (*udpPeer, []byte) {
				return d.client, bytes.Replace(d.inDialogRequest("BYE", 2), []byte(";tag=up"), []byte(";tag=other"), 1)
			},
			to:      func(d *laneDialog) *udpPeer { return d.up },
			method:  "BYE",
			dialogs: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startLaneDialog(t, "lane-dlg-not-"+tc.method+fmt.Sprint(tc.dialogs), 0)
			from, msg := tc.send(d)
			to := tc.to(d)
			from.send(t, d.addr, msg)
			got := to.next(t, tc.method+" ")
			if branches, _ := proxy.LaneState(d.p); len(branches) != 0 {
				t.Fatalf("the lane waits under %v for the %s, want nothing on the lane", branches, tc.method)
			}
			to.send(t, got.src.String(), response(got.data, "200 OK"))
			from.next(t, "SIP/2.0 200 ", " "+tc.method)
			testutil.Eventually(t, fmt.Sprintf("%d dialogs", tc.dialogs), func() bool { return d.p.DialogCount() == tc.dialogs })
		})
	}
}
