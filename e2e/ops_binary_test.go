package e2e

// Operations tests against the built binary: reloads by SIGHUP and by
// file watching, an invalid reload keeping the running configuration, and
// SIGTERM draining requests in flight before a clean exit.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
)

// opsBinary is a running authproxy binary with the addresses it logged.
type opsBinary struct {
	*peers.Authproxy
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
// (see peers.AuthproxyConfig.Wrap).
func startOpsBinaryUnder(t *testing.T, toml string, wrap []string) *opsBinary {
	t.Helper()
	a := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: toml, Wrap: wrap})
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
func (b *opsBinary) send(t *testing.T, c siptest.Request) int {
	t.Helper()
	res, err := siptest.Send(b.client, b.sipAddr["udp"], "udp", c.Build(t))
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode
}

func opsMessage() siptest.Request {
	return siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}
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
	_, err := b.Process().WaitLine(ctx, func(line string) bool {
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
	if err := syscall.Kill(b.Process().Pid(), sig); err != nil {
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

	code, body := testutil.HTTPGet(t, b.admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	ms := testutil.Metrics(testutil.ParseMetrics(t, body))
	testutil.ExpectMetric(t, ms, "authproxy_config_reloads_total", testutil.Labels{"result": "ok"}, 1)
	testutil.ExpectMetric(t, ms, "authproxy_config_reloads_total", testutil.Labels{"result": "rejected"}, 1)
	testutil.ExpectMetric(t, ms, "authproxy_config_reloads_total", testutil.Labels{"result": "restart-required"}, 1)
	testutil.ExpectMetric(t, ms, "authproxy_auth_failures_total", testutil.Labels{"upstream": "pbx-a", "reason": "rejected"}, 1)
}

// TestOpsBinaryReloadWatch: with reload.watch, changing the file reloads
// it (once, after the debounce) without a signal, however the file is
// changed, and the watch keeps seeing changes after each: replaced by
// rename (config management), written in place, replaced the way editors
// save (the old file renamed to a backup, a new one written), and removed
// then written again (the watch re-arms). Each version has its own
// proxy.max_challenges, so each reload's summary says which one it read.
func TestOpsBinaryReloadWatch(t *testing.T) {
	pbx := fakepbx.Start(t, fakepbx.Config{Name: "pbx-a", Host: "127.0.0.2", Accounts: map[string]string{"alice": alicePassword}})
	watch := "\n[reload]\nwatch = true\n"
	version := func(password string, maxChallenges int) string {
		toml := opsBinaryTOML(pbx.Addr(), password, watch+"\n[[client]]\nname = \"loopback\"\nnetworks = [\"127.0.0.0/8\"]\nupstreams = [\"*\"]\n")
		return strings.Replace(toml, "shutdown_grace = \"5s\"\n", fmt.Sprintf("shutdown_grace = \"5s\"\nmax_challenges = %d\n", maxChallenges), 1)
	}
	b := startOpsBinary(t, version(alicePassword, 3))
	b.waitLog(t, "watching the configuration file", 1)
	if got := b.send(t, opsMessage()); got != 200 {
		t.Fatalf("before: %d", got)
	}
	path := b.ConfigPath()
	write := func(toml string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Replaced by rename, with a password pbx-a refuses.
	b.rewrite(t, version("rotated-away", 4))
	rec := b.waitReload(t, "proxy.max_challenges 3 -> 4")
	if rec["trigger"] != "file changed" {
		t.Errorf("trigger %v, want file changed", rec["trigger"])
	}
	if got := b.send(t, opsMessage()); got != 407 {
		t.Fatalf("after the rename: %d, want 407 (the new, wrong password)", got)
	}

	// Written in place after the rename: still watched.
	write(version(alicePassword, 5))
	b.waitReload(t, "proxy.max_challenges 4 -> 5")
	if got := b.send(t, opsMessage()); got != 200 {
		t.Fatalf("after the write in place: %d, want 200 (the right password again)", got)
	}

	// Saved as an editor does: the old file renamed away, a new one written.
	if err := os.Rename(path, path+"~"); err != nil {
		t.Fatal(err)
	}
	write(version(alicePassword, 6))
	b.waitReload(t, "proxy.max_challenges 5 -> 6")

	// Removed: the watch stops and re-arms once the file is back.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	b.waitLog(t, "configuration file watch stopped; re-arming", 1)
	write(version(alicePassword, 7))
	b.waitReload(t, "proxy.max_challenges 6 -> 7")
	if n := strings.Count(b.Logs(), "configuration reload rejected"); n != 0 {
		t.Errorf("%d reloads rejected: a change was read half-written", n)
	}
}

// waitReload waits for the "configuration reloaded" line whose summary
// contains change, and returns it.
func (b *opsBinary) waitReload(t *testing.T, change string) logRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testutil.EventuallyLimit)
	defer cancel()
	var rec logRecord
	_, err := b.Process().WaitLine(ctx, func(line string) bool {
		if !strings.Contains(line, change) {
			return false
		}
		var r logRecord
		if json.Unmarshal([]byte(line), &r) != nil || r["msg"] != "configuration reloaded" {
			return false
		}
		c, _ := r["changes"].(string)
		rec = r
		return strings.Contains(c, change)
	})
	if err != nil {
		t.Fatalf("no reload with %q: %v\n%s", change, err, b.Logs())
	}
	return rec
}

// sigtermTOML is a configuration whose only upstream is r (the default),
// with a trunk registration on it (unregistered at shutdown), the admin
// listener on and shutdown_grace long enough that only the requests in
// flight decide when draining ends.
func sigtermTOML(r *siptest.Responder) string {
	return fmt.Sprintf(`[log]
format = "json"
[proxy]
shutdown_grace = "60s"
[admin]
address = "127.0.0.1:0"
[[listen]]
transport = "udp"
address = "127.0.0.1:0"
[[upstream]]
name = "slow"
address = %s
default = true
[[credential]]
username = "trunk"
password = "trunk-password"
server = "slow"
[[registration]]
upstream = "slow"
aor = "sip:trunk@slow.example.com"
`, tomlString(r.Addr()))
}

// startHeldMessage sends a MESSAGE through b that r holds, and returns once
// r has it, with the channel its final response arrives on.
func startHeldMessage(t *testing.T, b *opsBinary, r *siptest.Responder) (<-chan *sip.Response, <-chan error) {
	t.Helper()
	r.HoldMessages.Store(true)
	req := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1@slow.example.com", FromUser: "1001"}.Build(t)
	resc, errc := make(chan *sip.Response, 1), make(chan error, 1)
	go func() {
		res, err := siptest.Send(b.client, b.sipAddr["udp"], "udp", req)
		if err != nil {
			errc <- err
			return
		}
		resc <- res
	}()
	select {
	case <-r.Messages:
	case err := <-errc:
		t.Fatalf("MESSAGE: %v", err)
	case <-time.After(testutil.EventuallyLimit):
		t.Fatal("the MESSAGE never reached the upstream")
	}
	return resc, errc
}

// TestOpsBinarySIGTERMDrains: from SIGTERM on, every new request is
// answered 503 with Retry-After and never forwarded (a new INVITE, and an
// in-dialog BYE), also while the trunk registration is being unregistered
// (the registrar never answers the unregister: authproxy waits its 2 s for
// it); the request in flight finishes with its 200; /healthz stays up and
// /readyz says shutting down; then authproxy exits 0. Each request is sent
// once.
func TestOpsBinarySIGTERMDrains(t *testing.T) {
	r := siptest.StartResponder(t, "127.0.0.9")
	r.IgnoreUnregister.Store(true)
	b := startOpsBinary(t, sigtermTOML(r))
	b.waitLog(t, "registered", 1)
	inFlight, inFlightErr := startHeldMessage(t, b, r)

	b.signal(t, syscall.SIGTERM)
	b.waitLog(t, "shutting down", 1)
	refused := map[string]string{}
	for _, c := range []siptest.Request{
		{Method: sip.INVITE, RequestURI: "sip:2@slow.example.com", FromUser: "1001"},
		{Method: sip.BYE, RequestURI: "sip:2@slow.example.com", FromUser: "1001", Headers: []sip.Header{sip.NewHeader("X-In-Dialog", "yes")}},
	} {
		req := c.Build(t)
		if c.Method == sip.BYE {
			req.To().Params.Add("tag", "callee-tag")
		}
		refused[string(c.Method)] = req.CallID().Value()
		res, err := siptest.Send(b.client, b.sipAddr["udp"], "udp", req)
		if err != nil {
			t.Fatalf("%s while draining: %v", c.Method, err)
		}
		if res.StatusCode != 503 {
			t.Errorf("%s while draining: %d %s, want 503", c.Method, res.StatusCode, res.Reason)
		} else if ra := res.GetHeader("Retry-After"); ra == nil || strings.TrimSpace(ra.Value()) != "5" {
			t.Errorf("%s while draining: 503 with Retry-After %v, want 5", c.Method, ra)
		}
	}
	if code, _ := testutil.HTTPGet(t, b.admin+"/healthz"); code != 200 {
		t.Errorf("/healthz while draining: %d, want 200", code)
	}
	if code, body := testutil.HTTPGet(t, b.admin+"/readyz"); code != 503 || !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz while draining: %d %q, want 503 shutting down", code, body)
	}

	r.ReleaseMessages()
	select {
	case res := <-inFlight:
		if res.StatusCode != 200 {
			t.Fatalf("request in flight at SIGTERM: %d, want 200", res.StatusCode)
		}
	case err := <-inFlightErr:
		t.Fatalf("request in flight at SIGTERM: %v, want 200", err)
	}
	select {
	case <-b.Process().Done():
	case <-time.After(testutil.EventuallyLimit):
		t.Fatal("authproxy did not exit after draining")
	}
	if err := b.Process().Err(); err != nil {
		t.Fatalf("exit: %v, want status 0\n%s", err, b.Logs())
	}
	if !strings.Contains(b.Logs(), `"msg":"stopped"`) {
		t.Error("no stopped line")
	}
	// The process is gone: whatever it forwarded has arrived.
	for _, m := range r.Methods() {
		for method, id := range refused {
			if m == method+" "+id {
				t.Errorf("the %s refused while draining reached the upstream", method)
			}
		}
	}
}

// TestOpsBinarySecondSignalExits1: a second SIGTERM or SIGINT ends
// authproxy at once with status 1, whatever is still in flight: sent back
// to back with the first (a SIGINT after a SIGTERM: the kernel merges a
// signal with a pending one of the same kind), and once draining has
// begun.
func TestOpsBinarySecondSignalExits1(t *testing.T) {
	for _, tc := range []struct {
		name         string
		second       syscall.Signal
		waitDraining bool
	}{{"back-to-back", syscall.SIGINT, false}, {"while-draining", syscall.SIGTERM, true}} {
		t.Run(tc.name, func(t *testing.T) {
			r := siptest.StartResponder(t, "127.0.0.9")
			b := startOpsBinary(t, sigtermTOML(r))
			b.waitLog(t, "registered", 1)
			startHeldMessage(t, b, r)
			b.signal(t, syscall.SIGTERM)
			if tc.waitDraining {
				b.waitLog(t, "shutting down", 1)
			}
			b.signal(t, tc.second)
			select {
			case <-b.Process().Done():
			case <-time.After(testutil.EventuallyLimit):
				t.Fatal("authproxy did not exit after the second signal (the held request keeps it draining for 60 s)")
			}
			var ee *exec.ExitError
			if err := b.Process().Err(); !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1\n%s", err, b.Logs())
			}
			if strings.Contains(b.Logs(), `"msg":"stopped"`) {
				t.Error("stopped as after draining: the second signal did not end it at once")
			}
		})
	}
}
