package repocheck

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The project speaks of the product, never of how it was developed (see
// the team's rules): no tracked file may refer to a development session.
// SIP and SDP have sessions of their own (RFC 4028 session timers and
// Session-Expires, the RFC 4566 session description and its session id),
// which are left alone.
var (
	narration = []*regexp.Regexp{
		regexp.MustCompile(`(?i)\b(this|previous|last|next|earlier|that) session\b`),
		regexp.MustCompile(`(?i)\bsessions? [0-9]+\b`),
	}
	// sipSession is what may follow "session" when it is SIP's or SDP's.
	sipSession = regexp.MustCompile(`(?i)^[ -](timers?|expires|description|refresh(es|ing)?|ids?|identifiers?|version)\b`)
)

// narrationIn returns the narrating phrases of line.
func narrationIn(line string) []string {
	var out []string
	for _, re := range narration {
		for _, loc := range re.FindAllStringIndex(line, -1) {
			// The match ends at "session" or at its number; a SIP term
			// follows "session" directly.
			rest := line[loc[1]:]
			if word := strings.Index(strings.ToLower(line[loc[0]:loc[1]]), "session"); word >= 0 {
				rest = line[loc[0]+word+len("session"):]
				rest = strings.TrimPrefix(rest, "s")
			}
			if sipSession.MatchString(rest) {
				continue
			}
			out = append(out, line[loc[0]:loc[1]])
		}
	}
	return out
}

func TestNarrationIn(t *testing.T) {
	// The phrases are built from parts so that this file passes its own
	// check.
	s := "sess" + "ion"
	for _, tc := range []struct {
		line string
		want int
	}{
		{"measured in " + s + " 7's build", 1},
		{s + " 6 did not meet the target", 1},
		{"Tried this " + s + " and dropped", 1},
		{"THE PREVIOUS " + strings.ToUpper(s) + "'S RUN", 1},
		{"earlier " + s + ", " + s + "s 3 and 4", 2},
		{"last " + s + " 5", 2},
		{"negotiate the " + s + " timer (RFC 4028)", 0},
		{"Session-Expires: 1800;refresher=uac", 0},
		{"that " + s + " expires after 1800 s", 0},
		{"this " + s + " description (SDP) is relayed as is", 0},
		{"a " + s + " refresh re-INVITE", 0},
		{"o= carries the " + s + " id and version", 0},
		{"the next " + s + " refresh", 0},
		{"a TLS " + s + " is resumed", 0},
		{"the " + s + "ful approach", 0},
	} {
		if got := narrationIn(tc.line); len(got) != tc.want {
			t.Errorf("narrationIn(%q) = %q, want %d phrase(s)", tc.line, got, tc.want)
		}
	}
}

// TestNoDevelopmentNarration reads every text file git tracks and reports
// each line that speaks of development sessions, as file:line.
func TestNoDevelopmentNarration(t *testing.T) {
	root, files := trackedFiles(t)
	for _, name := range files {
		data, err := os.ReadFile(filepath.Join(root, name))
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted in the work tree, not yet in the index
		}
		if err != nil {
			t.Fatal(err)
		}
		if bytes.IndexByte(data[:min(len(data), 8000)], 0) >= 0 {
			continue // binary
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, len(data)+1)
		for n := 1; sc.Scan(); n++ {
			for _, phrase := range narrationIn(sc.Text()) {
				t.Errorf("%s:%d: %q narrates development; describe the product instead", name, n, phrase)
			}
		}
	}
}

// trackedFiles returns the repository's top directory and the files git
// tracks there. Outside a git checkout the test skips; with CI=true a
// missing git fails it, since CI must run the check.
func trackedFiles(t *testing.T) (root string, files []string) {
	t.Helper()
	git, err := exec.LookPath("git")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("git not found: CI must check the tracked files")
		}
		t.Skip("git not found: cannot list the tracked files")
	}
	top, err := exec.CommandContext(t.Context(), git, "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("not in a git checkout (git rev-parse: %v): no tracked files to check", err)
	}
	root = strings.TrimSpace(string(top))
	out, err := exec.CommandContext(t.Context(), git, "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	for name := range strings.SplitSeq(strings.TrimSuffix(string(out), "\x00"), "\x00") {
		if name != "" {
			files = append(files, name)
		}
	}
	if len(files) == 0 {
		t.Fatal("git ls-files listed no file")
	}
	return root, files
}
