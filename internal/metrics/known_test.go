package metrics

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/authproxy/authproxy/proxy"
)

// exported returns the series m exports, as "name{label values}" keys.
func exported(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, s := range f.GetMetric() {
			key := f.GetName() + "{"
			for i, l := range s.GetLabel() {
				if i > 0 {
					key += ","
				}
				key += l.GetName() + "=" + l.GetValue()
			}
			key += "}"
			switch {
			case s.Counter != nil:
				out[key] = s.Counter.GetValue()
			case s.Gauge != nil:
				out[key] = s.Gauge.GetValue()
			default:
				out[key] = -1
			}
		}
	}
	return out
}

// TestSeriesAtZeroFromStart: every series whose labels are known before
// any traffic is exported at 0 at once — fixed reasons and results from
// New, the configured upstreams' and realms' series from Prime — so that
// rate() sees the first event.
func TestSeriesAtZeroFromStart(t *testing.T) {
	m := New("v1")
	m.Prime(Known{
		Upstreams:  []string{"pbx-a", "carrier"},
		Realms:     map[string][]string{"pbx-a": {"asterisk"}},
		Preemptive: []string{"carrier"},
	})
	got := exported(t, m)
	var want []string
	for _, r := range proxy.RefusedReasons {
		want = append(want, "authproxy_requests_refused_total{reason="+r+"}")
	}
	for _, r := range proxy.DiscardedReasons {
		want = append(want, "authproxy_messages_discarded_total{reason="+r+"}")
	}
	for _, r := range []string{ReloadOK, ReloadRestartRequired, ReloadRejected} {
		want = append(want, "authproxy_config_reloads_total{result="+r+"}")
	}
	for _, u := range []string{"pbx-a", "carrier"} {
		for _, r := range append([]string{"rejected"}, proxy.AuthFailureOutcomes...) {
			want = append(want, "authproxy_auth_failures_total{reason="+r+",upstream="+u+"}")
		}
		want = append(want,
			"authproxy_retries_total{upstream="+u+"}",
			"authproxy_stale_retries_total{upstream="+u+"}",
			"authproxy_upstream_state_changes_total{state=down,upstream="+u+"}",
			"authproxy_upstream_state_changes_total{state=up,upstream="+u+"}",
			"authproxy_failovers_total{reason=timeout,upstream="+u+"}",
			"authproxy_failovers_total{reason=transport-error,upstream="+u+"}",
		)
	}
	want = append(want,
		"authproxy_challenges_answered_total{realm=asterisk,upstream=pbx-a}",
		"authproxy_preemptive_auth_total{result=accepted,upstream=carrier}",
		"authproxy_preemptive_auth_total{result=challenged,upstream=carrier}",
	)
	for _, k := range want {
		if v, ok := got[k]; !ok || v != 0 {
			t.Errorf("%s = %v (exported %v), want 0 from the start", k, v, ok)
		}
	}
	if _, ok := got["authproxy_preemptive_auth_total{result=accepted,upstream=pbx-a}"]; ok {
		t.Error("preemptive series for an upstream without preemptive")
	}
	// Priming again (a reload) keeps the counts.
	m.AuthRejected("pbx-a")
	m.Prime(Known{Upstreams: []string{"pbx-a"}})
	if v := exported(t, m)["authproxy_auth_failures_total{reason=rejected,upstream=pbx-a}"]; v != 1 {
		t.Errorf("after a second Prime: %v, want 1", v)
	}
}

// TestDurationBucketsResolveSubMillisecond: a request that took 150 µs and
// one that took 700 µs land in different buckets, both under 1 ms.
func TestDurationBucketsResolveSubMillisecond(t *testing.T) {
	m := New("v1")
	m.RequestDone("OPTIONS", "pbx-a", 200, "relayed", 150*time.Microsecond, 100*time.Microsecond)
	m.RequestDone("OPTIONS", "pbx-a", 200, "relayed", 700*time.Microsecond, 600*time.Microsecond)
	var d dto.Metric
	if err := m.duration.WithLabelValues("OPTIONS").(interface{ Write(*dto.Metric) error }).Write(&d); err != nil {
		t.Fatal(err)
	}
	counts := map[float64]uint64{}
	for _, b := range d.GetHistogram().GetBucket() {
		counts[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	for _, tc := range []struct {
		le   float64
		want uint64
	}{{0.0001, 0}, {0.00025, 1}, {0.0005, 1}, {0.001, 2}} {
		if got := counts[tc.le]; got != tc.want {
			t.Errorf("bucket le=%v: %d, want %d", tc.le, got, tc.want)
		}
	}
}
