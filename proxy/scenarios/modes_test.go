package scenarios

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/proxy"
)

// preemptiveMode is one preemptive setting the main scenarios run under.
type preemptiveMode struct {
	name string
	mode proxy.Preemptive
}

// on reports whether requests of every method may carry answers before a
// challenge.
func (m preemptiveMode) on() bool { return m.mode == proxy.PreemptiveAll }

// preemptiveModes are the settings the main scenarios run under: the
// product's default, as users run it (what an [[upstream]] without the
// key gets), and off (the plain challenge exchange on every request).
func preemptiveModes(t *testing.T) []preemptiveMode {
	t.Helper()
	return []preemptiveMode{{"preemptive=default", productDefaultPreemptive(t)}, {"preemptive=off", proxy.PreemptiveOff}}
}

// productDefaultPreemptive reads the preemptive mode an upstream gets when
// its configuration does not name one, from the config package itself, so
// that the "default" scenarios follow the product if the default changes.
func productDefaultPreemptive(t *testing.T) proxy.Preemptive {
	t.Helper()
	cfg, err := config.Parse([]byte(`
[[listen]]
address = "127.0.0.1:5060"
[[upstream]]
name = "u"
address = "127.0.0.2:5060"
[[client]]
name = "c"
networks = ["127.0.0.0/8"]
upstreams = ["*"]
`), config.WithLookupEnv(func(string) (string, bool) { return "", false }))
	if err != nil {
		t.Fatalf("parse a minimal configuration: %v", err)
	}
	m, err := proxy.ParsePreemptive(cfg.Upstreams[0].Preemptive)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// frozenClock is a fake PBX clock that never moves: nonces never expire,
// so that how many requests reach the upstream does not depend on how long
// a busy machine takes to run the scenario.
func frozenClock() func() time.Time {
	return fakepbx.NewManualClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)).Now
}

// upstreamMark is how many requests each fake PBX had received.
type upstreamMark struct{ a, b int }

func (h *harness) upstreamMark() upstreamMark {
	return upstreamMark{len(h.A.Requests()), len(h.B.Requests())}
}

// assertNoUpstreamTrafficSince fails if anything but a barrier reached
// either fake PBX since mark. The barrier is one MESSAGE to each upstream,
// sent and answered now: a request authproxy had forwarded before
// answering the client would have been recorded by then.
func (h *harness) assertNoUpstreamTrafficSince(t *testing.T, mark upstreamMark) {
	t.Helper()
	for _, up := range []struct {
		name, domain string
		pbx          *fakepbx.Server
		since        int
	}{{"pbx-a", "pbx-a.example.com", h.A, mark.a}, {"pbx-b", "pbx-b.example.com", h.B, mark.b}} {
		barrier := uuid.NewString()
		if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:barrier@" + up.domain, FromUser: "1001", CallID: barrier}); res.StatusCode != 200 {
			t.Fatalf("barrier MESSAGE to %s: %d", up.name, res.StatusCode)
		}
		for _, r := range up.pbx.Requests()[up.since:] {
			if r.CallID != barrier {
				t.Errorf("%s received a request it should never have: %v", up.name, summarize([]fakepbx.Request{r}))
			}
		}
	}
}
