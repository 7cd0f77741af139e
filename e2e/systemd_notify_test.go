package e2e

// The binary under systemd's Type=notify protocol (sd_notify(3)): a
// datagram socket stands in for systemd's, and the test waits on what
// arrives there.

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/authproxy/authproxy/internal/peers"
)

// notifyWait bounds each wait for a datagram: the binary under -race on a
// busy machine.
const notifyWait = 20 * time.Second

// TestSystemdNotify: READY=1 once serving; RELOADING=1 with MONOTONIC_USEC
// then READY=1 around a SIGHUP reload; STOPPING=1 when SIGTERM starts the
// drain; then a clean exit.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	datagrams := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(datagrams)
				return
			}
			datagrams <- string(buf[:n])
		}
	}()
	next := func(want string) map[string]string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), notifyWait)
		defer cancel()
		select {
		case d, ok := <-datagrams:
			if !ok {
				t.Fatalf("notify socket closed waiting for %s", want)
			}
			fields := map[string]string{}
			for line := range strings.SplitSeq(d, "\n") {
				k, v, _ := strings.Cut(line, "=")
				fields[k] = v
			}
			if fields[want] != "1" {
				t.Fatalf("datagram %q, want %s=1", d, want)
			}
			return fields
		case <-ctx.Done():
			t.Fatalf("no %s datagram", want)
			return nil
		}
	}

	a := peers.StartAuthproxy(t, peers.AuthproxyConfig{
		Config: opsBinaryTOML("127.0.0.2:5060", "a-password-of-this-test", ""),
		Env:    []string{"NOTIFY_SOCKET=" + sock},
	})
	next("READY")

	pid := a.Process().Pid()
	before := monotonicMicros(t)
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	f := next("RELOADING")
	usec, err := strconv.ParseInt(f["MONOTONIC_USEC"], 10, 64)
	if err != nil || usec < before {
		t.Errorf("MONOTONIC_USEC=%q: want CLOCK_MONOTONIC µs at the reload, at least %d", f["MONOTONIC_USEC"], before)
	}
	if f := next("READY"); f["STATUS"] != "serving" {
		t.Errorf("after the reload STATUS=%q, want serving", f["STATUS"])
	}

	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next("STOPPING")
	ctx, cancel := context.WithTimeout(t.Context(), notifyWait)
	defer cancel()
	select {
	case <-a.Process().Done():
	case <-ctx.Done():
		t.Fatal("no exit after SIGTERM")
	}
	if err := a.Process().Err(); err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, a.Logs())
	}
}

// monotonicMicros is CLOCK_MONOTONIC in microseconds, as systemd reads
// MONOTONIC_USEC.
func monotonicMicros(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatalf("clock_gettime: %v", err)
	}
	return ts.Nano() / 1000
}
