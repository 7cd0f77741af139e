// Package e2e holds authproxy's black-box tests: each builds
// ./cmd/authproxy, writes its TOML configuration, and puts SIP peers
// around the running binary on loopback addresses: real software from
// Debian packages (Kamailio as the upstream PBXs, SIPp and baresip as
// clients, dnsmasq as the DNS server) and the test clients and fake PBXs
// of internal/siptest and internal/fakepbx. The peers are installed by
// scripts/install-peers (which scripts/test runs); without them these
// tests skip, or fail with CI=true. In-process scenarios of the proxy
// package live in proxy/scenarios.
package e2e

import (
	"log/slog"
	"os"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/peers"
)

// alicePassword is the password of the fake PBXs' account "alice" in the
// binary's tests; distinctive, so that a grep for it in logs cannot hit
// anything by chance.
const alicePassword = "A-alice-Pw-7c1e9d"

func TestMain(m *testing.M) {
	// The test clients' own sipgo lines: errors only, not the shutdown
	// noise ("WARN UDP ref went negative") of every client closed.
	sip.SetDefaultLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	code := m.Run()
	peers.RemoveAuthproxyBuild()
	os.Exit(code)
}
