// Package metrics exposes what authproxy does as Prometheus metrics. A
// Metrics is the proxy's proxy.Observer (counters and histograms fed on the
// request path) and reads the proxy's gauges (transactions, dialogs,
// upstream health) when it is scraped.
//
// No label ever carries a client's username, a Call-ID, a Request-URI or
// anything secret: labels are methods (unknown ones folded into "other"),
// status codes, configured upstream names, challenge realms (capped, see
// maxRealms), outcome and reason words, and the address-of-record of each
// configured trunk registration (configuration, not input).
//
// Every series whose labels are known before any traffic (reasons,
// results, and with Prime the configured upstreams and realms) is
// exported from the start at 0: rate() and increase() need a sample
// before the first increment to see it.
package metrics

import (
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/authproxy/authproxy/proxy"
)

// namespace prefixes every authproxy metric.
const namespace = "authproxy"

// maxRealms caps the distinct realm label values: realms come from the
// upstreams' challenges, and an upstream that invents a realm per request
// must not grow the metric set without bound. Realms past the cap are
// counted as "other".
const maxRealms = 64

// durationBuckets span what authproxy adds to a request on loopback (tens
// to hundreds of microseconds, docs/performance.md) to an INVITE that
// rings for minutes (Timer C is 3.5 min), in seconds: a 1-2.5-5 series
// from 100 µs.
var durationBuckets = []float64{
	.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 240,
}

// knownMethods are the methods kept as label values; any other method a
// client invents is counted as "other" (a label per invented method would
// let one client grow the metric set without bound).
var knownMethods = map[string]bool{
	"INVITE": true, "ACK": true, "BYE": true, "CANCEL": true, "REGISTER": true, "OPTIONS": true,
	"MESSAGE": true, "SUBSCRIBE": true, "NOTIFY": true, "REFER": true, "INFO": true, "UPDATE": true,
	"PRACK": true, "PUBLISH": true,
}

// authFailureReason is the reason label of a rejection (AuthRejected);
// the other reasons are proxy.AuthFailureOutcomes.
const authFailureReason = "rejected"

// Source is what the scrape-time gauges read; *proxy.Proxy satisfies it.
type Source interface {
	InFlight() int
	DialogCount() int
	UpstreamHealth() []proxy.UpstreamHealth
}

// Metrics holds authproxy's metrics in a registry of its own. It is a
// proxy.Observer; its methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	requests       *prometheus.CounterVec
	outcomes       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	upstreamTime   *prometheus.HistogramVec
	challenges     *prometheus.CounterVec
	staleRetries   *prometheus.CounterVec
	retries        *prometheus.CounterVec
	authFailures   *prometheus.CounterVec
	refused        *prometheus.CounterVec
	discarded      *prometheus.CounterVec
	stateChanges   *prometheus.CounterVec
	preemptive     *prometheus.CounterVec
	failovers      *prometheus.CounterVec
	reloads        *prometheus.CounterVec
	reloadSuccess  prometheus.Gauge
	attachOnce     sync.Once
	realmsMu       sync.Mutex
	realms         map[string]bool
	healthUpDesc   *prometheus.Desc
	healthRTTDesc  *prometheus.Desc
	healthPingDesc *prometheus.Desc
	targetUpDesc   *prometheus.Desc
	targetsDesc    *prometheus.Desc
	resolvedDesc   *prometheus.Desc
	resolveOKDesc  *prometheus.Desc
}

// New returns metrics registered in a fresh registry, with the Go runtime
// and process collectors and authproxy_build_info{version} set to 1.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), realms: map[string]bool{}}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "requests_total",
		Help: "Requests handled, by method, upstream (\"none\" when none was chosen) and final status sent back (\"none\" when none was, e.g. after a CANCEL).",
	}, []string{"method", "upstream", "status"})
	m.outcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "request_outcomes_total",
		Help: "Requests handled, by upstream and outcome (relayed, local, rejected, timeout, unreachable, cancelled, ...), the outcome word of the request log line.",
	}, []string{"upstream", "outcome"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "request_duration_seconds",
		Help:    "Time from a request's arrival to its final response, as the client sees it, by method.",
		Buckets: durationBuckets,
	}, []string{"method"})
	m.upstreamTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "upstream_request_duration_seconds",
		Help:    "Time from sending a request to the next hop until its final response, challenge rounds included, by method and upstream.",
		Buckets: durationBuckets,
	}, []string{"method", "upstream"})
	m.challenges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "challenges_answered_total",
		Help: "401/407 challenges answered, by upstream and realm (realms past the first 64 counted as \"other\").",
	}, []string{"upstream", "realm"})
	m.staleRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "stale_retries_total",
		Help: "Challenges answered again because the upstream marked the nonce stale, by upstream.",
	}, []string{"upstream"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "retries_total",
		Help: "Requests re-sent upstream with answers to a challenge, by upstream.",
	}, []string{"upstream"})
	m.authFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "auth_failures_total",
		Help: "Requests whose challenge could not be satisfied, by upstream and reason: rejected (credentials refused), challenge-limit, no-usable-challenge, no-challenge.",
	}, []string{"upstream", "reason"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "requests_refused_total",
		Help: "Requests refused before any upstream traffic, by reason (source-denied, scope-denied, local-auth-failed, rate-limited, too-many-in-progress, overloaded, blocked, too-many-sources, bad-request, version-not-supported, unsupported-uri-scheme, message-too-large, cancel-source).",
	}, []string{"reason"})
	m.discarded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "messages_discarded_total",
		Help: "Messages dropped unanswered because of what they are, by reason (response-source: a response from elsewhere than where its request went; unparsable; ack-source; malformed-ack; stray-response: a response matching no request in progress).",
	}, []string{"reason"})
	m.preemptive = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "preemptive_auth_total",
		Help: "Requests sent with credentials before any challenge, by upstream and result: accepted, or challenged (answered again the normal way).",
	}, []string{"upstream", "result"})
	m.failovers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "failovers_total",
		Help: "Requests moved from an upstream's target to its next target, or to the next upstream of a group, by upstream (the one left) and reason: timeout (no response at all), transport-error, or the status code.",
	}, []string{"upstream", "reason"})
	m.stateChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_state_changes_total",
		Help: "Upstreams marked up or down by the OPTIONS health check, by upstream and new state.",
	}, []string{"upstream", "state"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "config_reloads_total",
		Help: "Configuration reloads, by result: ok, restart-required (applied except what needs a restart), rejected (invalid; the old configuration kept).",
	}, []string{"result"})
	m.reloadSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "config_last_reload_success_timestamp_seconds",
		Help: "Unix time of the last configuration load that was applied (the start, or a reload).",
	})
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1; the labels say which authproxy and Go built this process.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)
	m.reloadSuccess.SetToCurrentTime()
	m.reg.MustRegister(
		m.requests, m.outcomes, m.duration, m.upstreamTime, m.challenges, m.staleRetries, m.retries,
		m.authFailures, m.refused, m.discarded, m.stateChanges, m.preemptive, m.failovers, m.reloads, m.reloadSuccess, build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	for _, r := range proxy.RefusedReasons {
		m.refused.WithLabelValues(r)
	}
	for _, r := range proxy.DiscardedReasons {
		m.discarded.WithLabelValues(r)
	}
	for _, r := range []string{ReloadOK, ReloadRestartRequired, ReloadRejected} {
		m.reloads.WithLabelValues(r)
	}
	m.healthUpDesc = prometheus.NewDesc(namespace+"_upstream_up",
		"1 when the upstream answers OPTIONS health checks, 0 when it is marked down; absent while unknown or with health checks off.",
		[]string{"upstream"}, nil)
	m.healthRTTDesc = prometheus.NewDesc(namespace+"_upstream_ping_rtt_seconds",
		"Round-trip time of the last answered OPTIONS health check.",
		[]string{"upstream"}, nil)
	m.healthPingDesc = prometheus.NewDesc(namespace+"_upstream_pings_total",
		"OPTIONS health checks sent, by upstream and result (answered, failed).",
		[]string{"upstream", "result"}, nil)
	m.targetUpDesc = prometheus.NewDesc(namespace+"_upstream_target_up",
		"1 when the target (an address the upstream resolves to) answers OPTIONS health checks, 0 when it is marked down; absent while unknown or with health checks off.",
		[]string{"upstream", "transport", "target"}, nil)
	m.targetsDesc = prometheus.NewDesc(namespace+"_upstream_targets",
		"Targets (transport and address) the upstream's address resolves to now.",
		[]string{"upstream"}, nil)
	m.resolvedDesc = prometheus.NewDesc(namespace+"_upstream_resolve_last_success_timestamp_seconds",
		"Unix time the upstream's name last resolved successfully; absent for an IP address and before the first success.",
		[]string{"upstream"}, nil)
	m.resolveOKDesc = prometheus.NewDesc(namespace+"_upstream_resolve_ok",
		"1 when the last resolution of the upstream's name succeeded, 0 when it failed (the last good targets are kept); absent for an IP address.",
		[]string{"upstream"}, nil)
	return m
}

// Attach registers the gauges read from src at scrape time:
// authproxy_active_transactions, authproxy_dialogs, the upstream health
// metrics and, when src reports them, the listeners and TCP connections
// (tcp.go), the WebSocket connections (websocket.go) and the HEP capture
// (capture.go). Call it once, after the proxy is created; later calls do
// nothing.
func (m *Metrics) Attach(src Source) {
	m.attachOnce.Do(func() {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: namespace, Name: "active_transactions",
				Help: "Requests being handled now (server transactions in progress).",
			}, func() float64 { return float64(src.InFlight()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: namespace, Name: "dialogs",
				Help: "Dialogs (calls and subscriptions) this instance tracks.",
			}, func() float64 { return float64(src.DialogCount()) }),
			healthCollector{m: m, src: src},
		)
		if ls, ok := src.(listenerSource); ok {
			m.reg.MustRegister(newTCPCollector(ls))
		}
		if ws, ok := src.(webSocketSource); ok {
			m.reg.MustRegister(newWebSocketCollector(ws))
		}
		if ss, ok := src.(storeSource); ok {
			m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: namespace, Name: "state_store_up",
				Help: "1 while the state store ([state]) answers, 0 while authproxy serves from its own memory.",
			}, func() float64 {
				if ss.StoreUp() {
					return 1
				}
				return 0
			}))
		}
		if cs, ok := src.(captureSource); ok {
			m.reg.MustRegister(newCaptureCollector(cs))
		}
		if rs, ok := src.(registrationSource); ok {
			m.reg.MustRegister(newRegistrationCollector(rs))
		}
	})
}

// storeSource is a Source with a state store (*proxy.Proxy).
type storeSource interface {
	StoreUp() bool
}

// Handler serves the metrics in the Prometheus exposition formats,
// uncompressed: a scrape is tens of kilobytes, and the gzip writer
// promhttp would keep pooled between scrapes holds over a megabyte of
// heap, as much as 700 established calls.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, DisableCompression: true})
}

// Registry returns the registry the metrics are in, for gathering in
// tests or adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Reload results, the values of authproxy_config_reloads_total{result}.
const (
	ReloadOK              = "ok"
	ReloadRestartRequired = "restart-required"
	ReloadRejected        = "rejected"
)

// ConfigReloaded counts a reload with one of the Reload* results.
func (m *Metrics) ConfigReloaded(result string) {
	m.reloads.WithLabelValues(result).Inc()
	if result != ReloadRejected {
		m.reloadSuccess.SetToCurrentTime()
	}
}

// RequestDone implements proxy.Observer.
func (m *Metrics) RequestDone(method, upstream string, status int, outcome string, total, nextHop time.Duration) {
	method = methodLabel(method)
	up := upstreamLabel(upstream)
	st := "none"
	if status > 0 {
		st = strconv.Itoa(status)
	}
	m.requests.WithLabelValues(method, up, st).Inc()
	if outcome == "" {
		outcome = "none"
	}
	m.outcomes.WithLabelValues(up, outcome).Inc()
	m.duration.WithLabelValues(method).Observe(total.Seconds())
	if nextHop > 0 {
		m.upstreamTime.WithLabelValues(method, up).Observe(nextHop.Seconds())
	}
	if slices.Contains(proxy.AuthFailureOutcomes, outcome) {
		m.authFailures.WithLabelValues(up, outcome).Inc()
	}
}

// ChallengeAnswered implements proxy.Observer.
func (m *Metrics) ChallengeAnswered(upstream, realm string, stale bool) {
	m.challenges.WithLabelValues(upstreamLabel(upstream), m.realmLabel(realm)).Inc()
	if stale {
		m.staleRetries.WithLabelValues(upstreamLabel(upstream)).Inc()
	}
}

// AuthRejected implements proxy.Observer.
func (m *Metrics) AuthRejected(upstream string) {
	m.authFailures.WithLabelValues(upstreamLabel(upstream), authFailureReason).Inc()
}

// Refused implements proxy.Observer.
func (m *Metrics) Refused(reason string) {
	m.refused.WithLabelValues(reason).Inc()
}

// Discarded implements proxy.Observer.
func (m *Metrics) Discarded(reason string) {
	m.discarded.WithLabelValues(reason).Inc()
}

// RequestResent implements proxy.Observer.
func (m *Metrics) RequestResent(upstream string) {
	m.retries.WithLabelValues(upstreamLabel(upstream)).Inc()
}

// UpstreamStateChanged implements proxy.Observer.
func (m *Metrics) UpstreamStateChanged(upstream string, up bool) {
	state := "down"
	if up {
		state = "up"
	}
	m.stateChanges.WithLabelValues(upstreamLabel(upstream), state).Inc()
}

// PreemptiveAuth implements proxy.Observer.
func (m *Metrics) PreemptiveAuth(upstream string, accepted bool) {
	result := "challenged"
	if accepted {
		result = "accepted"
	}
	m.preemptive.WithLabelValues(upstreamLabel(upstream), result).Inc()
}

// Failover implements proxy.Observer.
func (m *Metrics) Failover(upstream, reason string) {
	m.failovers.WithLabelValues(upstreamLabel(upstream), reason).Inc()
}

var _ proxy.Observer = (*Metrics)(nil)

func methodLabel(m string) string {
	if knownMethods[m] {
		return m
	}
	return "other"
}

func upstreamLabel(u string) string {
	if u == "" {
		return "none"
	}
	return u
}

// realmLabel returns realm while fewer than maxRealms distinct realms were
// seen, "other" after.
func (m *Metrics) realmLabel(realm string) string {
	m.realmsMu.Lock()
	defer m.realmsMu.Unlock()
	if m.realms[realm] {
		return realm
	}
	if len(m.realms) >= maxRealms {
		return "other"
	}
	m.realms[realm] = true
	return realm
}

// healthCollector reports the upstream health snapshot at scrape time, so
// that upstreams a reload removes disappear from the output.
type healthCollector struct {
	m   *Metrics
	src Source
}

func (c healthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.m.healthUpDesc
	ch <- c.m.healthRTTDesc
	ch <- c.m.healthPingDesc
	ch <- c.m.targetUpDesc
	ch <- c.m.targetsDesc
	ch <- c.m.resolvedDesc
	ch <- c.m.resolveOKDesc
}

func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.src.UpstreamHealth() {
		switch u.State {
		case proxy.HealthUp:
			ch <- prometheus.MustNewConstMetric(c.m.healthUpDesc, prometheus.GaugeValue, 1, u.Name)
		case proxy.HealthDown:
			ch <- prometheus.MustNewConstMetric(c.m.healthUpDesc, prometheus.GaugeValue, 0, u.Name)
		}
		if u.LastRTT > 0 {
			ch <- prometheus.MustNewConstMetric(c.m.healthRTTDesc, prometheus.GaugeValue, u.LastRTT.Seconds(), u.Name)
		}
		// From 0, before the first ping and with health checks off, so
		// that rate() sees the first failure.
		ch <- prometheus.MustNewConstMetric(c.m.healthPingDesc, prometheus.CounterValue, float64(u.Pings-u.Failures), u.Name, "answered")
		ch <- prometheus.MustNewConstMetric(c.m.healthPingDesc, prometheus.CounterValue, float64(u.Failures), u.Name, "failed")
		c.collectTargets(ch, u)
	}
}

// collectTargets reports what u's address resolves to and each target's
// health.
func (c healthCollector) collectTargets(ch chan<- prometheus.Metric, u proxy.UpstreamHealth) {
	if len(u.Targets) > 0 {
		ch <- prometheus.MustNewConstMetric(c.m.targetsDesc, prometheus.GaugeValue, float64(len(u.Targets)), u.Name)
	}
	for _, t := range u.Targets {
		switch t.State {
		case proxy.HealthUp:
			ch <- prometheus.MustNewConstMetric(c.m.targetUpDesc, prometheus.GaugeValue, 1, u.Name, t.Transport, t.Address)
		case proxy.HealthDown:
			ch <- prometheus.MustNewConstMetric(c.m.targetUpDesc, prometheus.GaugeValue, 0, u.Name, t.Transport, t.Address)
		}
	}
	if !u.Resolved.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.m.resolvedDesc, prometheus.GaugeValue, float64(u.Resolved.UnixNano())/1e9, u.Name)
	}
	if !u.Resolved.IsZero() || u.ResolveError != "" {
		ok := 1.0
		if u.ResolveError != "" {
			ok = 0
		}
		ch <- prometheus.MustNewConstMetric(c.m.resolveOKDesc, prometheus.GaugeValue, ok, u.Name)
	}
}
