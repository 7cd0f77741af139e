package main

import (
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// buildInfo is the build information a binary carries, with the main
// module's version and the vcs settings given.
func buildInfo(mainVersion string, settings ...string) *debug.BuildInfo {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/authproxy/authproxy", Version: mainVersion}}
	for i := 0; i+1 < len(settings); i += 2 {
		bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
	}
	return bi
}

func TestResolveVersion(t *testing.T) {
	const rev = "00b2d8b25c62a1c0de5f6f7e8d9c0b1a2b3c4d5e"
	for _, tc := range []struct {
		name            string
		stampedVersion  string
		stampedCommit   string
		bi              *debug.BuildInfo
		want            string
		wantVersionOnly string
	}{
		{name: "stamped by the Dockerfile", stampedVersion: "v1.2.0", stampedCommit: rev,
			bi:   buildInfo("(devel)"),
			want: "v1.2.0 (commit 00b2d8b25c62, go1.26.8)", wantVersionOnly: "v1.2.0"},
		{name: "version stamped, commit from the checkout", stampedVersion: "v1.2.0",
			bi:   buildInfo("(devel)", "vcs", "git", "vcs.revision", rev, "vcs.modified", "false"),
			want: "v1.2.0 (commit 00b2d8b25c62, go1.26.8)", wantVersionOnly: "v1.2.0"},
		{name: "go build in a clone with changes",
			bi:   buildInfo("v0.0.0-20261202174404-00b2d8b25c62+dirty", "vcs", "git", "vcs.revision", rev, "vcs.modified", "true"),
			want: "v0.0.0-20261202174404-00b2d8b25c62+dirty (commit 00b2d8b25c62, modified, go1.26.8)", wantVersionOnly: "v0.0.0-20261202174404-00b2d8b25c62+dirty"},
		{name: "go build by a go that records no module version",
			bi:   buildInfo("(devel)", "vcs.revision", rev, "vcs.modified", "false"),
			want: "dev (commit 00b2d8b25c62, go1.26.8)", wantVersionOnly: "dev"},
		{name: "go install module@tag",
			bi:   buildInfo("v1.3.0"),
			want: "v1.3.0 (commit unknown, go1.26.8)", wantVersionOnly: "v1.3.0"},
		{name: "go install module@commit",
			bi:   buildInfo("v1.3.1-0.20261202174404-00b2d8b25c62"),
			want: "v1.3.1-0.20261202174404-00b2d8b25c62 (commit 00b2d8b25c62, go1.26.8)", wantVersionOnly: "v1.3.1-0.20261202174404-00b2d8b25c62"},
		{name: "go run: nothing recorded",
			bi:   buildInfo("(devel)"),
			want: "dev (commit unknown, go1.26.8)", wantVersionOnly: "dev"},
		{name: "no build information", bi: nil, wantVersionOnly: "dev"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := resolveVersion(tc.stampedVersion, tc.stampedCommit, tc.bi)
			got := v.String()
			if tc.want != "" && got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			if v.Version != tc.wantVersionOnly {
				t.Errorf("Version = %q, want %q", v.Version, tc.wantVersionOnly)
			}
			if strings.Contains(got, "(devel)") || v.Commit == "" {
				t.Errorf("String() = %q: names no version or no commit", got)
			}
		})
	}
}

// TestVersionOfPlainBuild builds ./cmd/authproxy as a user would, with no
// -ldflags, and checks that -version prints what the go command recorded:
// in a git clone the commit (go version -m shows vcs.revision), elsewhere
// "dev (commit unknown, ...)", never "(devel)".
func TestVersionOfPlainBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary (-short)")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	bin := filepath.Join(t.TempDir(), "authproxy")
	build := exec.CommandContext(t.Context(), gobin, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	info, err := exec.CommandContext(t.Context(), gobin, "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	recorded := ""
	for line := range strings.Lines(string(info)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs.revision=") {
			recorded = shortCommit(strings.TrimPrefix(f[1], "vcs.revision="))
		}
	}
	out, err := exec.CommandContext(t.Context(), bin, "-version").Output()
	if err != nil {
		t.Fatalf("-version: %v", err)
	}
	got := strings.TrimSpace(string(out))
	t.Logf("-version: %s", got)
	if !strings.HasPrefix(got, "authproxy ") || strings.Contains(got, "(devel)") {
		t.Errorf("-version = %q", got)
	}
	want := "(commit unknown"
	if recorded != "" {
		want = "(commit " + recorded
	}
	if !strings.Contains(got, want) {
		t.Errorf("-version = %q, want %q (go version -m: vcs.revision %q)", got, want, recorded)
	}
	if recorded == "" {
		t.Log("no vcs.revision recorded: not a git clone (a worktree's .git is a file, which the go command does not stamp), or -buildvcs=false in GOFLAGS")
	}
}
