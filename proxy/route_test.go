package proxy

import (
	"testing"

	"github.com/emiago/sipgo/sip"
)

// TestMatchRoute: a Request-URI host names an upstream by its address host
// (the port choosing among upstreams that share the host), else by one of
// its domains, else a group by one of its domains; case never matters, and
// where names repeat the configuration's order decides.
func TestMatchRoute(t *testing.T) {
	up := func(name, host string, port int, domains ...string) *upstream {
		return &upstream{Upstream: Upstream{Name: name, Domains: domains}, host: host, port: port}
	}
	ups := []*upstream{
		up("a5060", "10.0.0.1", 5060),
		up("a5070", "10.0.0.1", 5070, "Shared.Example"),
		up("b", "pbx-b.example", 5060, "b.example", "shared.example"),
		up("c", "10.0.0.3", 5060, "10.0.0.1"),
	}
	groups := []*upstreamGroup{
		{UpstreamGroup: UpstreamGroup{Name: "g1", Domains: []string{"Carrier.Example"}}},
		{UpstreamGroup: UpstreamGroup{Name: "g2", Domains: []string{"carrier.example", "other.example"}}},
	}
	rt := &routing{upstreams: ups, groups: groups, names: indexRouteNames(ups, groups)}
	for _, tc := range []struct {
		host     string
		port     int
		upstream string
		group    string
	}{
		{host: "10.0.0.1", upstream: "a5060"},             // no port: the first with the host
		{host: "10.0.0.1", port: 5070, upstream: "a5070"}, // the port picks
		{host: "10.0.0.1", port: 5060, upstream: "a5060"},
		{host: "10.0.0.1", port: 5999, upstream: "c"}, // no host with that port: c's domain
		{host: "PBX-B.example", upstream: "b"},
		{host: "pbx-b.example", port: 5080},         // a host with another port is not it
		{host: "shared.example", upstream: "a5070"}, // the first upstream listing the domain
		{host: "B.EXAMPLE", upstream: "b"},
		{host: "carrier.example", group: "g1"}, // the first group listing the domain
		{host: "other.example", group: "g2"},
		{host: "elsewhere.example"},
	} {
		u := sip.Uri{Host: tc.host, Port: tc.port}
		gotUp, gotGroup := rt.matchRoute(u)
		var upName, groupName string
		if gotUp != nil {
			upName = gotUp.Name
		}
		if gotGroup != nil {
			groupName = gotGroup.Name
		}
		if upName != tc.upstream || groupName != tc.group {
			t.Errorf("matchRoute(%s:%d) = upstream %q, group %q; want %q, %q", tc.host, tc.port, upName, groupName, tc.upstream, tc.group)
		}
	}
}
