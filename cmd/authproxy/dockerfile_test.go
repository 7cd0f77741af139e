package main

import (
	"bufio"
	"context"
	"debug/elf"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

// There is no Docker engine where the tests run, so the Dockerfile is
// checked in two parts: its directives (non-root user, ports, config path,
// HEALTHCHECK), and its build stage's `go build` command, run here as
// written, whose output must be a static binary that works without any
// file of the build context.

// dockerfile returns the Dockerfile's instructions, continuation lines
// joined, comments dropped.
func dockerfile(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(line)
		out = append(out, cur.String())
		cur.Reset()
	}
	return out
}

func TestDockerfileDirectives(t *testing.T) {
	ins := dockerfile(t)
	text := strings.Join(ins, "\n")
	goMod, err := os.ReadFile(filepath.Join("..", "..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(goMod)
	for _, want := range []string{
		"ARG GO_VERSION=" + string(goVersion[1]), // the builder matches go.mod
		// Digest pins, empty by default: FROM image:tag@sha256:... when set.
		"ARG GOLANG_DIGEST=\n",
		"ARG DISTROLESS_DIGEST=\n",
		"FROM golang:${GO_VERSION}${GOLANG_DIGEST} AS build",
		"FROM gcr.io/distroless/static-debian12:nonroot${DISTROLESS_DIGEST}\n",
		// The admin listener on whatever the mounted file says: HEALTHCHECK
		// and Prometheus find it.
		"ENV AUTHPROXY_ADMIN__ADDRESS=0.0.0.0:9060",
		"USER nonroot:nonroot",
		"EXPOSE 5060/udp 5060/tcp 9060/tcp",
		"COPY --from=build /src/config.example.toml /etc/authproxy/authproxy.toml",
		"COPY --from=build --chown=nonroot:nonroot /out/state /var/lib/authproxy",
		"ENV AUTHPROXY_STATE__DIR=/var/lib/authproxy",
		"VOLUME /var/lib/authproxy",
		`CMD ["-config", "/etc/authproxy/authproxy.toml"]`,
		`CMD ["/usr/local/bin/authproxy", "-healthcheck", "http://127.0.0.1:9060/healthz"]`,
		"STOPSIGNAL SIGTERM",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	// Any configuration the image runs, with the image's environment,
	// serves /healthz where HEALTHCHECK looks: the example, and a file
	// without [admin] (the README's production files).
	minimal := []byte("[[listen]]\naddress = \"0.0.0.0:5060\"\nadvertise = \"sip.example.net\"\n" +
		"[[upstream]]\nname = \"pbx\"\naddress = \"192.0.2.10\"\n[[credential]]\nusername = \"u\"\npassword = \"p\"\n" +
		"[[client]]\nname = \"lan\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"*\"]\n")
	example, err := os.ReadFile(filepath.Join("..", "..", "config.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	imageEnv := []string{"AUTHPROXY_ADMIN__ADDRESS=0.0.0.0:9060"}
	for name, data := range map[string][]byte{"config.example.toml": example, "a file without [admin]": minimal} {
		cfg, err := config.Parse(data, config.WithEnviron(imageEnv))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, port, _ := net.SplitHostPort(cfg.Admin.Address); port != "9060" {
			t.Errorf("%s in the image: admin.address = %q; the HEALTHCHECK probes port 9060", name, cfg.Admin.Address)
		}
	}
}

// buildCommand returns the environment assignments and go arguments of
// the Dockerfile's `RUN ... go build ...` line.
func buildCommand(t *testing.T) (env, args []string) {
	t.Helper()
	for _, in := range dockerfile(t) {
		rest, ok := strings.CutPrefix(in, "RUN ")
		if !ok || !strings.Contains(rest, "go build") {
			continue
		}
		words := shellWords(t, rest)
		for i, w := range words {
			if w == "go" {
				return words[:i], words[i+1:]
			}
			if !strings.Contains(w, "=") {
				t.Fatalf("unexpected word %q before go in %q", w, rest)
			}
		}
	}
	t.Fatal("no RUN go build in the Dockerfile")
	return nil, nil
}

// shellWords splits s as sh would for the simple words a RUN line has:
// spaces separate, double quotes group.
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var out []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote, inWord = !inQuote, true
		case r == ' ' && !inQuote:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inQuote {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

// TestDockerfileBuild runs the build stage's go build as written (with
// VERSION, COMMIT and the output path substituted) and checks the binary:
// static (no ELF interpreter, no shared library), version and commit
// stamped, and working on its own: -check on the example, -healthcheck
// against an HTTP server.
func TestDockerfileBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a static binary from scratch (-short)")
	}
	env, args := buildCommand(t)
	if len(args) == 0 || args[0] != "build" {
		t.Fatalf("go %q is not a build", args)
	}
	wantEnv := map[string]bool{"CGO_ENABLED=0": false, "GOOS=linux": false}
	for _, e := range env {
		if _, ok := wantEnv[e]; ok {
			wantEnv[e] = true
		}
	}
	for e, seen := range wantEnv {
		if !seen {
			t.Errorf("the build does not set %s", e)
		}
	}
	out := filepath.Join(t.TempDir(), "authproxy")
	for i := range args {
		args[i] = strings.ReplaceAll(args[i], "${VERSION}", "dockerfile-test")
		args[i] = strings.ReplaceAll(args[i], "${COMMIT}", "0123456789abcdef0123456789abcdef01234567")
		if i > 0 && args[i-1] == "-o" {
			args[i] = out
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), env...)
	start := time.Now()
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	t.Logf("go %s: %v", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))

	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has an ELF interpreter: it is dynamically linked")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %q", libs)
	}
	if f.Section(".symtab") != nil {
		t.Error("the binary keeps its symbol table: -s missing from -ldflags")
	}

	// Run it from an empty directory, as in the image.
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		c := exec.CommandContext(ctx, out, args...)
		c.Dir = dir
		b, err := c.CombinedOutput()
		return string(b), err
	}
	if got, err := run("-version"); err != nil || !strings.Contains(got, "authproxy dockerfile-test (commit 0123456789ab") {
		t.Errorf("-version: %q %v", got, err)
	}
	example, err := filepath.Abs(filepath.Join("..", "..", "config.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := run("-check", "-allow-sample-secrets", "-config", example); err != nil || !strings.Contains(got, "ok:") {
		t.Errorf("-check the example: %q %v", got, err)
	}
	// The image's default command on the file it ships: refused.
	if got, err := run("-config", example); err == nil || !strings.Contains(got, "sample password") {
		t.Errorf("run on the example file: %q %v, want a refusal of its sample passwords", got, err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	if got, err := run("-healthcheck", srv.URL+"/healthz"); err != nil {
		t.Errorf("-healthcheck /healthz: %q %v", got, err)
	}
	if _, err := run("-healthcheck", srv.URL+"/missing"); err == nil {
		t.Error("-healthcheck of a 404 exited 0")
	}
}

// buildTimeout bounds the static build (cold, every dependency compiled
// anew for CGO_ENABLED=0 and -trimpath, on two cores).
const buildTimeout = 5 * time.Minute
