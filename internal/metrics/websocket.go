package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/authproxy/authproxy/proxy/wsgate"
)

// webSocketSource is a Source that also reports the connections of its
// WebSocket listeners (*proxy.Proxy).
type webSocketSource interface {
	WebSocketStats() wsgate.Stats
}

// webSocketCollector reports the WebSocket gate's counters at scrape
// time, as tcpCollector does the TCP guard's.
type webSocketCollector struct {
	src                             webSocketSource
	open, upgraded, refused, closed *prometheus.Desc
}

func newWebSocketCollector(src webSocketSource) *webSocketCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
	}
	return &webSocketCollector{
		src:      src,
		open:     d("websocket_connections", "Connections open on the ws and wss listeners now, upgraded or not."),
		upgraded: d("websocket_upgrades_total", "Connections upgraded to SIP over WebSocket and handed to the SIP stack."),
		refused: d("websocket_refused_total",
			"Connections refused before or at the upgrade, by reason: source-denied, per-source-limit, total-limit, handshake-failed, wrong-path, origin-denied, no-sip-subprotocol, token-denied.",
			"reason"),
		closed: d("websocket_closed_total",
			"Upgraded connections the gate closed, by reason: idle-timeout, too-large (close code 1009), protocol-error (1002).",
			"reason"),
	}
}

func (c *webSocketCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.open, c.upgraded, c.refused, c.closed} {
		ch <- d
	}
}

func (c *webSocketCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.WebSocketStats()
	ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(s.Open))
	ch <- prometheus.MustNewConstMetric(c.upgraded, prometheus.CounterValue, float64(s.Upgraded))
	for reason, n := range s.Refused {
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(n), reason)
	}
	for reason, n := range s.Closed {
		ch <- prometheus.MustNewConstMetric(c.closed, prometheus.CounterValue, float64(n), reason)
	}
}
