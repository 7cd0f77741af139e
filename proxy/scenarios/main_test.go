// Package scenarios holds the in-process scenarios of package proxy: a
// proxy.Proxy (its Config written by each test, sipgo tuned as
// cmd/authproxy tunes it), password-less test clients
// (internal/siptest) and fake Asterisk-like upstreams (internal/fakepbx)
// on loopback addresses, one behaviour of authproxy per test: credentials
// by server, realm and user, calls and dialogs, registrations, routing and
// DNS targets, admission, limits, reloads, health and metrics. The built
// binary with its configuration file is tested in e2e.
package scenarios

import (
	"log/slog"
	"os"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy"
)

// sipTrace receives every SIP message of the scenarios through authproxy's
// redacting tracer. sipgo's tracer is a package global read by its
// transports, so it is installed once, before any test starts.
var sipTrace = &syncBuffer{}

func TestMain(m *testing.M) {
	// The proxies run with sipgo's settings as cmd/authproxy sets them.
	proxy.TuneSIPStack()
	// sipgo's default logger as cmd/authproxy sets it: the test clients'
	// shutdown noise ("UDP ref went negative") at DEBUG, unseen.
	sip.SetDefaultLogger(proxy.SipgoLogger(slog.Default()))
	sip.SIPDebugTracer(proxy.Tracer{Log: slog.New(slog.NewTextHandler(sipTrace, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	sip.SIPDebug = true
	os.Exit(m.Run())
}
