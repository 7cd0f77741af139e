package proxy

import (
	"testing"

	"github.com/emiago/sipgo/sip"
)

// The patched sipgo (internal/sipgo, PATCHES.md) must keep header lookups
// case-insensitive (RFC 3261 §7.3.1) while no longer allocating per header.
func TestPatchedSipgoHeaderLookup(t *testing.T) {
	req := sip.NewRequest(sip.MESSAGE, sip.Uri{User: "bob", Host: "pbx.example"})
	req.AppendHeader(sip.NewHeader("User-Agent", "phone"))
	req.AppendHeader(sip.NewHeader("X-Custom-Header", "a"))
	req.AppendHeader(sip.NewHeader("x-custom-header", "b"))
	req.AppendHeader(sip.NewHeader("Proxy-Require", "foo"))
	for _, tc := range []struct {
		name string
		want int
	}{
		{"user-agent", 1}, {"USER-AGENT", 1}, {"User-Agent", 1},
		{"X-CUSTOM-HEADER", 2}, {"proxy-require", 1}, {"Require", 0},
	} {
		if got := len(req.GetHeaders(tc.name)); got != tc.want {
			t.Errorf("GetHeaders(%q) = %d headers, want %d", tc.name, got, tc.want)
		}
		if h := req.GetHeader(tc.name); (h != nil) != (tc.want > 0) {
			t.Errorf("GetHeader(%q) = %v", tc.name, h)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = req.GetHeader("Proxy-Require") }); allocs != 0 {
		t.Errorf("GetHeader allocates %v times, want 0", allocs)
	}
}
