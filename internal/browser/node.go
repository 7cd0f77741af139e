package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// RequireNode stops the test unless Node.js and the npm packages jssip
// and ws are installed: a skip, or a failure when CI=true.
func RequireNode(t testing.TB) {
	t.Helper()
	var missing []string
	if _, err := exec.LookPath("node"); err != nil {
		missing = append(missing, "node")
	}
	for _, p := range []string{"jssip", "ws"} {
		if _, err := os.Stat(filepath.Join(dir(), "node_modules", p, "package.json")); err != nil {
			missing = append(missing, "npm "+p)
		}
	}
	if len(missing) == 0 {
		return
	}
	if peers.InCI() {
		t.Fatalf("browser: %s not installed but CI=true: %s", strings.Join(missing, ", "), InstallHint)
	}
	t.Skipf("browser: %s not installed; %s", strings.Join(missing, ", "), InstallHint)
}

// NodePhone is page/phone.js run by Node (node/phone.js): JsSIP over the
// npm ws WebSocket with a stand-in RTCPeerConnection, for quick runs of
// the signalling without a browser.
type NodePhone struct {
	t    testing.TB
	proc *peers.Process
	seq  int // of the last command, which node/phone.js echoes when done
}

// StartNodePhone starts the Node softphone; Call drives it.
func StartNodePhone(t testing.TB) *NodePhone {
	t.Helper()
	node, _ := exec.LookPath("node")
	proc := peers.StartProcess(t, peers.ProcessConfig{
		Name: "node phone", Path: node, Args: []string{filepath.Join(dir(), "node", "phone.js")}, Stdin: true,
	})
	return &NodePhone{t: t, proc: proc}
}

// Call runs one of page/phone.js's functions (startPhone, call, answer,
// renegotiate, hangUp, hangUpIncoming, expectIncoming) with args and
// waits until it returned (a promise it returns resolved).
func (n *NodePhone) Call(fn string, args ...any) error {
	n.seq++
	id := fmt.Sprintf("%s-%d", fn, n.seq)
	line, err := json.Marshal(map[string]any{"fn": fn, "args": args, "id": id})
	if err != nil {
		return err
	}
	if err := n.proc.WriteStdin(string(line) + "\n"); err != nil {
		return fmt.Errorf("node phone: %s: %w", fn, err)
	}
	ctx, cancel := context.WithTimeout(n.t.Context(), 30*time.Second)
	defer cancel()
	got, err := n.proc.WaitLine(ctx, func(l string) bool {
		return l == "DONE "+id || strings.HasPrefix(l, "ERROR "+id+" ")
	})
	if err != nil || strings.HasPrefix(got, "ERROR ") {
		return fmt.Errorf("node phone: %s: %v %s\n%s", fn, err, got, n.proc.Output())
	}
	return nil
}

// WaitEvent waits until the phone recorded a JsSIP event of type ev.
func (n *NodePhone) WaitEvent(ev string) error {
	ctx, cancel := context.WithTimeout(n.t.Context(), 30*time.Second)
	defer cancel()
	_, err := n.proc.WaitLine(ctx, func(l string) bool {
		var e struct{ Type string }
		return strings.HasPrefix(l, "EVENT ") && json.Unmarshal([]byte(l[len("EVENT "):]), &e) == nil && e.Type == ev
	})
	if err != nil {
		return fmt.Errorf("node phone: no %s event: %w\n%s", ev, err, n.proc.Output())
	}
	return nil
}

// Output is everything the Node phone printed.
func (n *NodePhone) Output() string { return n.proc.Output() }

// Received returns every SIP message the phone read from its WebSocket.
func (n *NodePhone) Received() ([]string, error) {
	if err := n.Call("printReceived"); err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(n.proc.Output(), "\n") {
		var m string
		if strings.HasPrefix(l, "RECEIVED ") && json.Unmarshal([]byte(l[len("RECEIVED "):]), &m) == nil {
			out = append(out, m)
		}
	}
	return out, nil
}
