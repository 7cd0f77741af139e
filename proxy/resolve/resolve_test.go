package resolve

import (
	"slices"
	"testing"

	"github.com/authproxy/authproxy/internal/dnstest"
)

func TestLookup_SRV(t *testing.T) {
	srv := dnstest.New(t)
	srv.Set("_sip._udp.example.test. 60 IN SRV 10 50 5060 sip1.example.test.",
		"_sip._udp.example.test. 60 IN SRV 20 50 5070 sip2.example.test.")
	srv.Set("sip1.example.test. 60 IN A 127.0.0.2")
	srv.Set("sip2.example.test. 60 IN A 127.0.0.3")
	r := newTestResolver(t, srv, Config{})
	got := r.lookup(t, Query{Host: "example.test", Transport: UDP})
	want := []Target{
		target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50),
		target(UDP, "127.0.0.3:5070", "sip2.example.test", 20, 50),
	}
	if !slices.Equal(got.Targets, want) {
		t.Fatalf("Targets = %v, want %v", got.Targets, want)
	}
}
