package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// systemdUnit returns the directives of deploy/authproxy.service's
// [Service] section, each with its values in order.
func systemdUnit(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "authproxy.service"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("authproxy.service: %q is no directive", line)
			}
			out[k] = append(out[k], v)
		}
	}
	return out
}

// TestSystemdUnit holds deploy/authproxy.service to what the README says
// of it: the file validated (-check) before starting and before each
// reload, a reload by SIGHUP, a stop that waits longer than the default
// shutdown_grace, restarts on failure, the user authproxy, a read-only
// file system and no new privileges, password_env secrets from
// /etc/authproxy/secrets.env.
func TestSystemdUnit(t *testing.T) {
	u := systemdUnit(t)
	const conf = "-config /etc/authproxy/authproxy.toml"
	one := func(k string) string {
		t.Helper()
		if len(u[k]) != 1 {
			t.Errorf("%s given %d times, want once", k, len(u[k]))
			return ""
		}
		return u[k][0]
	}
	if v := one("ExecStartPre"); !strings.HasSuffix(v, "authproxy -check "+conf) {
		t.Errorf("ExecStartPre=%s: the file is not validated before starting", v)
	}
	if v := one("ExecStart"); !strings.HasSuffix(v, "authproxy "+conf) {
		t.Errorf("ExecStart=%s", v)
	}
	if r := u["ExecReload"]; len(r) != 2 || !strings.HasSuffix(r[0], "authproxy -check "+conf) || !strings.HasSuffix(r[1], "kill -HUP $MAINPID") {
		t.Errorf("ExecReload=%q: want -check, then SIGHUP", r)
	}
	if v := one("KillSignal"); v != "SIGTERM" {
		t.Errorf("KillSignal=%s, want SIGTERM (a graceful stop)", v)
	}
	stop, err := strconv.Atoi(one("TimeoutStopSec"))
	if err != nil || time.Duration(stop)*time.Second <= mustParse(t, opsBase).Proxy.ShutdownGrace {
		t.Errorf("TimeoutStopSec=%d (%v): want longer than the default shutdown_grace", stop, err)
	}
	for k, want := range map[string]string{
		"Restart":         "on-failure",
		"User":            "authproxy",
		"Group":           "authproxy",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"EnvironmentFile": "-/etc/authproxy/secrets.env",
		"StateDirectory":  "authproxy",
		"Environment":     "AUTHPROXY_STATE__DIR=/var/lib/authproxy",
	} {
		if v := one(k); v != want {
			t.Errorf("%s=%s, want %s", k, v, want)
		}
	}
	if fams := strings.Fields(one("RestrictAddressFamilies")); !slices.Contains(fams, "AF_INET") || !slices.Contains(fams, "AF_INET6") {
		t.Errorf("RestrictAddressFamilies=%q: SIP needs AF_INET and AF_INET6", fams)
	}
}
