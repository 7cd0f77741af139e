package scenarios

import (
	"net"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/internal/testutil"
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

// TestTrunkRegistrationRestartFromStore: a trunk registration on a store
// the proxy owns (the file backend's case). A proxy that stops without
// unregistering (the registrar does not answer the Expires: 0, as after a
// crash) leaves its state behind: the next proxy on the same store and
// address resumes the schedule, registered at once and sending nothing
// before the refresh is due. One that unregistered leaves nothing to
// resume: the next registers at once, on the same Call-ID with a higher
// CSeq.
func TestTrunkRegistrationRestartFromStore(t *testing.T) {
	r := startTestRegistrar(t, "127.0.0.4")
	st := state.NewMemory()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := pc.LocalAddr().String()
	_ = pc.Close()
	reg := proxy.Registration{Upstream: "trunk", AOR: "sip:trunk1@127.0.0.4", Expires: time.Hour}
	start := func() *trunkProxy {
		return startTrunkProxy(t, r.addr, reg, nil, func(c *proxy.Config) {
			c.State = st
			c.Listeners = []proxy.Listener{{Transport: "udp", Address: listen}}
		})
	}
	tp := start()
	first := r.waitFor(t, 10*time.Second, "the registration", func(rs []*sip.Request) bool { return len(rs) == 1 })[0]
	testutil.Eventually(t, "registered", func() bool {
		rs := tp.p.Registrations()
		return len(rs) == 1 && rs[0].State == proxy.RegStateRegistered
	})
	expires := regState(t, tp.p).Expires

	r.setMode("silent")
	tp.stop()
	sent := len(r.times()) // the registration and the unanswered Expires: 0
	r.setMode("ok")
	tp = start()
	// The registration's loop starts once the proxy is ready and then
	// restores the stored state, so that state may not be listed yet.
	testutil.Eventually(t, "the restarted proxy registered until the stored expiry, a refresh ahead", func() bool {
		rs := tp.p.Registrations()
		return len(rs) == 1 && rs[0].State == proxy.RegStateRegistered && rs[0].Expires.Equal(expires) && rs[0].NextAttempt.After(time.Now())
	})
	// The old proxy's unanswered Expires: 0 may still be arriving (a
	// retransmission in flight when it stopped); a REGISTER that asks
	// for a lifetime is the restarted proxy's.
	for _, rq := range r.waitFor(t, time.Second, "", func([]*sip.Request) bool { return true })[sent:] {
		if expiresOf(rq) != "0" {
			t.Fatalf("the restarted proxy sent a REGISTER (CSeq %v, Expires %s); want none before the refresh", rq.CSeq(), expiresOf(rq))
		}
	}

	tp.stop() // unregisters
	regs := r.waitFor(t, 10*time.Second, "the Expires: 0", func(rs []*sip.Request) bool { return expiresOf(rs[len(rs)-1]) == "0" })
	tp = start()
	regs = r.waitFor(t, 10*time.Second, "a new registration", func(rs []*sip.Request) bool {
		return len(rs) > len(regs) && expiresOf(rs[len(rs)-1]) == "3600"
	})
	last := regs[len(regs)-1]
	if last.CallID().Value() != first.CallID().Value() || last.CSeq().SeqNo <= regs[len(regs)-2].CSeq().SeqNo {
		t.Fatalf("after the restart: Call-ID %s CSeq %d; want %s with a CSeq above %d",
			last.CallID().Value(), last.CSeq().SeqNo, first.CallID().Value(), regs[len(regs)-2].CSeq().SeqNo)
	}
	tp.stop()
}
