package e2e

// Operations tests against the built binary: reloads by SIGHUP and by
// file watching, an invalid reload keeping the running configuration, and
// SIGTERM draining requests in flight before a clean exit.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/fakepbx"
)

// opsBinary is a running authproxy binary with the addresses it logged.
type opsBinary struct {
	*Authproxy
	sipAddr map[string]string // "udp"/"tcp" -> bound address
	admin   string            // "http://host:port"
	client  *sipgo.Client
}

// opsBinaryTOML is a configuration on free loopback ports with the admin
// listener on, pbx-a at pbxAddr answered as alice with password, and
// extra appended (more tables). Limits are off: the tests send from one
// source.
func opsBinaryTOML(pbxAddr, password, extra string) string {
	return fmt.Sprintf(`[log]
level = "info"
format = "json"

[proxy]
shutdown_grace = "5s"

[admin]
address = "127.0.0.1:0"

[limits]
rate = 0
max_per_source = 0
auth_failures = 0

[[listen]]
transport = "udp"
address = "127.0.0.1:0"

[[listen]]
transport = "tcp"
address = "127.0.0.1:0"

[[upstream]]
name = "pbx-a"
address = %s
domains = ["pbx-a.example.com"]

[[credential]]
username = "alice"
password = %s
server = "pbx-a"
realm = "asterisk"
%s`, tomlString(pbxAddr), tomlString(password), extra)
}

func startOpsBinary(t *testing.T, toml string) *opsBinary {
	t.Helper()
	return startOpsBinaryUnder(t, toml, nil)
}

// startOpsBinaryUnder is startOpsBinary with the binary run under wrap
// (see startAuthproxy).
func startOpsBinaryUnder(t *testing.T, toml string, wrap []string) *opsBinary {
	t.Helper()
	a := startAuthproxy(t, toml, wrap)
	b := &opsBinary{Authproxy: a, sipAddr: map[string]string{}}
	for _, line := range strings.Split(a.Logs(), "\n") {
		var rec struct {
			Msg, Transport, Address string
		}
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		switch rec.Msg {
		case "listening":
			b.sipAddr[rec.Transport] = rec.Address
		case "admin listening":
			b.admin = "http://" + rec.Address
		}
	}
	if b.sipAddr["udp"] == "" || b.admin == "" {
		t.Fatalf("no listening or admin address in the log:\n%s", a.Logs())
	}
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("e2e-ops-binary"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ua.Close() })
	b.client, err = sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// send sends c over UDP and returns the final status.
func (b *opsBinary) send(t *testing.T, c clientRequest) int {
	t.Helper()
	res, err := sendRequest(b.client, b.sipAddr["udp"], "udp", c.build(t))
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode
}

func opsMessage() clientRequest {
	return clientRequest{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}
}

// logRecord is one JSON log line of the binary.
type logRecord map[string]any

// waitLog waits for the n-th log line (1-based) whose msg is msg and
// returns it.
func (b *opsBinary) waitLog(t *testing.T, msg string, n int) logRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	seen := 0
	var rec logRecord
	_, err := b.proc.WaitLine(ctx, func(line string) bool {
		if !strings.Contains(line, msg) {
			return false
		}
		var r logRecord
		if json.Unmarshal([]byte(line), &r) != nil || r["msg"] != msg {
			return false
		}
		seen++
		rec = r
		return seen == n
	})
	if err != nil {
		t.Fatalf("no log line %q #%d: %v\n%s", msg, n, err, b.Logs())
	}
	return rec
}

func (b *opsBinary) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(b.proc.Pid(), sig); err != nil {
		t.Fatalf("kill %v: %v", sig, err)
	}
}

// rewrite replaces the configuration file the way config management
// does: write a temporary file, then rename it over the old one.
func (b *opsBinary) rewrite(t *testing.T, toml string) {
	t.Helper()
	if !strings.Contains(toml, "[[client]]") {
		toml += "\n[[client]]\nname = \"loopback\"\nnetworks = [\"127.0.0.0/8\"]\nupstreams = [\"*\"]\n"
	}
	tmp := filepath.Join(filepath.Dir(b.ConfigPath()), ".authproxy.toml.tmp")
	if err := os.WriteFile(tmp, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, b.ConfigPath()); err != nil {
		t.Fatal(err)
	}
}

// TestOpsBinaryReloadSIGHUP: a credential change applied by SIGHUP takes
// effect for the next request; an invalid file is rejected with its
// reasons logged and the running configuration keeps serving; a listener
// change is reported as needing a restart.
func TestOpsBinaryReloadSIGHUP(t *testing.T) {
	pbx := fakepbx.Start(t, fakepbx.Config{Name: "pbx-a", Host: "127.0.0.2", Accounts: map[string]string{"alice": alicePassword}})
	b := startOpsBinary(t, opsBinaryTOML(pbx.Addr(), "wrong-password", ""))

	if got := b.send(t, opsMessage()); got != 407 {
		t.Fatalf("with the wrong password: %d, want the upstream's 407 relayed", got)
	}

	// The right password, and debug logging.
	b.rewrite(t, strings.Replace(opsBinaryTOML(pbx.Addr(), alicePassword, ""), `level = "info"`, `level = "debug"`, 1))
	b.signal(t, syscall.SIGHUP)
	rec := b.waitLog(t, "configuration reloaded", 1)
	changes, _ := rec["changes"].(string)
	for _, want := range []string{"log.level info -> debug", "credentials 0 added, 1 changed, 0 removed"} {
		if !strings.Contains(changes, want) {
			t.Errorf("reload summary %q lacks %q", changes, want)
		}
	}
	if got := b.send(t, opsMessage()); got != 200 {
		t.Fatalf("after the reload: %d, want 200", got)
	}
	if !strings.Contains(b.Logs(), `"level":"DEBUG"`) {
		t.Error("log level not switched to debug")
	}

	// An invalid file: rejected whole, the reasons logged, alice still works.
	b.rewrite(t, opsBinaryTOML(pbx.Addr(), "third-password", "\n[health]\ndown_after = 0\n[reload]\nwatcher = true\n"))
	b.signal(t, syscall.SIGHUP)
	rec = b.waitLog(t, "configuration reload rejected; the running configuration stays", 1)
	errs := fmt.Sprint(rec["errors"])
	for _, want := range []string{"health.down_after", "reload.watcher"} {
		if !strings.Contains(errs, want) {
			t.Errorf("rejection %q does not name %s", errs, want)
		}
	}
	if strings.Contains(b.Logs(), "third-password") || strings.Contains(b.Logs(), alicePassword) {
		t.Error("a password reached the log")
	}
	if got := b.send(t, opsMessage()); got != 200 {
		t.Fatalf("after the rejected reload: %d, want 200 (old configuration kept)", got)
	}

	// A listener change: the rest applies, the listener needs a restart.
	b.rewrite(t, strings.Replace(opsBinaryTOML(pbx.Addr(), alicePassword, ""), `transport = "tcp"
address = "127.0.0.1:0"
`, `transport = "tcp"
address = "127.0.0.1:0"
advertise = "sip.example.com"
`, 1))
	b.signal(t, syscall.SIGHUP)
	rec = b.waitLog(t, "configuration reloaded; some changes need a restart to take effect", 1)
	if need := fmt.Sprint(rec["restart_needed"]); !strings.Contains(need, "listen") {
		t.Errorf("restart_needed = %s, want listen", need)
	}

	code, body := httpGet(t, b.admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	ms := metricsSnapshot(parseExposition(t, body))
	expectMetric(t, ms, "authproxy_config_reloads_total", lbl{"result": "ok"}, 1)
	expectMetric(t, ms, "authproxy_config_reloads_total", lbl{"result": "rejected"}, 1)
	expectMetric(t, ms, "authproxy_config_reloads_total", lbl{"result": "restart-required"}, 1)
	expectMetric(t, ms, "authproxy_auth_failures_total", lbl{"upstream": "pbx-a", "reason": "rejected"}, 1)
}

// TestOpsBinaryReloadWatch: with reload.watch, replacing the file reloads
// it (once, after the debounce) without a signal.
func TestOpsBinaryReloadWatch(t *testing.T) {
	pbx := fakepbx.Start(t, fakepbx.Config{Name: "pbx-a", Host: "127.0.0.2", Accounts: map[string]string{"alice": alicePassword}})
	watch := "\n[reload]\nwatch = true\n"
	b := startOpsBinary(t, opsBinaryTOML(pbx.Addr(), alicePassword, watch))
	b.waitLog(t, "watching the configuration file", 1)
	if got := b.send(t, opsMessage()); got != 200 {
		t.Fatalf("before: %d", got)
	}
	b.rewrite(t, opsBinaryTOML(pbx.Addr(), "rotated-away", watch))
	rec := b.waitLog(t, "configuration reloaded", 1)
	if rec["trigger"] != "file changed" {
		t.Errorf("trigger %v, want file changed", rec["trigger"])
	}
	if got := b.send(t, opsMessage()); got != 407 {
		t.Fatalf("after the watched change: %d, want 407 (the new, wrong password)", got)
	}
}

// TestOpsBinarySIGTERMDrains: SIGTERM lets the request in flight finish,
// answers new INVITEs 503 meanwhile, keeps /healthz up and /readyz down
// while draining, then exits 0.
func TestOpsBinarySIGTERMDrains(t *testing.T) {
	r := startResponder(t, "127.0.0.9")
	r.delay.Store(int64(time.Second))
	toml := fmt.Sprintf(`[log]
format = "json"
[proxy]
shutdown_grace = "5s"
[admin]
address = "127.0.0.1:0"
[[listen]]
transport = "udp"
address = "127.0.0.1:0"
[[upstream]]
name = "slow"
address = %s
default = true
`, tomlString(r.addr()))
	b := startOpsBinary(t, toml)

	type result struct {
		res *sip.Response
		err error
	}
	inFlight := make(chan result, 1)
	req := clientRequest{Method: sip.MESSAGE, RequestURI: "sip:1@slow.example.com", FromUser: "1001"}.build(t)
	go func() {
		res, err := sendRequest(b.client, b.sipAddr["udp"], "udp", req)
		inFlight <- result{res, err}
	}()
	select {
	case <-r.messages:
	case <-time.After(5 * time.Second):
		t.Fatal("the MESSAGE never reached the upstream")
	}

	b.signal(t, syscall.SIGTERM)
	b.waitLog(t, "shutting down", 1)
	// "shutting down" is logged as draining starts; a new INVITE is
	// refused from then on (retried in case it raced the log line).
	got := 0
	for range 5 {
		inv := clientRequest{Method: sip.INVITE, RequestURI: "sip:2@slow.example.com", FromUser: "1001"}.build(t)
		res, err := sendRequest(b.client, b.sipAddr["udp"], "udp", inv)
		if err != nil {
			t.Fatal(err)
		}
		if got = res.StatusCode; got == 503 {
			if ra := res.GetHeader("Retry-After"); ra == nil {
				t.Error("503 without Retry-After")
			}
			break
		}
	}
	if got != 503 {
		t.Fatalf("new INVITE while draining: %d, want 503", got)
	}
	if code, _ := httpGet(t, b.admin+"/healthz"); code != 200 {
		t.Errorf("/healthz while draining: %d, want 200", code)
	}
	if code, body := httpGet(t, b.admin+"/readyz"); code != 503 || !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz while draining: %d %q, want 503 shutting down", code, body)
	}

	res := <-inFlight
	if res.err != nil || res.res.StatusCode != 200 {
		t.Fatalf("request in flight at SIGTERM: %v %v, want 200", res.res, res.err)
	}
	select {
	case <-b.proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("authproxy did not exit after draining")
	}
	if err := b.proc.Err(); err != nil {
		t.Fatalf("exit: %v, want status 0\n%s", err, b.Logs())
	}
	if !strings.Contains(b.Logs(), `"msg":"stopped"`) {
		t.Error("no stopped line")
	}
}
