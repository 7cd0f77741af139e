package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// listenerSource is a Source that also reports its SIP listeners and the
// connections of its TCP and TLS listeners (*proxy.Proxy).
type listenerSource interface {
	Listeners() []proxy.ListenerStatus
	TCPStats() tcpguard.Stats
}

// timeoutReasons maps the guard's timeout reasons to the label values of
// authproxy_tcp_connections_timed_out_total.
var timeoutReasons = map[string]string{
	tcpguard.ReasonIdle: "idle", tcpguard.ReasonMessage: "message", tcpguard.ReasonHandshake: "handshake",
}

// tcpCollector reports the listeners and the TCP guard's counters at
// scrape time: they are the proxy's, counted without a metric call on the
// connection path.
type tcpCollector struct {
	src                                           listenerSource
	up, open, accepted, refused, timedOut, tooBig *prometheus.Desc
	closed, acceptErrors                          *prometheus.Desc
}

func newTCPCollector(src listenerSource) *tcpCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
	}
	return &tcpCollector{
		src: src,
		up: d("listener_up", "1 while a SIP listener serves, 0 once it stopped while authproxy runs (then /readyz fails).",
			"transport", "address"),
		open:     d("tcp_connections", "Connections open on the TCP and TLS listeners now (clients' and upstreams')."),
		accepted: d("tcp_connections_accepted_total", "Connections the TCP and TLS listeners admitted."),
		refused: d("tcp_connections_refused_total",
			"Connections closed as soon as accepted, by reason: source-denied (no client group admits the source), per-source-limit, total-limit.",
			"reason"),
		timedOut: d("tcp_connections_timed_out_total",
			"Connections closed by a deadline, by reason: idle (tcp.idle_timeout), message (tcp.message_timeout: the first message, or one in progress), handshake (tcp.handshake_timeout).",
			"reason"),
		tooBig: d("tcp_messages_too_large_total", "Messages over tcp.max_message_size: answered 513 when a request, and their connection closed."),
		closed: d("tcp_connections_closed_total",
			"Connections closed for another fault, by reason: malformed (framing RFC 3261 §18.3 cannot follow), tls-failed (handshake error).",
			"reason"),
		acceptErrors: d("tcp_accept_errors_total", "Failed accepts (e.g. out of file descriptors), each retried after a backoff."),
	}
}

func (c *tcpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.open, c.accepted, c.refused, c.timedOut, c.tooBig, c.closed, c.acceptErrors} {
		ch <- d
	}
}

func (c *tcpCollector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.src.Listeners() {
		v := 0.0
		if l.Serving {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, v, l.Transport, l.Address)
	}
	s := c.src.TCPStats()
	ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(s.Open))
	ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(s.Accepted))
	ch <- prometheus.MustNewConstMetric(c.acceptErrors, prometheus.CounterValue, float64(s.AcceptErrors))
	// Every known reason from 0, so that rate() sees the first one.
	refused := map[string]uint64{tcpguard.ReasonSourceDenied: 0, tcpguard.ReasonPerSourceLimit: 0, tcpguard.ReasonTotalLimit: 0}
	for reason, n := range s.Refused {
		refused[reason] = n
	}
	for reason, n := range refused {
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(n), reason)
	}
	closed := map[string]uint64{tcpguard.ReasonMalformed: 0, tcpguard.ReasonTLSFailed: 0, tcpguard.ReasonTooLarge: 0}
	for reason := range timeoutReasons {
		closed[reason] = 0
	}
	for reason, n := range s.Closed {
		closed[reason] = n
	}
	for reason, n := range closed {
		switch {
		case timeoutReasons[reason] != "":
			ch <- prometheus.MustNewConstMetric(c.timedOut, prometheus.CounterValue, float64(n), timeoutReasons[reason])
		case reason == tcpguard.ReasonTooLarge:
			ch <- prometheus.MustNewConstMetric(c.tooBig, prometheus.CounterValue, float64(n))
		default:
			ch <- prometheus.MustNewConstMetric(c.closed, prometheus.CounterValue, float64(n), reason)
		}
	}
}
