package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/proxy/tcpguard"
)

func TestHealthcheckFlag(t *testing.T) {
	var status int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
	defer srv.Close()
	for _, tc := range []struct {
		status, code int
		url          string
	}{
		{200, 0, srv.URL + "/healthz"},
		{204, 0, srv.URL + "/healthz"},
		{503, 1, srv.URL + "/readyz"},
		{200, 1, "http://127.0.0.1:1/healthz"}, // nothing listens on port 1
		{200, 1, "::not a url"},
	} {
		status = tc.status
		code, stdout, stderr := runCmd(t, "-healthcheck", tc.url)
		if code != tc.code {
			t.Errorf("-healthcheck %s (server says %d): exit %d, want %d\nstdout: %s\nstderr: %s", tc.url, tc.status, code, tc.code, stdout, stderr)
		}
	}
}

const opsBase = `
[log]
format = "json"
[[listen]]
transport = "udp"
address = "127.0.0.1:0"
[[upstream]]
name = "pbx-a"
address = "127.0.0.2:5060"
[[upstream]]
name = "pbx-b"
address = "127.0.0.3:5060"
[[credential]]
username = "alice"
password = "Sup3r-Secret-Value"
server = "pbx-a"
realm = "asterisk"
[[client]]
name = "loopback"
networks = ["127.0.0.0/8"]
upstreams = ["*"]
`

func mustParse(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(text), config.WithLookupEnv(func(string) (string, bool) { return "", false }))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return cfg
}

func TestDescribeChanges(t *testing.T) {
	old := mustParse(t, opsBase)
	if got := describeChanges(old, old); len(got) != 0 {
		t.Errorf("no change described as %q", got)
	}
	if got := restartKeys(old, old); len(got) != 0 {
		t.Errorf("no change needs a restart: %q", got)
	}
	changed := strings.NewReplacer(
		`format = "json"`, "level = \"debug\"\nformat = \"text\"",
		`password = "Sup3r-Secret-Value"`, `password = "An0ther-Secret"`,
		"name = \"pbx-b\"\naddress = \"127.0.0.3:5060\"", "name = \"pbx-c\"\naddress = \"127.0.0.4:5060\"",
		`address = "127.0.0.1:0"`, `address = "127.0.0.1:5999"`,
	).Replace(opsBase) + "\n[health]\noptions_interval = \"10s\"\n[admin]\naddress = \"127.0.0.1:0\"\n" +
		"[[credential]]\nusername = \"bob\"\npassword = \"x\"\nserver = \"pbx-c\"\n"
	cur := mustParse(t, changed)

	summary := strings.Join(describeChanges(old, cur), "; ")
	for _, want := range []string{
		"log.level info -> debug",
		"upstreams +pbx-c -pbx-b",
		"credentials 1 added, 1 changed, 0 removed",
		"options_interval=30s down_after=3 up_after=2 -> options_interval=10s",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary %q lacks %q", summary, want)
		}
	}
	for _, secret := range []string{"Sup3r-Secret-Value", "An0ther-Secret", "alice", "bob"} {
		if strings.Contains(summary, secret) {
			t.Errorf("summary names %q: %s", secret, summary)
		}
	}
	if got, want := restartKeys(old, cur), []string{"listen", "admin.address", "log.format"}; !slices.Equal(got, want) {
		t.Errorf("restartKeys = %q, want %q", got, want)
	}
}

func TestErrorList(t *testing.T) {
	_, err := config.Load(writeConfig(t, opsBase+"\n[health]\ndown_after = 0\n[reload]\nwatcher = true\n"))
	got := errorList(err)
	if len(got) != 2 || !strings.Contains(strings.Join(got, "|"), "health.down_after = 0: must be between 1 and 100") ||
		!strings.Contains(strings.Join(got, "|"), "reload.watcher: unknown key") {
		t.Errorf("errorList = %q", got)
	}
	if got := errorList(fmt.Errorf("credentials: %w", errors.New("x"))); len(got) != 1 || got[0] != "credentials: x" {
		t.Errorf("errorList(single) = %q", got)
	}
}

// TestFileWatcher: writing the file, replacing it by rename as config
// management does, and a Kubernetes ConfigMap update (the file is a
// symlink through "..data", which is swapped atomically to a new
// directory) each signal a change, one after the other.
func TestFileWatcher(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "authproxy.toml")
	if err := os.WriteFile(path, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := startFileWatcher(t, path)
	n := 0
	waitChanged(t, w, "a write", func() {
		n++
		_ = os.WriteFile(path, fmt.Appendf(nil, "write %d", n), 0o600)
	})
	waitChanged(t, w, "a rename over the file", func() {
		tmp := filepath.Join(dir, "new.tmp")
		_ = os.WriteFile(tmp, []byte("renamed"), 0o600)
		_ = os.Rename(tmp, path)
	})
}

// TestFileWatcherConfigMapSwap: a file mounted from a ConfigMap is
// dir/authproxy.toml -> ..data/authproxy.toml, ..data -> ..<timestamp>;
// the kubelet writes a new ..<timestamp> directory, points ..data_tmp at
// it, renames ..data_tmp over ..data and removes the old directory. The
// file's own path never changes; the watch still signals each swap.
func TestFileWatcherConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := 0
	swap := func() {
		version++
		ts := fmt.Sprintf("..2026_12_03_%03d", version)
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ts, "authproxy.toml"), fmt.Appendf(nil, "version %d", version), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(ts, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if version > 1 {
			_ = os.RemoveAll(filepath.Join(dir, fmt.Sprintf("..2026_12_03_%03d", version-1)))
		}
	}
	swap()
	path := filepath.Join(dir, "authproxy.toml")
	if err := os.Symlink(filepath.Join("..data", "authproxy.toml"), path); err != nil {
		t.Fatal(err)
	}
	w := startFileWatcher(t, path)
	waitChanged(t, w, "a ConfigMap swap", swap)
	waitChanged(t, w, "a second ConfigMap swap", swap)
	if b, err := os.ReadFile(path); err != nil || !strings.HasPrefix(string(b), "version ") {
		t.Fatalf("the file through the symlinks: %q, %v", b, err)
	}
}

// startFileWatcher runs a fileWatcher on path until the test ends.
func startFileWatcher(t *testing.T, path string) *fileWatcher {
	t.Helper()
	w := newFileWatcher(path, 10*time.Millisecond, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		<-w.done
	})
	go w.run(ctx)
	return w
}

// waitChanged does act and waits for w to signal a change. The watch arms
// at the start of run, asynchronously to the test, so act is repeated
// until the signal comes (a change made before the watch armed is not
// seen); only the first signal after act counts.
func waitChanged(t *testing.T, w *fileWatcher, what string, act func()) {
	t.Helper()
	deadline := time.After(testutil.EventuallyLimit)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	act()
	for {
		select {
		case <-w.changed:
			return
		case <-tick.C:
			act()
		case <-deadline:
			t.Fatalf("no change signalled after %s", what)
		}
	}
}

// TestRun_AdminListener runs the command with [admin] on a free port: the
// endpoints answer while it runs, and the listener is closed once run
// returns.
func TestRun_AdminListener(t *testing.T) {
	cfg := writeConfig(t, opsBase+"\n[admin]\naddress = \"127.0.0.1:0\"\n")
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-config", cfg}, &bytes.Buffer{}, pw)
		pw.Close()
	}()
	dec := json.NewDecoder(pr)
	adminAddr := ""
	for {
		var line map[string]any
		if err := dec.Decode(&line); err != nil {
			cancel()
			t.Fatalf("log ended before ready: %v", err)
		}
		if line["msg"] == "admin listening" {
			adminAddr, _ = line["address"].(string)
		}
		if line["msg"] == "ready" {
			break
		}
	}
	if adminAddr == "" {
		cancel()
		t.Fatal("no admin listening line before ready")
	}
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ready",
		"/metrics": "authproxy_build_info",
		"/status":  `"trunk_registrations": []`,
	} {
		res, err := http.Get("http://" + adminAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s = %d, want 200 with %q:\n%s", path, res.StatusCode, want, body)
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
	if c, err := net.Dial("tcp", adminAddr); err == nil {
		c.Close()
		t.Error("admin listener still open after run returned")
	}
}

func TestRun_AdminPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := writeConfig(t, opsBase+"\n[admin]\naddress = \""+ln.Addr().String()+"\"\n")
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-config", cfg}, &bytes.Buffer{}, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "admin listener") {
		t.Errorf("error does not name the admin listener:\n%s", stderr.String())
	}
}

// TestApplyRuntime: [runtime] values reach the Go runtime; zero values
// leave it alone.
func TestApplyRuntime(t *testing.T) {
	procs, gc, limit := runtime.GOMAXPROCS(0), debug.SetGCPercent(100), debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		runtime.GOMAXPROCS(procs)
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
	})
	attrs := applyRuntime(config.Runtime{MaxProcs: 1, GCPercent: 400, MemoryLimit: 48 << 20})
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS = %d, want 1", got)
	}
	if got := debug.SetGCPercent(400); got != 400 {
		t.Errorf("GC percent = %d, want 400", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 48<<20 {
		t.Errorf("memory limit = %d, want %d", got, 48<<20)
	}
	if want := []any{"gomaxprocs", 1, "gc_percent", 400, "memory_limit", int64(48 << 20)}; !slices.Equal(attrs, want) {
		t.Errorf("attributes %v, want %v", attrs, want)
	}
	applyRuntime(config.Runtime{})
	if runtime.GOMAXPROCS(0) != 1 || debug.SetGCPercent(400) != 400 || debug.SetMemoryLimit(-1) != 48<<20 {
		t.Error("zero [runtime] values changed the runtime")
	}
	cur := *mustParse(t, opsBase)
	cur.Runtime.MaxProcs = 1
	if got := restartKeys(mustParse(t, opsBase), &cur); !slices.Equal(got, []string{"runtime"}) {
		t.Errorf("restartKeys = %q, want [runtime]", got)
	}
}

// TestOnSignals: the first signal cancels (drain), the second exits 1
// without waiting for anything; signals sent back to back are both seen.
func TestOnSignals(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exited := make(chan int, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		onSignals(sigs, cancel, func(code int) { exited <- code })
	}()
	sigs <- syscall.SIGTERM
	sigs <- syscall.SIGINT
	<-done
	if ctx.Err() == nil {
		t.Error("the first signal did not cancel")
	}
	if code := <-exited; code != 1 {
		t.Errorf("exit %d after the second signal, want 1", code)
	}
}

// TestTCPWiring: the [tcp] table reaches the proxy field by field, its
// default message size is the proxy's (one constant for every transport),
// and a change needs a restart.
func TestTCPWiring(t *testing.T) {
	cfg := mustParse(t, opsBase)
	if got, want := cfg.TCP.MaxMessageSize, proxy.MaxMessageSize; got != want {
		t.Errorf("default tcp.max_message_size %d, proxy.MaxMessageSize %d", got, want)
	}
	cfg.TCP = config.TCP{MaxConnections: 1, MaxConnectionsPerSource: 2, IdleTimeout: 3 * time.Second,
		MessageTimeout: 4 * time.Second, HandshakeTimeout: 5 * time.Second, MaxMessageSize: 6000}
	pcfg, err := proxyConfig(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := tcpguard.Limits{MaxConns: 1, MaxConnsPerSource: 2, IdleTimeout: 3 * time.Second,
		MessageTimeout: 4 * time.Second, HandshakeTimeout: 5 * time.Second, MaxMessageSize: 6000}
	if pcfg.TCP != want {
		t.Errorf("proxy TCP limits %+v, want %+v", pcfg.TCP, want)
	}
	if got := restartKeys(mustParse(t, opsBase), cfg); !slices.Equal(got, []string{"tcp"}) {
		t.Errorf("restartKeys = %q, want [tcp]", got)
	}
}

// TestProxyConfigWiring: every key of [proxy], [log] sip_trace, [dns],
// [health] and [limits] reaches the proxy's configuration with its value,
// none left at a default.
func TestProxyConfigWiring(t *testing.T) {
	cfg := mustParse(t, opsBase+`
[proxy]
max_challenges = 7
shutdown_grace = "7s"
timer_c = "4m"
dialog_idle_timeout = "3h"
failover_timeout = "2s"
[dns]
servers = ["192.0.2.53:5353"]
min_ttl = "20s"
max_ttl = "2h"
timeout = "3s"
[health]
options_interval = "9s"
down_after = 4
up_after = 5
[limits]
rate = 11
burst = 12
max_per_source = 13
max_total = 14
auth_failures = 15
block_for = "16s"
max_sources = 17
deny = "drop"
user_auth_failures = 18
user_block_for = "19s"
exempt_networks = ["203.0.113.10"]
`)
	cfg.Log.SIPTrace = true
	pcfg, err := proxyConfig(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		key       string
		got, want any
	}{
		{"proxy.max_challenges", pcfg.MaxChallenges, 7},
		{"proxy.shutdown_grace", pcfg.ShutdownGrace, 7 * time.Second},
		{"proxy.timer_c", pcfg.TimerC, 4 * time.Minute},
		{"proxy.dialog_idle_timeout", pcfg.DialogIdleTimeout, 3 * time.Hour},
		{"proxy.failover_timeout", pcfg.FailoverTimeout, 2 * time.Second},
		{"log.sip_trace", pcfg.SIPTrace, true},
		{"dns.servers", fmt.Sprint(pcfg.DNS.Servers), "[192.0.2.53:5353]"},
		{"dns.min_ttl", pcfg.DNS.MinTTL, 20 * time.Second},
		{"dns.max_ttl", pcfg.DNS.MaxTTL, 2 * time.Hour},
		{"dns.timeout", pcfg.DNS.Timeout, 3 * time.Second},
		{"health.options_interval", pcfg.Health.Interval, 9 * time.Second},
		{"health.down_after", pcfg.Health.DownAfter, 4},
		{"health.up_after", pcfg.Health.UpAfter, 5},
		{"limits.rate", pcfg.Limits.Rate, 11.0},
		{"limits.burst", pcfg.Limits.Burst, 12},
		{"limits.max_per_source", pcfg.Limits.MaxPerSource, 13},
		{"limits.max_total", pcfg.Limits.MaxTotal, 14},
		{"limits.auth_failures", pcfg.Limits.AuthFailures, 15},
		{"limits.block_for", pcfg.Limits.BlockFor, 16 * time.Second},
		{"limits.max_sources", pcfg.Limits.MaxSources, 17},
		{"limits.deny", pcfg.Limits.Drop, true},
		{"limits.user_auth_failures", pcfg.Limits.UserAuthFailures, 18},
		{"limits.user_block_for", pcfg.Limits.UserBlockFor, 19 * time.Second},
		{"limits.exempt_networks", fmt.Sprint(pcfg.Limits.Exempt), "[203.0.113.10/32]"},
	} {
		if c.got != c.want {
			t.Errorf("%s reaches the proxy as %v, want %v", c.key, c.got, c.want)
		}
	}
}

// TestCaptureWiring: the [capture] table reaches the proxy key by key
// (redact = false as KeepCredentials), and a change needs a restart.
func TestCaptureWiring(t *testing.T) {
	cfg := mustParse(t, opsBase+`
[capture]
hep = "udp:192.0.2.9:9061"
redact = false
agent_id = 77
auth_key = "hep-key"
`)
	pcfg, err := proxyConfig(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := proxy.Capture{HEP: "192.0.2.9:9061", AgentID: 77, AuthKey: "hep-key", KeepCredentials: true}
	if pcfg.Capture != want {
		t.Errorf("proxy capture %+v, want %+v", pcfg.Capture, want)
	}
	def, err := proxyConfig(mustParse(t, opsBase), nil)
	if err != nil {
		t.Fatal(err)
	}
	if def.Capture != (proxy.Capture{}) {
		t.Errorf("default proxy capture %+v, want off and redacting", def.Capture)
	}
	if got := restartKeys(mustParse(t, opsBase), cfg); !slices.Equal(got, []string{"capture"}) {
		t.Errorf("restartKeys = %q, want [capture]", got)
	}
}
