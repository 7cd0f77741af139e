package config_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps holds the dependency arrow: config may use credentials and
// koanf, never the proxy, the SIP stack, the commands or the root package
// (cmd/authproxy wires those together).
func TestDeps(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	out, err := exec.Command(gobin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		switch {
		case dep == "github.com/authproxy/authproxy",
			strings.HasPrefix(dep, "github.com/authproxy/authproxy/proxy"),
			strings.HasPrefix(dep, "github.com/authproxy/authproxy/cmd"),
			strings.HasPrefix(dep, "github.com/emiago/sipgo"),
			strings.HasPrefix(dep, "github.com/icholy/digest"),
			strings.HasPrefix(dep, "github.com/lmittmann/tint"):
			t.Errorf("config depends on %s", dep)
		}
	}
}
