package peers

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// InstallHint is the command that installs every peer this package runs.
const InstallHint = "apt-get install -y kamailio sip-tester baresip dnsmasq-base sngrep prometheus redis-server"

// Packages maps each peer binary to the Debian package that ships it.
var Packages = map[string]string{
	"kamailio":     "kamailio",
	"sipp":         "sip-tester",
	"baresip":      "baresip",
	"dnsmasq":      "dnsmasq-base", // the binary only; "dnsmasq" adds a system service
	"sngrep":       "sngrep",
	"promtool":     "prometheus", // promtool check metrics lints /metrics
	"redis-server": "redis-server",
}

// sbinDirs are searched after $PATH: Debian installs kamailio and dnsmasq in /usr/sbin,
// which is not on an unprivileged user's PATH.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// LookPath finds a peer binary on $PATH or in the sbin directories.
func LookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range sbinDirs {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("peers: %s: %w", name, exec.ErrNotFound)
}

// Missing returns the binaries among names that LookPath cannot find.
func Missing(names ...string) []string {
	var missing []string
	for _, n := range names {
		if _, err := LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	return missing
}

// InCI reports whether the environment variable CI is set to a true value,
// as CI runners (and .ci/run) do.
func InCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// Require stops the test unless every named binary is installed. In CI
// (CI=true) a missing peer is a failure, because a skipped interop test would
// let a broken submission look green; on a developer machine it is a skip.
func Require(t testing.TB, binaries ...string) {
	t.Helper()
	missing := Missing(binaries...)
	if len(missing) == 0 {
		return
	}
	what := strings.Join(missing, ", ")
	if InCI() {
		t.Fatalf("peers: %s not installed but CI=true; .ci/run must install them: %s", what, InstallHint)
		return
	}
	t.Skipf("peers: %s not installed; %s", what, InstallHint)
}

// FreePort returns a port that is free for both UDP and TCP on host, which
// must be a loopback address: IPv4 such as "127.0.0.2" (Linux routes all of
// 127.0.0.0/8 to lo, so each peer can have its own address) or "::1".
//
// The port is only free when FreePort returns; a caller that loses the race
// to bind it should ask again.
func FreePort(t testing.TB, host string) int {
	t.Helper()
	port, err := freePort(host)
	if err != nil {
		t.Fatalf("peers: FreePort(%q): %v", host, err)
	}
	return port
}

func freePort(host string) (int, error) {
	if err := checkLoopback(host); err != nil {
		return 0, err
	}
	tcp, udp := "tcp4", "udp4"
	if strings.Contains(host, ":") {
		tcp, udp = "tcp6", "udp6"
	}
	var lastErr error
	for range 20 {
		// Let the kernel pick a TCP port, then claim the same number on UDP.
		tl, err := net.Listen(tcp, net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, err
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket(udp, net.JoinHostPort(host, strconv.Itoa(port)))
		tl.Close()
		if err != nil {
			lastErr = err
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return 0, err
		}
		ul.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no port free for both udp and tcp: %w", lastErr)
}

// checkLoopback refuses anything but a literal loopback address (in
// 127.0.0.0/8, or ::1), so a typo cannot point a test peer at a real
// network.
func checkLoopback(host string) error {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("peers: host %q is not an IP address: %w", host, err)
	}
	if !a.IsLoopback() || a.Is4In6() || a.Zone() != "" {
		return fmt.Errorf("peers: host %q is not in 127.0.0.0/8 nor ::1", host)
	}
	return nil
}

// checkLoopbackAddr is checkLoopback for a "host:port" address.
func checkLoopbackAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("peers: address %q: %w", addr, err)
	}
	return checkLoopback(host)
}
