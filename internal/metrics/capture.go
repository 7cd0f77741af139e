package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/authproxy/authproxy/proxy"
)

// captureSource is a Source that also reports its HEP capture
// (*proxy.Proxy).
type captureSource interface {
	CaptureStats() proxy.CaptureStats
}

// captureCollector reports the HEP capture's counters at scrape time:
// they are the proxy's, counted without a metric call on the SIP path.
type captureCollector struct {
	src           captureSource
	sent, dropped *prometheus.Desc
}

func newCaptureCollector(src captureSource) *captureCollector {
	return &captureCollector{
		src: src,
		sent: prometheus.NewDesc(namespace+"_capture_sent_total",
			"SIP messages sent to the HEP receiver ([capture] hep) as HEPv3 packets.", nil, nil),
		dropped: prometheus.NewDesc(namespace+"_capture_dropped_total",
			"SIP messages not sent to the HEP receiver, by reason: queue-full (the sender fell behind; the SIP path never waits), too-large (over one HEPv3 packet), send-failed.",
			[]string{"reason"}, nil),
	}
}

func (c *captureCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.sent
	ch <- c.dropped
}

func (c *captureCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.CaptureStats()
	ch <- prometheus.MustNewConstMetric(c.sent, prometheus.CounterValue, float64(s.Sent))
	for reason, n := range s.Dropped {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(n), reason)
	}
}
