package peers

import (
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestDnsmasqArgs(t *testing.T) {
	args, err := dnsmasqArgs(DnsmasqConfig{
		Hosts: []DnsmasqHost{{Name: "sip1.example.test", IPv4: "127.0.0.2", IPv6: "::2"}},
		SRV:   []DnsmasqSRV{{Name: "_sip._udp.example.test", Target: "sip1.example.test", Port: 5060, Priority: 10, Weight: 100}},
		NAPTR: []DnsmasqNAPTR{{Name: "example.test", Order: 10, Preference: 50, Flags: "s", Service: "SIP+D2U", Replacement: "_sip._udp.example.test"}},
		TTL:   30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"--host-record=sip1.example.test,127.0.0.2,::2",
		"--srv-host=_sip._udp.example.test,sip1.example.test,5060,10,100",
		"--naptr-record=example.test,10,50,s,SIP+D2U,,_sip._udp.example.test",
		"--local=/example.test/",
		"--local-ttl=30",
	}
	for _, w := range want {
		if !slices.Contains(args, w) {
			t.Errorf("args %q lack %q", args, w)
		}
	}
	for _, bad := range []DnsmasqConfig{
		{Host: "10.0.0.1"},
		{Hosts: []DnsmasqHost{{Name: "a.test", IPv4: "not-an-ip"}}},
		{SRV: []DnsmasqSRV{{Name: "_sip._udp.a.test", Target: "x,y"}}},
	} {
		if _, err := dnsmasqArgs(bad); err == nil {
			t.Errorf("dnsmasqArgs(%+v) accepted", bad)
		}
	}
}

// TestStartDnsmasq: dnsmasq answers the records it was given, with their
// TTL, and NXDOMAIN for other names of its domain.
func TestStartDnsmasq(t *testing.T) {
	Require(t, "dnsmasq")
	d := StartDnsmasq(t, DnsmasqConfig{
		Host:  "127.0.0.5",
		Hosts: []DnsmasqHost{{Name: "sip1.example.test", IPv4: "127.0.0.2"}},
		SRV:   []DnsmasqSRV{{Name: "_sip._udp.example.test", Target: "sip1.example.test", Port: 5060, Priority: 10, Weight: 100}},
		TTL:   30 * time.Second,
	})
	ask := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		m, _, err := new(dns.Client).ExchangeContext(t.Context(), new(dns.Msg).SetQuestion(name, qtype), d.Addr())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return m
	}
	m := ask("_sip._udp.example.test.", dns.TypeSRV)
	if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 30 {
		t.Fatalf("SRV answer %v, want one record with TTL 30", m.Answer)
	}
	if srv := m.Answer[0].(*dns.SRV); srv.Port != 5060 || srv.Priority != 10 || srv.Weight != 100 {
		t.Fatalf("SRV %v, want port 5060, priority 10, weight 100", srv)
	}
	if m := ask("nothing.example.test.", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown name: %s, want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
}
