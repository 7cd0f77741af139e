package main

import (
	"fmt"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
)

// version and commit are stamped at build time, as the Dockerfile does:
//
//	go build -ldflags "-X main.version=v1.2.0 -X main.commit=$(git rev-parse HEAD)" ./cmd/authproxy
//
// Left empty, they come from the build information the go command records
// in every binary: the main module's version, and in a git checkout the
// revision and whether the tree had uncommitted changes. So a plain
// `go build` or `go install ./cmd/authproxy` from a clone names its commit.
var version, commit string

// buildVersion is what -version prints and /status, /metrics and the
// start log line report.
type buildVersion struct {
	Version  string // a release tag, a Go pseudo-version, or "dev"
	Commit   string // 12 hex digits, or "unknown"
	Modified bool   // built from a tree with uncommitted changes
	Go       string // the Go release that built it
}

// String is the -version line after "authproxy ", e.g.
// "v1.2.0 (commit 00b2d8b25c62, go1.26.8)".
func (v buildVersion) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (commit %s", v.Version, v.Commit)
	if v.Modified {
		b.WriteString(", modified")
	}
	fmt.Fprintf(&b, ", %s)", v.Go)
	return b.String()
}

// currentVersion is this binary's version: stamped values first, the
// recorded build information for what was not stamped.
func currentVersion() buildVersion {
	bi, _ := debug.ReadBuildInfo()
	return resolveVersion(version, commit, bi)
}

// versionString is the version alone, for metrics labels and /status.
func versionString() string { return currentVersion().Version }

// develVersion is what the go command records as the main module's
// version when it knows none (go run, go test, older releases of go build).
const develVersion = "(devel)"

// pseudoRevision finds the commit in a Go pseudo-version
// (v0.0.0-20261202174404-00b2d8b25c62 or v1.3.1-0.20261202174404-…,
// optionally +dirty): what `go install module@commit` records, with no vcs
// settings.
var pseudoRevision = regexp.MustCompile(`[-.]\d{14}-([0-9a-f]{12})(\+incompatible)?(\+dirty)?$`)

// resolveVersion decides the version and commit from the stamped values
// and the build information (nil when the binary has none).
func resolveVersion(stampedVersion, stampedCommit string, bi *debug.BuildInfo) buildVersion {
	v := buildVersion{Version: stampedVersion, Commit: shortCommit(stampedCommit), Go: runtime.Version()}
	if bi == nil {
		return fillUnknown(v)
	}
	if bi.GoVersion != "" {
		v.Go = bi.GoVersion
	}
	if v.Version == "" && bi.Main.Version != develVersion {
		v.Version = bi.Main.Version
	}
	if v.Commit != "" {
		return fillUnknown(v)
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = shortCommit(s.Value)
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	if v.Commit == "" {
		if m := pseudoRevision.FindStringSubmatch(bi.Main.Version); m != nil {
			v.Commit, v.Modified = m[1], m[3] != ""
		}
	}
	return fillUnknown(v)
}

// fillUnknown names what nothing told: never an empty field, never "(devel)".
func fillUnknown(v buildVersion) buildVersion {
	if v.Version == "" || v.Version == develVersion {
		v.Version = "dev"
	}
	if v.Commit == "" {
		v.Commit = "unknown"
	}
	return v
}

// shortCommit keeps the first 12 hex digits of a revision, as Go's
// pseudo-versions do.
func shortCommit(rev string) string {
	rev = strings.TrimSpace(rev)
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}
