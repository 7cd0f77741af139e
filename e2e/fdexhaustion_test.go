package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/siptest"
)

// fdLimit is the descriptor limit authproxy runs with in
// TestOpsBinaryFDExhaustion: room for its listeners, its UDP socket to the
// upstream and a few connections, and no more.
const fdLimit = 40

// TestOpsBinaryFDExhaustion: authproxy out of file descriptors keeps its
// TCP listener. Accepts fail (EMFILE) while connections hold every
// descriptor; they are retried with a growing backoff and logged at most
// once every few seconds; once the connections are gone, the listener
// accepts again and a request over TCP gets its answer.
func TestOpsBinaryFDExhaustion(t *testing.T) {
	peers.Require(t, "prlimit") // util-linux
	prlimit, _ := peers.LookPath("prlimit")
	pbx := fakepbx.Start(t, fakepbx.Config{Name: "pbx-a", Host: "127.0.0.2", Accounts: map[string]string{"alice": alicePassword}})
	// No first-message deadline: only the test frees the descriptors.
	toml := opsBinaryTOML(pbx.Addr(), alicePassword, "\n[tcp]\nmessage_timeout = \"0s\"\n")
	b := startOpsBinaryUnder(t, toml, []string{prlimit, fmt.Sprintf("--nofile=%d:%d", fdLimit, fdLimit), "--"})
	addr := b.sipAddr["tcp"]

	// Connect until authproxy cannot accept any more: the kernel completes
	// the handshakes of the ones it cannot accept (the listen backlog).
	var conns []net.Conn
	for range 2 * fdLimit {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conns = append(conns, c)
	}
	first := b.waitLog(t, "accepting a connection failed; retrying", 1)
	if !strings.Contains(fmt.Sprint(first["error"]), "too many open files") {
		t.Errorf("first failure %v, want EMFILE", first)
	}
	// The next line comes at least five seconds and several failures
	// later: the failures in between are counted, not logged.
	second := b.waitLog(t, "accepting a connection failed; retrying", 2)
	if n, _ := second["failures"].(float64); n < 2 {
		t.Errorf("second failure line counts %v failures, want the several since the first line: %v", second["failures"], second)
	}
	if d := second["retry_in"]; d != "1s" {
		t.Errorf("second failure line retries in %#v, want the 1s backoff ceiling (\"1s\")", d)
	}

	for _, c := range conns {
		_ = c.Close()
	}
	again := b.waitLog(t, "accepting connections again", 1)
	if n, _ := again["failures"].(float64); n < 3 {
		t.Errorf("recovery line counts %v failures, want more than the two lines logged", again["failures"])
	}

	// The listener serves again.
	siptest.DialRaw(t, addr, "127.0.0.1").Works(t, "after-exhaustion")
	if strings.Contains(b.Logs(), `"msg":"listener stopped"`) {
		t.Errorf("the TCP listener stopped:\n%s", b.Logs())
	}
}
