package main

import (
	"reflect"
	"testing"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/credentials"
)

func TestKnownLabels(t *testing.T) {
	cfg := &config.Config{
		Upstreams: []config.Upstream{
			{Name: "pbx-a", Address: "192.0.2.1:5060", Preemptive: "all"},
			{Name: "carrier", Address: "sip.carrier.example", Preemptive: "off"},
			{Name: "pbx-b", Address: "pbx-b.example:5080", Preemptive: "registrations"},
		},
		Credentials: []credentials.Entry{
			{Username: "a", Server: "192.0.2.1:5060", Realm: "asterisk"},
			{Username: "a2", Server: "192.0.2.1:5060", Realm: "asterisk"}, // the same realm once
			{Username: "c", Server: "sip.carrier.example", Realm: "carrier.example"},
			{Username: "b", Server: "pbx-b.example", Realm: "pbx-b"}, // a host scope covers any port
			{Username: "any", Realm: "shared"},                       // no server: every upstream
			{Username: "norealm", Server: "192.0.2.1:5060"},          // no realm: nothing to prime
		},
	}
	k := knownLabels(cfg)
	if want := []string{"pbx-a", "carrier", "pbx-b"}; !reflect.DeepEqual(k.Upstreams, want) {
		t.Errorf("Upstreams = %v, want %v", k.Upstreams, want)
	}
	if want := []string{"pbx-a", "pbx-b"}; !reflect.DeepEqual(k.Preemptive, want) {
		t.Errorf("Preemptive = %v, want %v", k.Preemptive, want)
	}
	for up, want := range map[string][]string{
		"pbx-a":   {"asterisk", "shared"},
		"carrier": {"carrier.example", "shared"},
		"pbx-b":   {"pbx-b", "shared"},
	} {
		if got := k.Realms[up]; !reflect.DeepEqual(got, want) {
			t.Errorf("Realms[%s] = %v, want %v", up, got, want)
		}
	}
}
