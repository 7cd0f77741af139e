package scenarios

import (
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/state"
)

// sharedMemory is an in-memory store that says it is shared: two proxies
// on it act as a cluster on Redis would, without a server.
type sharedMemory struct{ *state.Memory }

func (sharedMemory) Shared() bool { return true }

// TestBindingThroughAnotherInstance: two proxies share a store; a phone
// registers through the first, and the PBX sends a MESSAGE for its
// contact through the second. Over UDP the second instance reaches the
// phone at the address it registered from; over TCP the connection is the
// first instance's, and the second answers 480 instead of dialling the
// phone's ephemeral port.
func TestBindingThroughAnotherInstance(t *testing.T) {
	for _, tc := range []struct {
		transport string
		want      int
	}{
		{"udp", 200},
		{"tcp", 480},
	} {
		t.Run(tc.transport, func(t *testing.T) {
			st := sharedMemory{state.NewMemory()}
			member := func(name string) func(*proxy.Config, *harness) {
				return func(c *proxy.Config, _ *harness) { c.State, c.StateBackend, c.Instance = st, "redis", name }
			}
			h1 := startHarness(t, harnessOptions{Mutate: member("a")})
			h2 := startHarness(t, harnessOptions{Mutate: member("b")})
			ph := startRegPhone(t, "1001", tc.transport, h1.Addr[tc.transport])
			if res := ph.register(uuid.NewString(), "pbx-a.example.com", 1, "300"); res.StatusCode != 200 {
				t.Fatalf("REGISTER through the first instance: %d", res.StatusCode)
			}
			b := h1.A.Bindings("1001")[0]
			var route sip.Uri
			if err := sip.ParseUri("sip:"+h2.Addr["udp"]+";lr", &route); err != nil {
				t.Fatal(err)
			}
			b.Path = []sip.Uri{route}
			res := h2.A.SendTo(t, b, sip.MESSAGE)
			if res == nil || res.StatusCode != tc.want {
				t.Fatalf("MESSAGE through the second instance: %v, want %d", res, tc.want)
			}
			if tc.want == 200 {
				ph.waitReceived(sip.MESSAGE, 1)
			} else if n := countReceived(ph, sip.MESSAGE); n != 0 {
				t.Fatalf("phone got %d MESSAGEs, want none", n)
			}
		})
	}
}
