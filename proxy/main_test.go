package proxy

import (
	"log/slog"
	"os"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// TestMain sets sipgo's process-wide settings and default logger as
// cmd/authproxy does (the test clients' shutdown noise at DEBUG, unseen).
func TestMain(m *testing.M) {
	TuneSIPStack()
	sip.SetDefaultLogger(SipgoLogger(slog.Default()))
	os.Exit(m.Run())
}
