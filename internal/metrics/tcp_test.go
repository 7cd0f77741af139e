package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/tcpguard"
	"github.com/authproxy/authproxy/proxy/wsgate"
)

// listenerFake is a Source that reports listeners, TCP and WebSocket
// counters.
type listenerFake struct {
	fakeSource
	listeners []proxy.ListenerStatus
	stats     tcpguard.Stats
	ws        wsgate.Stats
}

func (f *listenerFake) Listeners() []proxy.ListenerStatus { return f.listeners }
func (f *listenerFake) TCPStats() tcpguard.Stats          { return f.stats }
func (f *listenerFake) WebSocketStats() wsgate.Stats      { return f.ws }

func TestWebSocketMetrics(t *testing.T) {
	m := New("v9")
	m.Attach(&listenerFake{ws: wsgate.Stats{
		Open: 3, Upgraded: 12,
		Refused: map[string]uint64{wsgate.ReasonOrigin: 2, wsgate.ReasonPerSourceLimit: 950},
		Closed:  map[string]uint64{wsgate.ReasonTooLarge: 1, wsgate.ReasonIdle: 4},
	}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		"authproxy_websocket_connections 3",
		"authproxy_websocket_upgrades_total 12",
		`authproxy_websocket_refused_total{reason="origin-denied"} 2`,
		`authproxy_websocket_refused_total{reason="per-source-limit"} 950`,
		`authproxy_websocket_closed_total{reason="too-large"} 1`,
		`authproxy_websocket_closed_total{reason="idle-timeout"} 4`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestTCPMetrics(t *testing.T) {
	m := New("v9")
	m.Attach(&listenerFake{
		listeners: []proxy.ListenerStatus{
			{Transport: "udp", Address: "127.0.0.1:5060", Serving: true},
			{Transport: "tcp", Address: "127.0.0.1:5060", Error: "accept: broken"},
		},
		stats: tcpguard.Stats{
			Open: 7, Accepted: 40, AcceptErrors: 3,
			Refused: map[string]uint64{tcpguard.ReasonSourceDenied: 500, tcpguard.ReasonPerSourceLimit: 2, tcpguard.ReasonTotalLimit: 0},
			Closed: map[string]uint64{tcpguard.ReasonIdle: 1, tcpguard.ReasonMessage: 1000, tcpguard.ReasonHandshake: 4,
				tcpguard.ReasonTooLarge: 5, tcpguard.ReasonMalformed: 6, tcpguard.ReasonTLSFailed: 0},
		},
	})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`authproxy_listener_up{address="127.0.0.1:5060",transport="udp"} 1`,
		`authproxy_listener_up{address="127.0.0.1:5060",transport="tcp"} 0`,
		"authproxy_tcp_connections 7",
		"authproxy_tcp_connections_accepted_total 40",
		"authproxy_tcp_accept_errors_total 3",
		`authproxy_tcp_connections_refused_total{reason="source-denied"} 500`,
		`authproxy_tcp_connections_refused_total{reason="per-source-limit"} 2`,
		`authproxy_tcp_connections_timed_out_total{reason="idle"} 1`,
		`authproxy_tcp_connections_timed_out_total{reason="message"} 1000`,
		`authproxy_tcp_connections_timed_out_total{reason="handshake"} 4`,
		"authproxy_tcp_messages_too_large_total 5",
		`authproxy_tcp_connections_closed_total{reason="malformed"} 6`,
		`authproxy_tcp_connections_closed_total{reason="tls-failed"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
