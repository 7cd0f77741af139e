package repocheck

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestTestCommand holds the test command to the README's word: scripts/test
// installs missing interop peers, runs every test with the race detector,
// then scripts/fuzz-all, which runs every fuzz target of the module;
// .ci/run runs scripts/test.
func TestTestCommand(t *testing.T) {
	root := filepath.Join("..", "..")
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	lines := func(s string) []string {
		var out []string
		for l := range strings.SplitSeq(s, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
		}
		return out
	}
	test := lines(read("scripts/test"))
	for _, want := range []string{"scripts/install-peers || status=1", "go test -race -count=1 ./... || status=1", "scripts/fuzz-all || status=1"} {
		if !slices.Contains(test, want) {
			t.Errorf("scripts/test does not run %q", want)
		}
	}
	if ci := lines(read(".ci/run")); len(ci) == 0 || ci[len(ci)-1] != "scripts/test" {
		t.Errorf(".ci/run does not end by running scripts/test")
	}

	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not found: cannot list scripts/fuzz-all's targets")
	}
	cmd := exec.CommandContext(t.Context(), bash, filepath.Join("scripts", "fuzz-all"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "FUZZ_LIST=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("FUZZ_LIST=1 scripts/fuzz-all: %v", err)
	}
	got := lines(string(out))
	slices.Sort(got)
	want := fuzzTargets(t, root)
	if len(want) < 10 {
		t.Fatalf("found %d fuzz targets in the module, want the whole set", len(want))
	}
	if !slices.Equal(got, want) {
		t.Errorf("scripts/fuzz-all runs\n%s\nwant every fuzz target of the module:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// fuzzTargets returns "./dir FuzzX" for every fuzz target declared in the
// module's test files (not in testdata, nor in a directory with a go.mod
// of its own), sorted.
func fuzzTargets(t *testing.T, root string) []string {
	t.Helper()
	decl := regexp.MustCompile(`(?m)^func (Fuzz[A-Za-z0-9_]*)\(`)
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (name == "testdata" || strings.HasPrefix(name, ".")) {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil && path != root {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		for _, m := range decl.FindAllSubmatch(data, -1) {
			out = append(out, "./"+filepath.ToSlash(rel)+" "+string(m[1]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
