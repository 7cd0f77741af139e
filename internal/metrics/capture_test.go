package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/proxy"
)

// captureFake is a Source that reports HEP capture counters.
type captureFake struct {
	fakeSource
	stats proxy.CaptureStats
}

func (f *captureFake) CaptureStats() proxy.CaptureStats { return f.stats }

func TestCaptureMetrics(t *testing.T) {
	m := New("v9")
	m.Attach(&captureFake{stats: proxy.CaptureStats{
		Sent:    12,
		Dropped: map[string]uint64{proxy.CaptureQueueFull: 3, proxy.CaptureTooLarge: 0, proxy.CaptureSendFailed: 1},
	}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		"authproxy_capture_sent_total 12",
		`authproxy_capture_dropped_total{reason="queue-full"} 3`,
		`authproxy_capture_dropped_total{reason="too-large"} 0`,
		`authproxy_capture_dropped_total{reason="send-failed"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
