package e2e

import (
	"bytes"
	"fmt"
	"regexp"
	"testing"

	"github.com/google/uuid"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
)

// TestBinaryHEPCapture: the built binary, configured by its [capture]
// table alone, sends both legs of a challenged MESSAGE to sngrep: the
// client's request and its 200, the request to pbx-a, the challenge, the
// answer with its digest response redacted, the 200; and counts what it
// sent in /metrics.
func TestBinaryHEPCapture(t *testing.T) {
	sng := peers.StartSngrep(t, "127.0.0.1")
	pbx := fakepbx.Start(t, fakepbx.Config{Name: "pbx-a", Host: "127.0.0.2", Accounts: map[string]string{"alice": alicePassword}})
	b := startOpsBinary(t, opsBinaryTOML(pbx.Addr(), alicePassword, fmt.Sprintf(`
[[client]]
name = "loopback"
networks = ["127.0.0.0/8"]
upstreams = ["*"]

[capture]
hep = "udp:%s"
agent_id = 9
`, sng.Addr)))
	msg := opsMessage()
	msg.CallID = "hep-binary-" + uuid.NewString()
	if code := b.send(t, msg); code != 200 {
		t.Fatalf("MESSAGE: %d", code)
	}
	callID := []byte("Call-ID: " + msg.CallID + "\r\n")
	pbxAddr := pbx.Addr()
	upstream := func(p peers.PCAPPacket) bool { return p.Src.String() == pbxAddr || p.Dst.String() == pbxAddr }
	var pkts []peers.PCAPPacket
	testutil.Eventually(t, "both legs of the MESSAGE in sngrep's pcap", func() bool {
		pkts = pkts[:0]
		for _, p := range sng.Packets(t) {
			if bytes.Contains(p.Payload, callID) {
				pkts = append(pkts, p)
			}
		}
		client, up := 0, 0
		for _, p := range pkts {
			if upstream(p) {
				up++
			} else {
				client++
			}
		}
		return client == 2 && up == 4 // MESSAGE, 200; MESSAGE, 401, MESSAGE, 200
	})
	response := regexp.MustCompile(`response="([^"]*)"`)
	answered := 0
	for _, p := range pkts {
		if m := response.FindSubmatch(p.Payload); m != nil {
			answered++
			if string(m[1]) != "[redacted]" {
				t.Errorf("digest response %q captured unredacted", m[1])
			}
		}
	}
	if answered != 1 {
		t.Errorf("%d captured messages carry a digest response, want the answer to the challenge", answered)
	}
	code, body := testutil.HTTPGet(t, b.admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	ms := testutil.Metrics(testutil.ParseMetrics(t, body))
	if sent, _ := ms.Sum("authproxy_capture_sent_total", nil); sent < 6 {
		t.Errorf("authproxy_capture_sent_total = %v, want at least the 6 messages captured", sent)
	}
	testutil.ExpectMetric(t, ms, "authproxy_capture_dropped_total", nil, 0)
}
