package e2e

// The built binary's front door, as an operator meets it: -help, -check
// on what would fail at run time, -check -skip-secrets in CI, a mistyped
// environment override, and the example's sample passwords refused.

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/internal/peers"
)

// checkBinaryTOML is a realistic two-PBX file: secrets from the
// environment and a file, a trunk registration.
const checkBinaryTOML = `
[[listen]]
address = "127.0.0.1:0"
[[upstream]]
name = "pbx-a"
address = "127.0.0.2:5060"
[[upstream]]
name = "carrier"
address = "127.0.0.3:5060"
[[client]]
name = "office"
networks = ["127.0.0.0/8"]
upstreams = ["*"]
[[credential]]
username = "office"
password_env = "E2E_CHECK_PBX_A_PASSWORD"
server = "pbx-a"
[[credential]]
username = "trunk"
password_file = "secrets/carrier"
server = "carrier"
[[registration]]
upstream = "carrier"
aor = "sip:trunk@carrier.example.net"
target = "127.0.0.2:5060"
`

// TestBinaryCheck runs the binary on files and environments an operator
// gets wrong, and checks its exit status and what it prints.
func TestBinaryCheck(t *testing.T) {
	bin := peers.BuildAuthproxy(t)
	dir := t.TempDir()
	write := func(name, text string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", checkBinaryTOML)
	nameAsHost := write("name-as-host.toml", strings.Replace(checkBinaryTOML, `target = "127.0.0.2:5060"`, `target = "pbx-a"`, 1))
	noCredential := write("no-credential.toml", strings.Replace(checkBinaryTOML, `server = "carrier"`, `server = "pbx-a"`+"\nrealm = \"other\"", 1))
	example, err := filepath.Abs(filepath.Join("..", "config.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		env    []string
		files  map[string]string // written before the run
		code   int
		stdout []string
		stderr []string
	}{
		{name: "help", args: []string{"-help"}, code: 0,
			stdout: []string{"/etc/authproxy/authproxy.toml", "AUTHPROXY_<TABLE>__<KEY>", "SIGHUP", "SIGTERM, SIGINT", "Exit status"}},
		{name: "version", args: []string{"-version"}, code: 0, stdout: []string{"authproxy ", "(commit ", ", go1."}},
		{name: "secrets missing", args: []string{"-check", "-config", good}, code: 1,
			stderr: []string{"  load " + good + `: credential[0].password_env = "E2E_CHECK_PBX_A_PASSWORD": environment variable is not set`,
				"  load " + good + `: credential[1].password_file = "secrets/carrier": cannot read`}},
		{name: "skip-secrets in CI", args: []string{"-check", "-skip-secrets", "-config", good}, code: 0,
			stdout: []string{good + ": ok: 1 listener, 2 upstreams, 0 groups, 2 credentials, 1 client group, 0 client users, 1 registration"}},
		{name: "with the secrets", args: []string{"-check", "-config", good}, env: []string{"E2E_CHECK_PBX_A_PASSWORD=pw-a"},
			files: map[string]string{"secrets/carrier": "pw-carrier\n"}, code: 0, stdout: []string{"ok:"}},
		{name: "mistyped override", args: []string{"-check", "-skip-secrets", "-config", good}, env: []string{"AUTHPROXY_LOG__LEVL=debug"}, code: 1,
			stderr: []string{"log.levl (from $AUTHPROXY_LOG__LEVL): unknown environment override (did you mean $AUTHPROXY_LOG__LEVEL?)"}},
		{name: "upstream name as target", args: []string{"-check", "-skip-secrets", "-config", nameAsHost}, code: 1,
			stderr: []string{`registration[0].target = "pbx-a": is the name of upstream "pbx-a", not a host`}},
		{name: "registration without credential", args: []string{"-check", "-skip-secrets", "-config", noCredential}, code: 1,
			stderr: []string{`registration[0] = "sip:trunk@carrier.example.net": no [[credential]] answers`}},
		{name: "example file refused at start", args: []string{"-config", example}, code: 1,
			stderr: []string{"authproxy: sample secrets refused", "credential[0]", "-allow-sample-secrets"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for name, text := range tc.files {
				write(name, text)
			}
			cmd := exec.CommandContext(t.Context(), bin, tc.args...)
			cmd.Env = append(os.Environ(), tc.env...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout.String(), stderr.String())
			}
			for _, want := range tc.stdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
				}
			}
			for _, want := range tc.stderr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
				}
			}
		})
	}
}
