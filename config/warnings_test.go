package config_test

import (
	"slices"
	"strings"
	"testing"
)

// TestWarnings: legal configurations that most likely do not do what was
// meant get a warning naming the key; sound ones get none.
func TestWarnings(t *testing.T) {
	only := func(upstreams string) string {
		return baseOK + "[[client]]\nname = \"lan\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = " + upstreams + "\n"
	}
	for _, tc := range []struct {
		name, toml string
		want       []string // a substring of each warning, in order
	}{
		{"None", baseOK, nil},
		{"TraceAtDebug", baseOK + "[log]\nlevel = \"debug\"\nsip_trace = true\n", nil},
		{"TraceAboveDebug", baseOK + "[log]\nsip_trace = true\n", []string{`log.sip_trace = true: SIP messages are logged at debug level, and log.level is "info"`}},
		{"UpstreamNoOneUses", only(`["pbx-a"]`), []string{`upstream[1] "pbx-b": no [[client]] group lists it`}},
		{"UpstreamUsedByRegistration", only(`["pbx-a"]`) + "[[registration]]\nupstream = \"pbx-b\"\naor = \"sip:t@pbx-b\"\n", nil},
		{"EveryUpstream", only(`["*"]`), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mustParse(t, tc.toml).Warnings()
			if len(got) != len(tc.want) || !slices.EqualFunc(got, tc.want, strings.Contains) {
				t.Errorf("Warnings() = %q, want %q", got, tc.want)
			}
		})
	}
}
