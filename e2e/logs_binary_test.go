package e2e

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
)

// durationKeys are the log keys whose values are durations.
var durationKeys = []string{"duration", "grace", "for", "after", "retry_in", "refresh_in"}

// TestOpsBinaryLogLines runs the binary through a start, requests over
// UDP and TCP (one answered, one refused by the upstream) and a SIGTERM,
// and reads every line it wrote: each is one of authproxy's JSON records
// (time, level, msg; each key once), durations are Go duration strings,
// lists are never null, sipgo's lines are authproxy's (at info nothing
// of sipgo's shows; at debug its lines carry component=sipgo and one
// caller) and nothing warns on a clean run, "UDP ref went negative" on
// shutdown included. /metrics has the configured upstream's series at 0
// before their first event.
func TestOpsBinaryLogLines(t *testing.T) {
	for _, level := range []string{"info", "debug"} {
		t.Run(level, func(t *testing.T) {
			pbx := fakepbx.Start(t, fakepbx.Config{Name: "pbx-a", Host: "127.0.0.2", Accounts: map[string]string{"alice": alicePassword}})
			toml := strings.Replace(opsBinaryTOML(pbx.Addr(), alicePassword, ""), `level = "info"`, `level = "`+level+`"`, 1)
			b := startOpsBinary(t, toml)

			_, body := testutil.HTTPGet(t, b.admin+"/metrics")
			for _, want := range []string{
				`authproxy_auth_failures_total{reason="rejected",upstream="pbx-a"} 0`,
				`authproxy_challenges_answered_total{realm="asterisk",upstream="pbx-a"} 0`,
				`authproxy_requests_refused_total{reason="local-auth-failed"} 0`,
				`authproxy_config_reloads_total{result="rejected"} 0`,
			} {
				if !strings.Contains(body, want) {
					t.Errorf("/metrics before any traffic lacks %s", want)
				}
			}

			if got := b.send(t, opsMessage()); got != 200 {
				t.Fatalf("MESSAGE over UDP: %d, want 200", got)
			}
			req := siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1001@pbx-a.example.com", FromUser: "1001"}.Build(t)
			if res, err := siptest.Send(b.client, b.sipAddr["tcp"], "tcp", req); err != nil || res.StatusCode != 200 {
				t.Fatalf("OPTIONS over TCP: %v %v, want 200", res, err)
			}
			if got := b.send(t, siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1@nowhere.example.net", FromUser: "1001"}); got != 404 {
				t.Fatalf("MESSAGE to no upstream: %d, want 404", got)
			}
			b.waitLog(t, "request", 3)
			b.signal(t, syscall.SIGTERM)
			select {
			case <-b.Process().Done():
			case <-time.After(testutil.EventuallyLimit):
				t.Fatal("authproxy did not exit after SIGTERM")
			}
			if err := b.Process().Err(); err != nil {
				t.Fatalf("exit: %v, want status 0", err)
			}
			checkLogLines(t, b.Logs(), level)
		})
	}
}

// checkLogLines holds every line of logs to authproxy's format.
func checkLogLines(t *testing.T, logs, level string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(logs, "\n"), "\n")
	requests := 0
	for _, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("not an authproxy JSON line: %q", line)
			continue
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("no %q in %s", k, line)
			}
		}
		for k := range rec {
			if n := strings.Count(line, `"`+k+`":`); n > 1 {
				t.Errorf("key %q %d times in %s", k, n, line)
			}
		}
		switch rec["level"] {
		case "DEBUG", "INFO":
		default:
			t.Errorf("a clean run logged at %v: %s", rec["level"], line)
		}
		if strings.Contains(line, "went negative") && rec["level"] != "DEBUG" {
			t.Errorf("sipgo's shutdown noise above DEBUG: %s", line)
		}
		if rec["component"] == "sipgo" && level != "debug" {
			t.Errorf("a sipgo line at level %s: %s", level, line)
		}
		for k, v := range rec {
			if v == nil {
				t.Errorf("%s is null in %s", k, line)
			}
		}
		for _, k := range durationKeys {
			v, ok := rec[k]
			if !ok {
				continue
			}
			s, isString := v.(string)
			if _, err := time.ParseDuration(s); !isString || err != nil {
				t.Errorf("%s = %#v, want a Go duration string, in %s", k, v, line)
			}
		}
		if rec["msg"] == "request" {
			requests++
			if _, ok := rec["realms_answered"].([]any); !ok {
				t.Errorf("realms_answered = %#v, want a list: %s", rec["realms_answered"], line)
			}
		}
	}
	if requests < 3 {
		t.Errorf("%d request lines, want 3:\n%s", requests, logs)
	}
	for _, want := range []string{`"msg":"shutting down"`, `"grace":"5s"`, `"msg":"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %s", want)
		}
	}
}
