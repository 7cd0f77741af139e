package proxy

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/proxy/resolve"
)

func TestHealthCheckDefaults(t *testing.T) {
	for _, tc := range []struct {
		in, want HealthCheck
	}{
		{HealthCheck{}, HealthCheck{DownAfter: 3, UpAfter: 2}},
		{HealthCheck{Interval: time.Second}, HealthCheck{Interval: time.Second, DownAfter: 3, UpAfter: 2, Timeout: time.Second}},
		{HealthCheck{Interval: time.Minute, DownAfter: 5}, HealthCheck{Interval: time.Minute, DownAfter: 5, UpAfter: 2, Timeout: maxPingTimeout}},
		{HealthCheck{Interval: -time.Second, Timeout: time.Second}, HealthCheck{DownAfter: 3, UpAfter: 2, Timeout: time.Second}},
	} {
		if got := tc.in.withDefaults(); got != tc.want {
			t.Errorf("%+v.withDefaults() = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// TestHealthRequest: the OPTIONS carries what RFC 3261 §8.1.1 requires,
// brackets IPv6 hosts in URIs, names TCP in the Request-URI, and each ping
// has a Call-ID of its own.
func TestHealthRequest(t *testing.T) {
	p := &Proxy{listenState: listenState{listeners: []*boundListener{{transport: "TCP", ip: net.ParseIP("::1"), port: 5070, advertise: "::1"}}}}
	tg := literalTarget(netip.MustParseAddr("2001:db8::1"), 5080, "TCP", "2001:db8::1")
	u := &upstream{Upstream: Upstream{Name: "v6"}, host: "2001:db8::1", port: 5080, transport: "TCP", literal: []resolve.Target{tg}}
	r1, r2 := p.healthRequest(u, tg), p.healthRequest(u, tg)
	text := r1.String()
	for _, want := range []string{
		"OPTIONS sip:[2001:db8::1]:5080;transport=tcp SIP/2.0",
		"From: <sip:authproxy@[::1]>;tag=",
		"To: <sip:[2001:db8::1]:5080>",
		"CSeq: 1 OPTIONS",
		"Max-Forwards: 70",
		"Accept: application/sdp",
		"Content-Length: 0",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("OPTIONS lacks %q:\n%s", want, text)
		}
	}
	if r1.CallID().Value() == r2.CallID().Value() {
		t.Error("two pings share a Call-ID")
	}
	if got, want := r1.Destination(), "[2001:db8::1]:5080"; got != want {
		t.Errorf("destination %q, want %q", got, want)
	}
	if r1.Transport() != "TCP" {
		t.Errorf("transport %q", r1.Transport())
	}
}
