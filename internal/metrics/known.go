package metrics

import "github.com/authproxy/authproxy/proxy"

// Known lists the label values the configuration names before any
// traffic.
type Known struct {
	// Upstreams are the [[upstream]] names.
	Upstreams []string
	// Realms maps an upstream name to the realms of the credentials
	// scoped to it.
	Realms map[string][]string
	// Preemptive are the upstreams that send credentials before any
	// challenge.
	Preemptive []string
}

// failoverReasons are the failover reasons every upstream can have; a
// status code is a reason only once it happened.
var failoverReasons = []string{"timeout", "transport-error"}

// Prime exports at 0 every series k's label values make: per upstream its
// authentication failures by reason, challenge retries, state changes,
// failovers for timeout and transport-error, challenges answered for each
// realm of its credentials, and preemptive results where preemptive is
// on. Call it at start and after each reload; series of upstreams a
// reload removes keep their counts.
func (m *Metrics) Prime(k Known) {
	for _, u := range k.Upstreams {
		up := upstreamLabel(u)
		m.authFailures.WithLabelValues(up, authFailureReason)
		for _, r := range proxy.AuthFailureOutcomes {
			m.authFailures.WithLabelValues(up, r)
		}
		m.staleRetries.WithLabelValues(up)
		m.retries.WithLabelValues(up)
		m.stateChanges.WithLabelValues(up, "up")
		m.stateChanges.WithLabelValues(up, "down")
		for _, r := range failoverReasons {
			m.failovers.WithLabelValues(up, r)
		}
		for _, realm := range k.Realms[u] {
			m.challenges.WithLabelValues(up, m.realmLabel(realm))
		}
	}
	for _, u := range k.Preemptive {
		m.preemptive.WithLabelValues(upstreamLabel(u), "accepted")
		m.preemptive.WithLabelValues(upstreamLabel(u), "challenged")
	}
}
