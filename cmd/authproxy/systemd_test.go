package main

import (
	"bufio"
	"os"
	"os/exec"
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
// of it: Type=notify (authproxy sends READY=1, RELOADING=1, STOPPING=1:
// notify.go), the file validated (-check) before starting and before each
// reload, a reload by SIGHUP, a stop that waits longer than the default
// shutdown_grace, restarts on failure, the user authproxy, a read-only
// file system, no privileges or capabilities, a system call filter,
// password_env secrets from /etc/authproxy/secrets.env.
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
		"Type":                    "notify",
		"NotifyAccess":            "main", // the datagrams come from the main process only
		"Restart":                 "on-failure",
		"User":                    "authproxy",
		"Group":                   "authproxy",
		"EnvironmentFile":         "-/etc/authproxy/secrets.env",
		"UMask":                   "0077",
		"NoNewPrivileges":         "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelLogs":       "yes",
		"ProtectControlGroups":    "yes",
		"ProtectClock":            "yes",
		"ProtectHostname":         "yes",
		"ProtectProc":             "invisible",
		"RestrictNamespaces":      "yes",
		"RestrictRealtime":        "yes",
		"RestrictSUIDSGID":        "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
		"SystemCallErrorNumber":   "EPERM", // a call the filter misses fails, not kills
		"StateDirectory":          "authproxy",
		"Environment":             "AUTHPROXY_STATE__DIR=/var/lib/authproxy",
	} {
		if v := one(k); v != want {
			t.Errorf("%s=%s, want %s", k, v, want)
		}
	}
	if fams := strings.Fields(one("RestrictAddressFamilies")); !slices.Contains(fams, "AF_INET") || !slices.Contains(fams, "AF_INET6") || !slices.Contains(fams, "AF_UNIX") {
		t.Errorf("RestrictAddressFamilies=%q: SIP needs AF_INET and AF_INET6, $NOTIFY_SOCKET AF_UNIX", fams)
	}
	if f := u["SystemCallFilter"]; !slices.Equal(f, []string{"@system-service", "~@privileged"}) {
		t.Errorf("SystemCallFilter=%q", f)
	}
}

// TestSystemdUnitVerifies runs systemd-analyze verify on the unit, with
// the binary's path pointing at an executable that exists here: no
// unknown directive, no bad value. It skips where systemd is not
// installed.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "authproxy.service"))
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "authproxy.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(data), "/usr/local/bin/authproxy", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), analyze, "verify", unit).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
