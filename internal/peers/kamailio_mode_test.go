package peers

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestKamailioLoadModes runs the two lean scripts of the load tests: the
// trunk challenges a MESSAGE without credentials with a 407, and the
// uac_auth proxy in front of it answers that challenge, so the MESSAGE
// sent through the proxy gets the trunk's 200.
func TestKamailioLoadModes(t *testing.T) {
	Require(t, "kamailio")
	users := map[string]string{"bench": "bench-Pw-0f3a"}
	trunk := StartKamailio(t, KamailioConfig{Mode: KamailioLoadTrunk, Host: "127.0.0.2", Users: users, RelayTo: "127.0.0.4:9"})
	uac := StartKamailio(t, KamailioConfig{Mode: KamailioUACProxy, Host: "127.0.0.3", Users: users, RelayTo: trunk.Addr()})
	if evs := trunk.Events(); evs != nil {
		t.Errorf("the trunk logs no events, got %+v", evs)
	}
	for _, c := range []struct {
		via  *Kamailio
		want int
	}{{trunk, 407}, {uac, 200}} {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		resp, err := UDPExchange(ctx, c.via.Addr(), true, func(local string) string {
			return messageRequest(c.via.Addr(), local)
		})
		cancel()
		if err != nil {
			t.Fatalf("MESSAGE via %s: %v", c.via.Config().Mode, err)
		}
		if got := StatusCode(resp); got != c.want {
			t.Errorf("MESSAGE via %s: %d, want %d:\n%s", c.via.Config().Mode, got, c.want, resp)
		}
	}
	if strings.Contains(uac.Log(), "bench-Pw-0f3a") {
		t.Errorf("the uac proxy logged the password")
	}
}

// messageRequest is a MESSAGE to bench@pbx.bench (sent to target; the
// scripts route by destination, not by Request-URI).
func messageRequest(target, local string) string {
	return "MESSAGE sip:bench@pbx.bench SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + local + ";branch=z9hG4bK-peers-" + NewToken(6) + ";rport\r\n" +
		"Max-Forwards: 70\r\n" +
		"From: <sip:bench@pbx.bench>;tag=" + NewToken(4) + "\r\n" +
		"To: <sip:bench@pbx.bench>\r\n" +
		"Call-ID: peers-message-" + NewToken(8) + "\r\n" +
		"CSeq: 1 MESSAGE\r\n" +
		"Content-Type: text/plain\r\n" +
		"Content-Length: 2\r\n\r\nhi"
}
