package resolve

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestLookup_Dnsmasq resolves NAPTR → SRV → A/AAAA through a real dnsmasq:
// the records as dnsmasq encodes them (its glue, its TTLs, its NXDOMAIN)
// give the targets RFC 3263 says.
func TestLookup_Dnsmasq(t *testing.T) {
	peers.Require(t, "dnsmasq")
	d := peers.StartDnsmasq(t, peers.DnsmasqConfig{
		Host: "127.0.0.1",
		Hosts: []peers.DnsmasqHost{
			{Name: "sip1.example.test", IPv4: "127.0.0.2", IPv6: "::2"},
			{Name: "sip2.example.test", IPv4: "127.0.0.3"},
		},
		SRV: []peers.DnsmasqSRV{
			{Name: "_sip._tcp.example.test", Target: "sip2.example.test", Port: 5070, Priority: 20, Weight: 100},
			{Name: "_sip._tcp.example.test", Target: "sip1.example.test", Port: 5060, Priority: 10, Weight: 100},
			{Name: "_sip._udp.example.test", Target: "sip1.example.test", Port: 5060, Priority: 10, Weight: 100},
		},
		NAPTR: []peers.DnsmasqNAPTR{
			{Name: "example.test", Order: 20, Preference: 10, Flags: "s", Service: "SIP+D2U", Replacement: "_sip._udp.example.test"},
			{Name: "example.test", Order: 10, Preference: 10, Flags: "s", Service: "SIP+D2T", Replacement: "_sip._tcp.example.test"},
			{Name: "example.test", Order: 5, Preference: 10, Flags: "s", Service: "SIP+D2S", Replacement: "_sip._sctp.example.test"},
		},
		TTL: 30 * time.Second,
	})
	r := newTestResolver(t, nil, Config{Servers: []string{d.Addr()}})
	res := r.lookup(t, Query{Host: "example.test"})
	want := []Target{
		target(TCP, "127.0.0.2:5060", "sip1.example.test", 10, 100),
		target(TCP, "[::2]:5060", "sip1.example.test", 10, 100),
		target(TCP, "127.0.0.3:5070", "sip2.example.test", 20, 100),
	}
	if !slices.Equal(res.Targets, want) {
		t.Fatalf("Targets = %v\nwant %v\n--- dnsmasq ---\n%s", res.Targets, want, d.Log())
	}
	if got := res.Expires.Sub(res.Updated); got != 30*time.Second {
		t.Fatalf("lifetime %v, want dnsmasq's --local-ttl 30s", got)
	}
	_, err := r.Lookup(t.Context(), Query{Host: "nothing.example.test"})
	if !errors.Is(err, ErrNoTargets) || !strings.Contains(err.Error(), "NXDOMAIN") {
		t.Fatalf("unknown name: %v, want NXDOMAIN wrapping ErrNoTargets", err)
	}
}
