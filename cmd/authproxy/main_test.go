package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "authproxy.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRun_Flags(t *testing.T) {
	bad := writeConfig(t, `
[log]
level = "loud"
[[listen]]
transport = "sctp"
address = "127.0.0.1:5060"
[[upstream]]
name = "pbx-a"
address = "127.0.0.2:5060"
[[credential]]
username = "alice"
password = "Sup3r-Secret-Value"
server = "pbx-z"
`)
	for _, tc := range []struct {
		name      string
		args      []string
		code      int
		stdout    []string
		stderr    []string
		notStderr []string
	}{
		{name: "check embedded example", args: []string{"-check"}, code: 0, stdout: []string{"embedded config.example.toml: ok: 2 listeners, 2 upstreams"}},
		{name: "check example file", args: []string{"-check", "-config", "../../config.example.toml"}, code: 0, stdout: []string{"ok:"}},
		{name: "check bad file lists every error", args: []string{"-check", "-config", bad}, code: 1,
			stderr:    []string{"log.level", "listen[0].transport", "credential[0].server"},
			notStderr: []string{"Sup3r-Secret-Value"}},
		{name: "missing file", args: []string{"-check", "-config", "/nonexistent/authproxy.toml"}, code: 1, stderr: []string{"/nonexistent/authproxy.toml"}},
		{name: "version", args: []string{"-version"}, code: 0, stdout: []string{"authproxy "}},
		{name: "unknown flag", args: []string{"-frobnicate"}, code: 2, stderr: []string{"try: authproxy -help"}},
		{name: "stray argument", args: []string{"serve"}, code: 2, stderr: []string{"try: authproxy -help"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			for _, s := range tc.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q: %s", s, stdout)
				}
			}
			for _, s := range tc.stderr {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr lacks %q: %s", s, stderr)
				}
			}
			for _, s := range tc.notStderr {
				if strings.Contains(stderr, s) {
					t.Errorf("stderr contains %q: %s", s, stderr)
				}
			}
		})
	}
}

// TestRun_ServesAndStops starts the command on a config with free ports,
// waits for its "ready" line and stops it through its context.
func TestRun_ServesAndStops(t *testing.T) {
	cfg := writeConfig(t, `
[log]
format = "json"
[[listen]]
transport = "udp"
address = "127.0.0.1:0"
[[listen]]
transport = "tcp"
address = "127.0.0.1:0"
[[upstream]]
name = "pbx-a"
address = "127.0.0.2:5060"
[[credential]]
username = "alice"
password = "Sup3r-Secret-Value"
server = "pbx-a"
[[client]]
name = "local"
networks = ["127.0.0.0/8"]
upstreams = ["pbx-a"]
`)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw, _ := os.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-config", cfg}, &bytes.Buffer{}, pw)
		pw.Close()
	}()
	dec := json.NewDecoder(pr)
	var lines []map[string]any
	for {
		var line map[string]any
		if err := dec.Decode(&line); err != nil {
			t.Fatalf("log ended before ready: %v (%v)", err, lines)
		}
		lines = append(lines, line)
		if line["msg"] == "ready" {
			break
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	rest, _ := readAll(pr)
	if strings.Contains(rest, "Sup3r-Secret-Value") {
		t.Fatal("password in log")
	}
	if !strings.Contains(rest, `"msg":"stopped"`) {
		t.Fatalf("no stopped line: %s", rest)
	}
}

func readAll(f *os.File) (string, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(f)
	return b.String(), err
}

// TestDeps holds the package dependency arrows in place (DEVELOPERS.md):
// credentials imports nothing of ours, config never imports proxy or sipgo,
// proxy never imports config.
func TestDeps(t *testing.T) {
	const mod = "github.com/authproxy/authproxy"
	for _, tc := range []struct {
		pkg       string
		forbidden []string
	}{
		{mod + "/credentials", []string{mod + "/", "github.com/"}},
		{mod + "/config", []string{mod + "/proxy", mod + "/cmd", "github.com/emiago/sipgo"}},
		{mod + "/proxy", []string{mod + "/config", mod + "/cmd"}},
	} {
		out, err := exec.Command("go", "list", "-deps", tc.pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", tc.pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == tc.pkg {
				continue
			}
			for _, f := range tc.forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s imports %s", tc.pkg, dep)
				}
			}
		}
	}
}
