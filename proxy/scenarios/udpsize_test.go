package scenarios

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/internal/siptest"
)

// TestLargeRequestsOverUDP: requests far above the 1,300 bytes sipgo sends
// over UDP by default reach a UDP upstream whole, with authproxy's Via
// and credentials added: from a UDP client on the fast lane, and from a
// TCP client through transactions up to the 8,800-byte datagram limit. A
// request that would not fit is not sent, over UDP or switched to TCP:
// the client gets 503.
func TestLargeRequestsOverUDP(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	for _, tc := range []struct {
		client string
		body   int
		sent   bool
	}{
		{"udp", 7000, true},
		{"tcp", 8000, true},
		{"tcp", 9000, false},
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.client, tc.body), func(t *testing.T) {
			body := bytes.Repeat([]byte("x"), tc.body)
			mark := h.upstreamMark()
			callID := uuid.NewString()
			res := h.final(t, tc.client, siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com",
				FromUser: "1001", CallID: callID, Body: body, ContentType: "text/plain"})
			if !tc.sent {
				if res.StatusCode != 503 {
					t.Fatalf("a %d-byte body over UDP: %d, want 503", tc.body, res.StatusCode)
				}
				h.assertNoUpstreamTrafficSince(t, mark)
				return
			}
			if res.StatusCode != 200 {
				t.Fatalf("status %d, want 200", res.StatusCode)
			}
			var got int
			for _, r := range h.A.Requests()[mark.a:] {
				if r.CallID != callID || !r.Authenticated {
					continue
				}
				got++
				if r.Transport != "UDP" || !bytes.Equal(r.Body, body) || len(r.Raw) <= tc.body {
					t.Errorf("pbx-a got %s, %d-byte body, %d bytes in all; want UDP, the %d-byte body whole", r.Transport, len(r.Body), len(r.Raw), tc.body)
				}
			}
			if got != 1 {
				t.Fatalf("pbx-a got %d authenticated copies, want 1", got)
			}
		})
	}
}
