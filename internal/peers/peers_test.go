package peers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCheckLoopback(t *testing.T) {
	for _, ok := range []string{"127.0.0.1", "127.0.0.2", "127.255.0.9"} {
		if err := checkLoopback(ok); err != nil {
			t.Errorf("checkLoopback(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "localhost", "0.0.0.0", "10.0.0.1", "192.168.1.1", "8.8.8.8", "::1", "::ffff:10.0.0.1"} {
		if err := checkLoopback(bad); err == nil {
			t.Errorf("checkLoopback(%q) = nil, want an error", bad)
		}
	}
	if err := checkLoopbackAddr("10.1.2.3:5060"); err == nil {
		t.Error("checkLoopbackAddr accepted 10.1.2.3:5060")
	}
}

func TestFreePort(t *testing.T) {
	p := FreePort(t, "127.0.0.2")
	if p <= 0 || p > 65535 {
		t.Fatalf("FreePort = %d", p)
	}
}

func TestParseEvents(t *testing.T) {
	log := ` 0(1) INFO: <core> [main.c:1]: hello
 2(7) NOTICE: <script>: PEERS|probe|abc
 1(6) NOTICE: <script>: PEERS|challenge|-5|REGISTER|<null>|<null>|<null>|udp|1|c1@h
 1(6) NOTICE: <script>: PEERS|ok|1|MESSAGE|1001|a-1001|asterisk|tcp|2|id|with|pipes
`
	got := parseEvents(log)
	want := []AuthEvent{
		{Result: "challenge", Code: -5, Method: "REGISTER", Transport: "udp", CSeq: 1, CallID: "c1@h"},
		{Result: "ok", Code: 1, Method: "MESSAGE", RURIUser: "1001", Username: "a-1001", Realm: "asterisk", Transport: "tcp", CSeq: 2, CallID: "id|with|pipes"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseEvents:\n got %+v\nwant %+v", got, want)
	}
	if got, want := usernames(got, func(AuthEvent) bool { return true }), []string{"a-1001"}; !slices.Equal(got, want) {
		t.Errorf("usernames = %q, want %q", got, want)
	}
}

func TestSippCounters(t *testing.T) {
	csv := "StartTime;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);\n" +
		"x;0;0;0;0;\n" +
		"y;1;3;0;2;\n"
	if ok, failed := sippCounters(csv); ok != 3 || failed != 2 {
		t.Errorf("sippCounters = %d, %d; want 3, 2", ok, failed)
	}
	if ok, failed := sippCounters(""); ok != 0 || failed != 0 {
		t.Errorf("sippCounters(empty) = %d, %d", ok, failed)
	}
}

func TestRedactArgs(t *testing.T) {
	got := redactArgs([]string{"-au", "u", "-ap", "secret", "-s", "1001"})
	if strings.Contains(strings.Join(got, " "), "secret") {
		t.Errorf("redactArgs left the password: %q", got)
	}
}

func TestNormalizeKamailio(t *testing.T) {
	cfg, err := normalizeKamailio(KamailioConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "127.0.0.1" || cfg.Realm != "asterisk" || cfg.Algorithm != "MD5" || cfg.QOP != "auth" {
		t.Errorf("defaults = %+v", cfg)
	}
	for name, bad := range map[string]KamailioConfig{
		"non-loopback host": {Host: "10.0.0.1"},
		"SHA-512-256":       {Algorithm: "SHA-512-256"},
		"MD5-sess":          {Algorithm: "MD5-sess"},
		"qop list":          {QOP: "auth,auth-int"},
		"newline password":  {Users: map[string]string{"u": "a\nb"}},
		"empty username":    {Users: map[string]string{"": "p"}},
		"quote in username": {Users: map[string]string{`a"b`: "p"}},
		"pipe in realm":     {Realm: "a|b"},
	} {
		if _, err := normalizeKamailio(bad); err == nil {
			t.Errorf("%s: accepted %+v", name, bad)
		}
	}
}

// TestKamailioConfigSyntax renders every variant of the script and has
// Kamailio check it (kamailio -c), which is quick and needs no socket.
func TestKamailioConfigSyntax(t *testing.T) {
	Require(t, "kamailio")
	bin, _ := LookPath("kamailio")
	users := map[string]string{
		"plain":      "pw",
		"we$ird.u-1": `back\slash"and$dollar#hash $var(x) %s`,
		"with space": "p w",
	}
	for name, cfg := range map[string]KamailioConfig{
		"defaults":   {Users: users},
		"sha256":     {Users: users, Algorithm: "SHA-256"},
		"auth-int":   {Users: users, QOP: "auth-int"},
		"no-qop":     {Users: users, QOP: "none"},
		"everything": {Users: users, StaleOnce: true, StrictURI: true, NonceExpire: 2 * time.Second, Realm: "my realm"},
		"no-users":   {},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.Port = 5060
			cfg, err := normalizeKamailio(cfg)
			if err != nil {
				t.Fatal(err)
			}
			script, err := renderKamailio(cfg)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "kamailio.cfg")
			if err := os.WriteFile(path, script, 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, "-c", "-f", path).CombinedOutput()
			if err != nil {
				t.Fatalf("kamailio -c: %v\n%s\n--- script ---\n%s", err, out, script)
			}
		})
	}
}

// recorder is a testing.TB that records Skipf and Fatalf instead of
// stopping the test.
type recorder struct {
	testing.TB
	skipped, fatal string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Skipf(format string, args ...any)  { r.skipped = fmt.Sprintf(format, args...) }
func (r *recorder) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }

func TestRequire(t *testing.T) {
	t.Setenv("CI", "")
	r := &recorder{TB: t}
	Require(r, "no-such-peer-binary")
	if !strings.Contains(r.skipped, "no-such-peer-binary not installed") || !strings.Contains(r.skipped, InstallHint) || r.fatal != "" {
		t.Errorf("without CI: skipped %q, fatal %q", r.skipped, r.fatal)
	}

	t.Setenv("CI", "true")
	r = &recorder{TB: t}
	Require(r, "no-such-peer-binary")
	if !strings.Contains(r.fatal, "no-such-peer-binary") || r.skipped != "" {
		t.Errorf("with CI=true: skipped %q, fatal %q", r.skipped, r.fatal)
	}
}
