package scenarios

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/siptest"
)

// digestParam matches one parameter of digest credentials, quoted or not.
var digestParam = regexp.MustCompile(`(?i)\b(nonce|cnonce|nc)\s*=\s*"?([^",\s]+)"?`)

// TestCnonceFreshNcCounted: under the default configuration (preemptive
// answers reuse a nonce), every answer authproxy sends carries a cnonce of
// its own, and the nonce counts of one nonce only ever rise (RFC 7616
// §3.4): a nonce never sees the same count twice.
func TestCnonceFreshNcCounted(t *testing.T) {
	h := startHarness(t, harnessOptions{Preemptive: productDefaultPreemptive(t)})
	const n = 6
	for range n {
		for _, m := range []sip.RequestMethod{sip.MESSAGE, sip.OPTIONS} {
			if res := h.final(t, "udp", siptest.Request{Method: m, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"}); res.StatusCode != 200 {
				t.Fatalf("%s: %d", m, res.StatusCode)
			}
		}
	}
	cnonces := map[string]bool{}
	lastNC := map[string]int64{}
	answers := 0
	branches := map[string]bool{}
	for _, r := range h.A.Requests() {
		if branches[r.Branch] {
			continue // a retransmission: the same request again
		}
		branches[r.Branch] = true
		for _, a := range r.Authorization {
			p := map[string]string{}
			for _, m := range digestParam.FindAllStringSubmatch(a, -1) {
				p[m[1]] = m[2]
			}
			if p["cnonce"] == "" {
				continue // qop-less answers carry none
			}
			answers++
			if cnonces[p["cnonce"]] {
				t.Errorf("cnonce %s sent twice", p["cnonce"])
			}
			cnonces[p["cnonce"]] = true
			nc, err := strconv.ParseInt(p["nc"], 16, 64)
			if err != nil {
				t.Fatalf("nc %q: %v", p["nc"], err)
			}
			if nc <= lastNC[p["nonce"]] {
				t.Errorf("nonce %s: nc %d after %d", p["nonce"], nc, lastNC[p["nonce"]])
			}
			lastNC[p["nonce"]] = nc
		}
	}
	if answers < 2*n {
		t.Fatalf("%d answers with a cnonce upstream, want at least %d: nothing to compare", answers, 2*n)
	}
}
