// Package e2e holds authproxy's black-box interop tests: they build
// ./cmd/authproxy, write its TOML config, and put real SIP peers (Kamailio as
// the upstream PBXs, SIPp as the client) on loopback addresses around it.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/proxy"
)

// peerBinaries are the programs the interop tests run.
var peerBinaries = []string{"kamailio", "sipp", "baresip", "dnsmasq"}

func TestMain(m *testing.M) {
	// The in-process proxies need sipgo's settings as cmd/authproxy sets
	// them.
	proxy.TuneSIPStack()
	installPeers()
	code := m.Run()
	peers.RemoveAuthproxyBuild()
	os.Exit(code)
}

// installTimeout bounds apt-get; a hung mirror must not eat CI's budget.
const installTimeout = 10 * time.Minute

// installPeers installs missing peer packages when running as root (as CI
// and the project's machines do). Otherwise it does nothing and
// peers.Require skips the tests that need them (or fails them when CI=true).
func installPeers() {
	missing := peers.Missing(peerBinaries...)
	if len(missing) == 0 || os.Geteuid() != 0 {
		return
	}
	fmt.Fprintf(os.Stderr, "e2e: %s missing; running: apt-get update && %s\n",
		strings.Join(missing, ", "), peers.InstallHint)
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", "apt-get update && "+peers.InstallHint)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: installing peers failed: %v\n", err)
	}
}
