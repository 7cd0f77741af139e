package metrics

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/tcpguard"
	"github.com/authproxy/authproxy/proxy/wsgate"
)

// allSource reports every kind of state the metrics read at scrape time,
// so that every authproxy_ family has a series.
type allSource struct {
	listenerFake
	regs []proxy.RegistrationState
}

func (a *allSource) Registrations() []proxy.RegistrationState { return a.regs }

func (a *allSource) StoreUp() bool { return true }

func (a *allSource) CaptureStats() proxy.CaptureStats {
	return proxy.CaptureStats{Dropped: map[string]uint64{proxy.CaptureQueueFull: 1}}
}

// documented reads the metrics table of docs/operations.md: name → type
// and sorted label names.
func documented(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `(authproxy_[a-z0-9_]+)` \\| ([a-z]+) \\|([^|]*)\\|")
	label := regexp.MustCompile("`([a-z_]+)`")
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		m := row.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		var labels []string
		for _, l := range label.FindAllStringSubmatch(m[3], -1) {
			labels = append(labels, l[1])
		}
		slices.Sort(labels)
		out[m[1]] = m[2] + " {" + strings.Join(labels, ",") + "}"
	}
	return out
}

// TestMetricsTableMatchesExported holds docs/operations.md's metrics table
// to what /metrics exports: every authproxy_ family, its type and its
// label names, in both directions.
func TestMetricsTableMatchesExported(t *testing.T) {
	m := New("v1")
	m.Attach(&allSource{
		listenerFake: listenerFake{
			fakeSource: fakeSource{health: []proxy.UpstreamHealth{{
				Name: "pbx-a", State: proxy.HealthUp, LastRTT: time.Millisecond, Pings: 2, Failures: 1,
				Resolved: time.Unix(1_700_000_000, 0),
				Targets:  []proxy.TargetHealth{{Transport: "udp", Address: "192.0.2.1:5060", State: proxy.HealthUp}},
			}}},
			listeners: []proxy.ListenerStatus{{Transport: "udp", Address: "127.0.0.1:5060", Serving: true}},
			stats: tcpguard.Stats{
				Refused: map[string]uint64{tcpguard.ReasonSourceDenied: 1},
				Closed:  map[string]uint64{tcpguard.ReasonIdle: 1, tcpguard.ReasonTooLarge: 1, tcpguard.ReasonMalformed: 1},
			},
			ws: wsgate.Stats{Refused: map[string]uint64{wsgate.ReasonOrigin: 1}, Closed: map[string]uint64{wsgate.ReasonIdle: 1}},
		},
		regs: []proxy.RegistrationState{{AOR: "sip:a@x", State: proxy.RegStateRegistered}},
	})
	m.ConfigReloaded("ok")
	m.RequestDone("INVITE", "pbx-a", 200, "relayed", time.Millisecond, time.Millisecond)
	m.ChallengeAnswered("pbx-a", "asterisk", true)
	m.AuthRejected("pbx-a")
	m.Refused("source-denied")
	m.Discarded("response-source")
	m.RequestResent("pbx-a")
	m.UpstreamStateChanged("pbx-a", true)
	m.PreemptiveAuth("pbx-a", true)
	m.Failover("pbx-a", "timeout")

	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]string{}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "authproxy_") {
			continue
		}
		var labels []string
		if ms := f.GetMetric(); len(ms) > 0 {
			for _, l := range ms[0].GetLabel() {
				labels = append(labels, l.GetName())
			}
		}
		slices.Sort(labels)
		exported[f.GetName()] = strings.ToLower(dto.MetricType_name[int32(f.GetType())]) + " {" + strings.Join(labels, ",") + "}"
	}
	doc := documented(t)
	if len(doc) < 30 {
		t.Fatalf("found %d metrics in docs/operations.md's table, want the whole table", len(doc))
	}
	for name, want := range exported {
		if got, ok := doc[name]; !ok {
			t.Errorf("%s (%s) is exported but not in docs/operations.md", name, want)
		} else if got != want {
			t.Errorf("%s: docs/operations.md says %s, /metrics exports %s", name, got, want)
		}
	}
	for name, got := range doc {
		if _, ok := exported[name]; !ok {
			t.Errorf("%s (%s) is in docs/operations.md but not exported", name, got)
		}
	}
}
