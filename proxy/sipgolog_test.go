package proxy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// redactText takes out every credential of a logged text, whatever its
// shape: a whole message, a line cut short, an error quoting a header.
func TestRedactText(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		secrets  []string
		keep     []string
	}{
		{"a message", "REGISTER sip:x SIP/2.0\r\nproxy-authorization: Digest username=\"u\", response=\"6629fae49393a05397450978507c4ef1\"\r\nCall-ID: c\r\n\r\n",
			[]string{"6629fae49393a05397450978507c4ef1", "username"}, []string{"Call-ID: c", "proxy-authorization: [redacted]"}},
		{"a folded header", "OPTIONS sip:x SIP/2.0\r\nAuthorization: Digest username=\"u\",\r\n response=\"deadbeef\"\r\nTo: t\r\n\r\n",
			[]string{"deadbeef"}, []string{"To: t"}},
		{"an error quoting a header", `field name with no value in header: "Proxy-Authorization Digest nonce=\"n1\", cnonce=\"c1secret\", response=d1secret"`,
			[]string{"n1", "c1secret", "d1secret"}, []string{"field name with no value"}},
		{"cut short inside a value", `... Authorization: Digest response="abcdef0123`,
			[]string{"abcdef0123"}, nil},
		{"spaces and case", `RESPONSE = "x1secret" , CNonce=y1secret;Nonce= z1secret`,
			[]string{"x1secret", "y1secret", "z1secret"}, nil},
		{"other parameters kept", `Digest realm="asterisk", nextnonce="keep-me", qop=auth`,
			nil, []string{`nextnonce="keep-me"`, `realm="asterisk"`}},
		{"nothing to redact", "failed to parse: invalid uri scheme", nil, []string{"failed to parse: invalid uri scheme"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := redactText(tc.in)
			for _, s := range tc.secrets {
				if strings.Contains(got, s) {
					t.Errorf("%q survives in %q", s, got)
				}
			}
			for _, s := range tc.keep {
				if !strings.Contains(got, s) {
					t.Errorf("%q lost from %q", s, got)
				}
			}
		})
	}
}

// FuzzRedactText: a digest response, cnonce or nonce value written into
// any text, however it is spelt around, never survives redaction.
func FuzzRedactText(f *testing.F) {
	f.Add("Proxy-Authorization: Digest username=\"u\", ", "response", ", qop=auth\r\n", true)
	f.Add("error: ", "cnonce", "", false)
	f.Add("x\r\n y ", "nonce", "\r\n\r\nbody", true)
	f.Fuzz(func(t *testing.T, before, param, after string, quoted bool) {
		name := ""
		for _, n := range digestSecrets {
			if strings.EqualFold(param, n) {
				name = param
			}
		}
		if name == "" || (before != "" && isParamNameChar(before[len(before)-1])) {
			return // not a parameter of that name
		}
		const secret = "S3cretValue7"
		value := secret
		if quoted {
			value = `"` + secret + `"`
		}
		got := redactText(before + name + "=" + value + after)
		if strings.Contains(got, secret) && !strings.Contains(before+after, secret) {
			t.Fatalf("%q survives in %q", secret, got)
		}
	})
}

// The handler sipgo logs through: values redacted and cut short, what
// outside input causes at WARN, one line per message and interval with
// the count of lines held back, and every parse failure handed on even
// when its line is held back.
func TestSipgoLogHandler(t *testing.T) {
	var out bytes.Buffer
	var refused []string
	h := &sipgoLogHandler{
		inner:    slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}),
		throttle: newLogThrottle(time.Hour),
		refused:  func(data string) { refused = append(refused, data) },
	}
	log := slog.New(h).With("caller", "Transport<UDP>", "auth", "Authorization: Digest response=\"w1secret\"")
	data := "MESSAGE <sip:x> SIP/2.0\r\nProxy-Authorization: Digest response=\"p1secret\"\r\nX-Pad: " + strings.Repeat("p", 4000) + "\r\n\r\n"
	for range 3 {
		log.Error("failed to parse", "data", data, "error", errors.New(`bad header "Authorization: Digest cnonce=e1secret"`))
	}
	log.Debug("Creating connection", "raddr", "127.0.0.1:5060")
	log.Debug("Creating connection", "raddr", "127.0.0.1:5060")

	logs := out.String()
	for _, s := range []string{"w1secret", "p1secret", "e1secret"} {
		if strings.Contains(logs, s) {
			t.Errorf("%q logged:\n%s", s, logs)
		}
	}
	if n := strings.Count(logs, `"msg":"failed to parse"`); n != 1 {
		t.Errorf("%d parse failure lines within the interval, want 1", n)
	}
	if !strings.Contains(logs, `"level":"WARN","msg":"failed to parse"`) {
		t.Errorf("parse failure not at WARN:\n%s", logs)
	}
	if n := strings.Count(logs, `"msg":"Creating connection"`); n != 2 {
		t.Errorf("%d debug lines, want both (DEBUG is not throttled)", n)
	}
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if len(line) > 3*sipgoLogValueMax {
			t.Errorf("a line of %d bytes: values not cut short", len(line))
		}
	}
	if len(refused) != 3 || refused[0] != data {
		t.Errorf("%d parse failures handed on (want 3, each with its bytes)", len(refused))
	}
}

// After the interval the next line of a kind says how many were held back.
func TestLogThrottle(t *testing.T) {
	th := newLogThrottle(10 * time.Second)
	t0 := time.Now()
	if ok, n := th.allow("a", t0); !ok || n != 0 {
		t.Fatalf("first line: %v %d", ok, n)
	}
	for i := range 5 {
		if ok, _ := th.allow("a", t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatal("a line within the interval let through")
		}
	}
	if ok, _ := th.allow("b", t0); !ok {
		t.Fatal("another kind held back")
	}
	if ok, n := th.allow("a", t0.Add(11*time.Second)); !ok || n != 5 {
		t.Fatalf("after the interval: %v, %d held back, want true, 5", ok, n)
	}
}

// Enabled lets ERROR through at any level (parse failures are counted and
// answered whatever the log level), and writes only what the level asks.
func TestSipgoLogHandlerLevel(t *testing.T) {
	var out bytes.Buffer
	calls := 0
	h := &sipgoLogHandler{
		inner:    slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelError}),
		throttle: newLogThrottle(time.Hour),
		refused:  func(string) { calls++ },
	}
	if !h.Enabled(context.Background(), slog.LevelError) || h.Enabled(context.Background(), slog.LevelWarn) {
		t.Fatal("Enabled does not follow the level, ERROR always")
	}
	slog.New(h).Error("failed to parse", "data", "x")
	if calls != 1 || out.Len() != 0 {
		t.Fatalf("handed on %d times, wrote %q: want 1 and nothing (WARN is below the level)", calls, out.String())
	}
}

// sipgo's levels on authproxy's scale: shutdown noise and INFO chatter at
// DEBUG, what outside input causes at WARN at most, the rest as sipgo
// says.
func TestSipgoLevel(t *testing.T) {
	closed := errors.New("read udp 127.0.0.1:5060: use of closed network connection")
	for _, tc := range []struct {
		name  string
		level slog.Level
		msg   string
		attrs []any
		want  slog.Level
	}{
		{"ref went negative", slog.LevelWarn, "UDP ref went negative on try close", []any{"ref", -1}, slog.LevelDebug},
		{"tcp ref went negative", slog.LevelWarn, "TCP ref went negative", nil, slog.LevelDebug},
		{"pool cleanup", slog.LevelWarn, "connection pool not clean cleanup", nil, slog.LevelDebug},
		{"read on a closed socket", slog.LevelError, "Read connection error", []any{"error", closed}, slog.LevelDebug},
		{"closed socket as text", slog.LevelError, "Read error", []any{"error", closed.Error()}, slog.LevelDebug},
		{"other read error", slog.LevelError, "Read connection error", []any{"error", errors.New("connection reset by peer")}, slog.LevelError},
		{"input", slog.LevelError, "failed to parse", []any{"data", "x"}, slog.LevelWarn},
		{"info chatter", slog.LevelInfo, "Non existing client tx was removed", nil, slog.LevelDebug},
		{"debug", slog.LevelDebug, "Client transaction destroyed", nil, slog.LevelDebug},
		{"warning kept", slog.LevelWarn, "client transport error detected. Waiting for retransmission", nil, slog.LevelWarn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := slog.NewRecord(time.Now(), tc.level, tc.msg, 0)
			r.Add(tc.attrs...)
			if got := sipgoLevel(r); got != tc.want {
				t.Errorf("sipgoLevel = %v, want %v", got, tc.want)
			}
		})
	}
}

// sipgo names each layer with its own "caller" attribute; a JSON line
// carries the key once, the layers joined, and misspelt messages come out
// spelt right.
func TestSipgoLogHandlerCaller(t *testing.T) {
	var out bytes.Buffer
	h := &sipgoLogHandler{inner: slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}), throttle: newLogThrottle(time.Hour)}
	log := slog.New(h).With("caller", "TransportLayer").With("caller", "Transport<TCP>")
	log.Debug("Fail to accept conenction", "error", "boom")
	line := out.String()
	if n := strings.Count(line, `"caller"`); n != 1 {
		t.Errorf(`"caller" %d times in %s`, n, line)
	}
	if !strings.Contains(line, `"caller":"TransportLayer/Transport<TCP>"`) {
		t.Errorf("layers not joined: %s", line)
	}
	if !strings.Contains(line, `"msg":"Fail to accept connection"`) {
		t.Errorf("message not respelt: %s", line)
	}
}
