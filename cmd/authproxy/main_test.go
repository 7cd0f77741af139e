package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/dnstest"
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
		{name: "check embedded example", args: []string{"-check"}, code: 0,
			stdout: []string{"embedded config.example.toml: ok: 3 listeners, 2 upstreams, 0 groups, 3 credentials, 1 client group, 0 client users, 0 registrations"},
			stderr: []string{"warning: running on the embedded example configuration"}},
		{name: "check example file refuses its sample passwords", args: []string{"-check", "-config", "../../config.example.toml"}, code: 1,
			stderr:    []string{"sample secrets refused", `credential[0] = username="alice": has a sample password of config.example.toml`, "credential[2]", "-allow-sample-secrets"},
			notStderr: []string{"example-password"}},
		{name: "check example file, samples allowed", args: []string{"-check", "-allow-sample-secrets", "-config", "../../config.example.toml"}, code: 0, stdout: []string{"ok:"}},
		{name: "skip-secrets without check", args: []string{"-skip-secrets"}, code: 2, stderr: []string{"-skip-secrets applies only to -check"}},
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

// TestDeps holds the package dependency arrows in place (docs/design.md):
// credentials imports nothing of ours, config never imports proxy or sipgo,
// proxy never imports config; admin knows HTTP only; metrics never reads
// the configuration.
func TestDeps(t *testing.T) {
	const mod = "github.com/authproxy/authproxy"
	for _, tc := range []struct {
		pkg       string
		forbidden []string
	}{
		{mod + "/credentials", []string{mod + "/", "github.com/"}},
		{mod + "/config", []string{mod + "/proxy", mod + "/cmd", "github.com/emiago/sipgo"}},
		{mod + "/proxy", []string{mod + "/config", mod + "/cmd"}},
		// The resolver is a leaf: DNS (miekg/dns) only, no SIP.
		{mod + "/proxy/resolve", []string{mod + "/", "github.com/emiago/sipgo"}},
		// The admin server knows HTTP only (cmd/authproxy adapts the proxy
		// to it), and the metrics package never reads the configuration.
		{mod + "/internal/admin", []string{mod + "/", "github.com/"}},
		{mod + "/internal/metrics", []string{mod + "/config", mod + "/cmd"}},
		// The state store knows keys, values and leases: nothing of SIP,
		// the configuration or the proxy.
		{mod + "/state", []string{mod + "/", "github.com/emiago/sipgo"}},
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

// TestPermissionWarning: a configuration others can read is reported.
func TestPermissionWarning(t *testing.T) {
	p := writeConfig(t, "")
	if w := permissionWarning(p); w != "" {
		t.Fatalf("mode 0600 warned: %s", w)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if w := permissionWarning(p); !strings.Contains(w, "0644") {
		t.Fatalf("mode 0644: warning %q", w)
	}
}

// TestProxyConfigLoadsTLS: certificate, key and CA bundle files named by
// the configuration are loaded into the proxy's TLS settings.
func TestProxyConfigLoadsTLS(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for name, data := range map[string][]byte{
		"cert.pem": certPEM, "ca.pem": certPEM, "bad-ca.pem": []byte("not pem\n"),
		"key.pem": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	text := func(ca string) string {
		return `
[[listen]]
transport = "tls"
address = "127.0.0.1:0"
cert_file = "cert.pem"
key_file = "key.pem"
[[upstream]]
name = "secure"
address = "127.0.0.2"
transport = "tls"
ca_file = "` + ca + `"
server_name = "pbx.test"
[[credential]]
username = "u"
password = "p"
[[client]]
name = "local"
networks = ["127.0.0.0/8"]
upstreams = ["*"]
`
	}
	cfg, err := config.Parse([]byte(text("ca.pem")), config.WithBaseDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	store, _ := credentials.NewStore(cfg.Credentials)
	pcfg, err := proxyConfig(cfg, store)
	if err != nil {
		t.Fatal(err)
	}
	if l := pcfg.Listeners[0]; l.TLS == nil || len(l.TLS.Certificates) != 1 {
		t.Fatalf("listener TLS = %+v", l.TLS)
	}
	if u := pcfg.Upstreams[0]; u.RootCAs == nil || u.ServerName != "pbx.test" || u.Address != "127.0.0.2:5061" {
		t.Fatalf("upstream = %+v", u)
	}
	cfg, err = config.Parse([]byte(text("bad-ca.pem")), config.WithBaseDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proxyConfig(cfg, store); err == nil || !strings.Contains(err.Error(), "upstream[0].ca_file") {
		t.Fatalf("bad CA bundle: err = %v", err)
	}
}

// TestRun_CheckWarnsUnresolvedNames: -check resolves upstream names through
// [dns] and reports one that does not resolve as a warning (key, value,
// why), not an error: the configuration is valid and the exit status 0.
func TestRun_CheckWarnsUnresolvedNames(t *testing.T) {
	z := dnstest.New(t)
	z.Set("pbx.sip.test. 60 IN A 127.0.0.2")
	cfg := writeConfig(t, `
[dns]
servers = ["`+z.Addr()+`"]
timeout = "1s"
[[listen]]
address = "127.0.0.1:5060"
[[upstream]]
name = "resolves"
address = "pbx.sip.test:5060"
[[upstream]]
name = "missing"
address = "nowhere.sip.test"
[[upstream]]
name = "ip"
address = "127.0.0.3"
[[credential]]
username = "alice"
password = "x"
[[client]]
name = "lan"
networks = ["127.0.0.0/8"]
upstreams = ["*"]
`)
	code, stdout, stderr := runCmd(t, "-check", "-config", cfg)
	if code != 0 || !strings.Contains(stdout, "ok:") {
		t.Fatalf("exit %d, stdout %q, want 0 and ok", code, stdout)
	}
	if !strings.Contains(stderr, `warning: upstream[1].address = "nowhere.sip.test": does not resolve now`) {
		t.Errorf("no warning for the name that does not resolve:\n%s", stderr)
	}
	if strings.Contains(stderr, "upstream[0]") || strings.Contains(stderr, "upstream[2]") {
		t.Errorf("warning for an address that resolves:\n%s", stderr)
	}
}
