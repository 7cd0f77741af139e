package scenarios

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// alicePasswordRotated is pbx-a's password for alice after a rotation.
const alicePasswordRotated = "A-alice-Pw-rotated-44d0"

// TestReloadKeepsRequestInProgress: a reload applies to requests that
// start after it; one in progress keeps the configuration it started
// with. pbx-a's password for alice is rotated while a request is held at
// pbx-a before its challenge is sent: that request's answer uses the old
// password (pbx-a accepts only the old one until it has been answered),
// and a request started after the reload uses the new one (pbx-a then
// accepts only the new one). Under the default configuration and with
// preemptive off, on the fast lane (MESSAGE over UDP), on a transaction
// (MESSAGE over TCP, REGISTER) and for a call.
func TestReloadKeepsRequestInProgress(t *testing.T) {
	for _, pm := range preemptiveModes(t) {
		for _, tc := range []struct {
			method    sip.RequestMethod
			transport string
		}{{sip.MESSAGE, "udp"}, {sip.MESSAGE, "tcp"}, {sip.REGISTER, "udp"}, {sip.INVITE, "udp"}} {
			t.Run(fmt.Sprintf("%s/%s/%s", pm.name, tc.method, tc.transport), func(t *testing.T) {
				testReloadKeepsRequestInProgress(t, pm, tc.method, tc.transport)
			})
		}
	}
}

// heldRequest holds the first request the fake challenges at the fake,
// before its challenge is sent, until released.
type heldRequest struct {
	taken   atomic.Bool
	arrived chan fakepbx.Request
	release chan struct{}
	done    chan struct{} // closed when the test ends
}

func newHeldRequest(t *testing.T) *heldRequest {
	h := &heldRequest{arrived: make(chan fakepbx.Request, 1), release: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { close(h.done) })
	return h
}

// hook is the fake's BeforeChallenge.
func (h *heldRequest) hook(r fakepbx.Request) {
	if !h.taken.CompareAndSwap(false, true) {
		return
	}
	h.arrived <- r
	select {
	case <-h.release:
	case <-h.done:
	}
}

// wait waits until the request is held at the fake and returns it.
func (h *heldRequest) wait(t *testing.T) fakepbx.Request {
	t.Helper()
	select {
	case r := <-h.arrived:
		return r
	case <-time.After(testutil.EventuallyLimit):
		t.Fatal("no request reached the fake")
		return fakepbx.Request{}
	}
}

func testReloadKeepsRequestInProgress(t *testing.T, pm preemptiveMode, method sip.RequestMethod, transport string) {
	held := newHeldRequest(t)
	h := startHarness(t, harnessOptions{Preemptive: pm.mode, A: fakepbx.Config{Clock: frozenClock(), BeforeChallenge: held.hook}})

	first := siptest.Request{Method: method, RequestURI: ruriFor(method, "pbx-a.example.com", "1001"), FromUser: "1001"}
	finish := h.startAsync(t, transport, first)
	inProgress := held.wait(t)

	// The rotation: pbx-a's credential gets the new password.
	store, err := credentials.NewStore([]credentials.Entry{
		{Username: "alice", Password: credentials.NewSecret(alicePasswordRotated), Server: h.A.Addr(), Realm: "asterisk"},
		{Username: "bob", Password: credentials.NewSecret(bobPassword), Server: h.B.Addr(), Realm: "asterisk"},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := h.Config
	cfg.Credentials = store
	if err := h.Proxy.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	// pbx-a still accepts only the old password: the held request must
	// be answered with the configuration it started with.
	close(held.release)
	if code := finish(); code != 200 {
		t.Fatalf("request in progress across the reload: %d, want 200 (answered with the old password)", code)
	}

	// From now on pbx-a accepts only the new password.
	h.A.SetAccount("alice", alicePasswordRotated)
	second := siptest.Request{Method: method, RequestURI: ruriFor(method, "pbx-a.example.com", "1001"), FromUser: "1001"}
	if code := h.startAsync(t, transport, second)(); code != 200 {
		t.Fatalf("request started after the reload: %d, want 200 (answered with the new password)", code)
	}
	var accepted []string
	for _, r := range h.A.Requests() {
		if r.Method == string(method) && r.Authenticated {
			accepted = append(accepted, r.CallID)
		}
	}
	if len(accepted) != 2 || accepted[0] != inProgress.CallID {
		t.Fatalf("pbx-a accepted %s for Call-IDs %q, want the held request's, then the next one's", method, accepted)
	}
}

// startAsync sends c over transport and returns at once; the function
// it returns waits for the final status (for an INVITE answered 200, the
// call is ACKed and hung up first). Nothing in the request's own
// goroutine fails the test.
func (h *harness) startAsync(t *testing.T, transport string, c siptest.Request) func() int {
	t.Helper()
	if c.Method == sip.INVITE {
		ph := siptest.StartPhone(t, c.FromUser, transport, h.Addr[transport])
		call := ph.Dial(c.RequestURI, siptest.SDP)
		return func() int {
			t.Helper()
			res := call.WaitFinal(testutil.EventuallyLimit)
			if res.StatusCode == 200 {
				call.Ack()
				if bye := call.Request(sip.BYE, nil); bye.StatusCode != 200 {
					t.Errorf("BYE: %d", bye.StatusCode)
				}
			}
			return res.StatusCode
		}
	}
	req := c.Build(t)
	type result struct {
		res *sip.Response
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := siptest.Send(h.client, h.Addr[transport], transport, req)
		done <- result{res, err}
	}()
	return func() int {
		t.Helper()
		r := <-done
		if r.err != nil {
			t.Fatalf("%s: %v", c.Method, r.err)
		}
		return r.res.StatusCode
	}
}

// TestReloadAppliesRoutingAndAccess: a reload applies to the requests
// after it: client groups (what a source may reach), an upstream's
// domains and an upstream group's routes, and going back restores the
// first configuration.
func TestReloadAppliesRoutingAndAccess(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	status := func(ruri string) int {
		t.Helper()
		return h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: ruri, FromUser: "1001"}).StatusCode
	}
	reload := func(cfg proxy.Config) {
		t.Helper()
		if err := h.Proxy.Reload(cfg); err != nil {
			t.Fatal(err)
		}
	}
	for ruri, want := range map[string]int{"sip:1002@pbx-a.example.com": 200, "sip:1002@new.example.com": 404, "sip:1002@group.example.com": 404} {
		if got := status(ruri); got != want {
			t.Fatalf("before the reload, %s: %d, want %d", ruri, got, want)
		}
	}

	cfg := h.Config
	cfg.Clients = []proxy.ClientGroup{{Name: "b-only", Networks: prefixes("127.0.0.0/8"), Upstreams: []string{"pbx-b"}}}
	cfg.Upstreams = slices.Clone(cfg.Upstreams)
	cfg.Upstreams[1].Domains = append(slices.Clone(cfg.Upstreams[1].Domains), "new.example.com")
	cfg.Groups = []proxy.UpstreamGroup{{Name: "grp", Upstreams: []string{"pbx-b"}, Domains: []string{"group.example.com"}}}
	reload(cfg)
	for ruri, want := range map[string]int{"sip:1002@pbx-a.example.com": 403, "sip:1002@new.example.com": 200, "sip:1002@group.example.com": 200} {
		if got := status(ruri); got != want {
			t.Errorf("after the reload, %s: %d, want %d", ruri, got, want)
		}
	}

	reload(h.Config)
	for ruri, want := range map[string]int{"sip:1002@pbx-a.example.com": 200, "sip:1002@new.example.com": 404, "sip:1002@group.example.com": 404} {
		if got := status(ruri); got != want {
			t.Errorf("after reloading the first configuration, %s: %d, want %d", ruri, got, want)
		}
	}
}
