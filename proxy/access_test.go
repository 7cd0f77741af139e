package proxy

import (
	"net/netip"
	"testing"
)

// TestGroupFor: a request is admitted by the first client group whose
// networks contain its source, in the configuration's order; a group
// without networks admits every source (it has local users); no group,
// no admission.
func TestGroupFor(t *testing.T) {
	narrow := ClientGroup{Name: "narrow", Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}
	wide := ClientGroup{Name: "wide", Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}}
	anyone := ClientGroup{Name: "users"}
	for _, tc := range []struct {
		groups []ClientGroup
		src    string
		want   string // "" for none
	}{
		{[]ClientGroup{narrow, wide}, "10.0.0.5", "narrow"},
		{[]ClientGroup{wide, narrow}, "10.0.0.5", "wide"},
		{[]ClientGroup{narrow, wide}, "10.1.2.3", "wide"},
		{[]ClientGroup{narrow, wide}, "2001:db8::7", "wide"},
		{[]ClientGroup{narrow, wide}, "192.0.2.1", ""},
		{[]ClientGroup{narrow, wide, anyone}, "192.0.2.1", "users"},
		{nil, "10.0.0.5", ""},
	} {
		rt := &routing{clients: tc.groups}
		got := ""
		if g := rt.groupFor(netip.MustParseAddr(tc.src)); g != nil {
			got = g.Name
		}
		if got != tc.want {
			t.Errorf("groups %v, source %s: group %q, want %q", names(tc.groups), tc.src, got, tc.want)
		}
	}
	// A source written as an IPv4-mapped IPv6 address is its IPv4 address.
	if a := sourceAddr("[::ffff:10.0.0.5]:5060"); a != netip.MustParseAddr("10.0.0.5") {
		t.Errorf("sourceAddr of a mapped address = %v, want 10.0.0.5", a)
	}
}

func names(gs []ClientGroup) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.Name)
	}
	return out
}
