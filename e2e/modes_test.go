package e2e

import (
	"strings"
	"testing"
)

// preemptiveMode is one preemptive setting the main scenarios run under.
type preemptiveMode struct {
	name string
	// toml is the upstream's preemptive key in a configuration file, ""
	// for none (the default).
	toml string
	// on reports whether requests of every method may carry answers
	// before a challenge.
	on bool
}

// preemptiveModes are the settings the main scenarios run under: the
// product's default, as users run it (what an [[upstream]] without the
// key gets: "all", as docs/configuration.md says), and off (the plain
// challenge exchange on every request).
func preemptiveModes(t *testing.T) []preemptiveMode {
	t.Helper()
	return []preemptiveMode{{"preemptive=default", "", true}, {"preemptive=off", `preemptive = "off"`, false}}
}

// applyTOML sets every upstream of a configuration from authproxyTOML
// (which writes preemptive = "off") to this mode.
func (m preemptiveMode) applyTOML(conf string) string {
	repl := ""
	if m.toml != "" {
		repl = m.toml + "\n"
	}
	return strings.ReplaceAll(conf, "preemptive = \"off\"\n", repl)
}
