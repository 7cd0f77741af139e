package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHelp: -help says where the configuration comes from, how the
// environment overrides it, what the signals do and what the exit codes
// mean, and lists every flag; on stdout, with status 0.
func TestHelp(t *testing.T) {
	for _, arg := range []string{"-help", "--help", "-h"} {
		code, stdout, stderr := runCmd(t, arg)
		if code != 0 || stderr != "" {
			t.Fatalf("%s: exit %d, stderr %q", arg, code, stderr)
		}
		for _, want := range []string{
			"Usage: authproxy", "/etc/authproxy/authproxy.toml", "embedded config.example.toml",
			"AUTHPROXY_<TABLE>__<KEY>", "AUTHPROXY_LOG__LEVEL=debug", "password_env", "NOTIFY_SOCKET",
			"SIGHUP", "SIGTERM, SIGINT", "proxy.shutdown_grace", "Exit status", "  0  ", "  1  ", "  2  ",
			"-config file", "-check", "-skip-secrets", "-allow-sample-secrets", "-version", "-healthcheck URL",
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("%s: output lacks %q:\n%s", arg, want, stdout)
			}
		}
	}
}

// TestCheckReports covers what -check prints for a refused file: every
// error on its own line with the same indent and the same "load FILE: "
// prefix; -skip-secrets; unknown environment overrides.
func TestCheckReports(t *testing.T) {
	const base = `
[[listen]]
address = "127.0.0.1:5060"
[[upstream]]
name = "pbx-a"
address = "127.0.0.2:5060"
[[client]]
name = "local"
networks = ["127.0.0.0/8"]
upstreams = ["*"]
`
	secretsOutside := writeConfig(t, base+`
[[credential]]
username = "alice"
password_env = "AUTHPROXY_TEST_UNSET_PASSWORD"
server = "pbx-a"
[[credential]]
username = "bob"
password_file = "missing-password.txt"
server = "pbx-a"
realm = "asterisk"
`)
	manyErrors := writeConfig(t, base+`
[log]
level = "loud"
[proxy]
max_challenges = 0
[[credential]]
username = "carol"
ha1 = "0123456789abcdef0123456789abcdef"
[[registration]]
upstream = "pbx-a"
aor = "sip:trunk@pbx-a"
target = "pbx-a"
`)
	warned := writeConfig(t, strings.Replace(base, `upstreams = ["*"]`, `upstreams = ["pbx-a"]`, 1)+`
[log]
sip_trace = true
[[upstream]]
name = "pbx-b"
address = "127.0.0.3:5060"
[[credential]]
username = "a"
password = "p"
[[credential]]
username = "b"
password = "q"
server = "pbx-b"
`)
	for _, tc := range []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		stderr []string // lines, each after the header
	}{
		{name: "secrets missing", args: []string{"-check", "-config", secretsOutside}, code: 1, stderr: []string{
			"credential[0].password_env", "credential[1].password_file"}},
		{name: "skip-secrets", args: []string{"-check", "-skip-secrets", "-config", secretsOutside}, code: 0},
		{name: "every line prefixed", args: []string{"-check", "-config", manyErrors}, code: 1, stderr: []string{
			`log.level = "loud"`, "proxy.max_challenges = 0", "credential[0].realm: is required with an ha1 secret",
			`registration[0].target = "pbx-a": is the name of upstream "pbx-a"`}},
		{name: "warnings", args: []string{"-check", "-skip-secrets", "-config", warned}, code: 0,
			stderr: []string{"authproxy: warning: log.sip_trace = true", `authproxy: warning: upstream[1] "pbx-b": no [[client]] group lists it`}},
		{name: "unknown override", env: map[string]string{"AUTHPROXY_LOG__LEVL": "debug"}, args: []string{"-check", "-skip-secrets", "-config", secretsOutside},
			code: 1, stderr: []string{"log.levl (from $AUTHPROXY_LOG__LEVL): unknown environment override (did you mean $AUTHPROXY_LOG__LEVEL?)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runCmd(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			if tc.code == 0 {
				if !strings.Contains(stdout, ": ok: 1 listener, ") || !strings.Contains(stdout, " 2 credentials, 1 client group, 0 client users, 0 registrations") {
					t.Errorf("stdout %q", stdout)
				}
				for _, want := range tc.stderr {
					if !strings.Contains(stderr, want) {
						t.Errorf("stderr lacks %q:\n%s", want, stderr)
					}
				}
				return
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			path := tc.args[len(tc.args)-1]
			if want := "authproxy: invalid configuration (" + path + "):"; lines[0] != want {
				t.Errorf("header %q, want %q", lines[0], want)
			}
			if len(lines)-1 != len(tc.stderr) {
				t.Errorf("%d error lines, want %d:\n%s", len(lines)-1, len(tc.stderr), stderr)
			}
			for _, l := range lines[1:] {
				if !strings.HasPrefix(l, "  load "+path+": ") || strings.HasPrefix(l, "   ") {
					t.Errorf("line %q lacks the indent and load prefix", l)
				}
			}
			for _, want := range tc.stderr {
				if !strings.Contains(stderr, "  load "+path+": "+want) {
					t.Errorf("no line %q:\n%s", want, stderr)
				}
			}
		})
	}
}

// TestEmbeddedExampleWarns: a start without -config says at once that it
// runs the demo configuration.
func TestEmbeddedExampleWarns(t *testing.T) {
	t.Setenv("AUTHPROXY_ADMIN__ADDRESS", "127.0.0.1:0")
	t.Setenv("AUTHPROXY_LOG__FORMAT", "json")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stop as soon as it started, or failed to bind 5060
	var out bytes.Buffer
	var errb lockedBuffer // sipgo's goroutines may still log after run returns
	run(ctx, nil, &out, &errb)
	if log := errb.String(); !strings.Contains(log, `"level":"WARN","msg":"running on the embedded example configuration`) {
		t.Errorf("no WARN line about the embedded example:\n%s", log)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers and readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestReloadRefusesSampleSecrets: a reload to a file with the example's
// passwords is rejected as a start would be, unless they are allowed.
func TestReloadRefusesSampleSecrets(t *testing.T) {
	path := writeConfig(t, `
[[listen]]
address = "127.0.0.1:5060"
[[upstream]]
name = "pbx-a"
address = "127.0.0.2:5060"
[[client]]
name = "local"
networks = ["127.0.0.0/8"]
upstreams = ["*"]
[[credential]]
username = "x"
password = "office-example-password"
`)
	d := &daemon{path: path}
	if _, err := d.load(); err == nil || !strings.Contains(err.Error(), "credential[0]") {
		t.Errorf("load: %v, want the sample password refused", err)
	}
	d.allowSamples = true
	if _, err := d.load(); err != nil {
		t.Errorf("load with samples allowed: %v", err)
	}
}

// TestNotifier: the sd_notify datagrams, to a socket path and to an
// abstract address.
func TestNotifier(t *testing.T) {
	for _, name := range []string{filepath.Join(t.TempDir(), "notify.sock"), "@authproxy-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)} {
		t.Run(name[:1], func(t *testing.T) {
			conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			n := newNotifier(name, slog.New(slog.DiscardHandler))
			before := monotonicUsec()
			n.ready("serving")
			n.reloading()
			n.stopping()
			var got []string
			buf := make([]byte, 4096)
			for range 3 {
				k, err := conn.Read(buf)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(buf[:k]))
			}
			if got[0] != "READY=1\nSTATUS=serving" || got[2] != "STOPPING=1\nSTATUS=draining" {
				t.Errorf("datagrams %q", got)
			}
			f := strings.Split(got[1], "\n")
			usec, err := strconv.ParseInt(strings.TrimPrefix(f[1], "MONOTONIC_USEC="), 10, 64)
			if f[0] != "RELOADING=1" || err != nil || usec < before || usec > monotonicUsec() {
				t.Errorf("reloading datagram %q (CLOCK_MONOTONIC was %d before)", got[1], before)
			}
		})
	}
	if newNotifier("", nil) != nil {
		t.Error("a notifier without NOTIFY_SOCKET")
	}
	var none *notifier
	none.ready("x") // no socket: nothing, no panic
}
