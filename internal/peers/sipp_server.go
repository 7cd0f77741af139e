package peers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SippServer is a SIPp scenario running in the background, typically a UAS
// that the system under test relays calls to. StartSipp starts it; Wait
// collects its result.
type SippServer struct {
	run   SippRun // defaults filled in
	proc  *Process
	dir   string
	args  []string
	start time.Time
}

// sippServerReady bounds the wait for a background SIPp's socket.
const sippServerReady = 5 * time.Second

// StartSipp starts a SIPp scenario in the background and returns once its
// socket is bound (UDP, "u1") or listening (TCP, "t1"), so that a peer may
// send to Addr at once. It is meant for a UAS: Remote may be empty (SIPp
// answers whoever sends the call, and sends its own requests of that call
// back there), and Calls (-m, default 1) makes SIPp exit after that many
// calls, with status 0 if all of them succeeded. Timeout (SIPp's -timeout,
// an error) bounds the whole run from the start, so give the calls time to
// arrive. Wait returns the result; Cleanup stops SIPp if it still runs.
//
// Whether the socket is ready is read from /proc/net/{udp,tcp}, which
// leaves the port alone: probing it with a SIP message would be a call the
// scenario does not expect. If Port was zero and the chosen port turned out
// taken, StartSipp tries again with another.
func StartSipp(t testing.TB, run SippRun) *SippServer {
	t.Helper()
	bin, err := LookPath("sipp")
	if err != nil {
		t.Fatalf("peers: %v (call peers.Require first; %s)", err, InstallHint)
	}
	pickPort := run.LocalPort == 0
	for attempt := 1; ; attempt++ {
		s, err := startSippServer(t, bin, run)
		if err == nil {
			return s
		}
		if pickPort && attempt < 3 && errors.Is(err, errAddrInUse) {
			t.Logf("peers: sipp server could not bind its port, retrying: %v", err)
			continue
		}
		t.Fatalf("peers: StartSipp %s: %v", run.Scenario, err)
	}
}

func startSippServer(t testing.TB, bin string, run SippRun) (*SippServer, error) {
	t.Helper()
	args, dir, run, err := sippArgs(t, run, true)
	if err != nil {
		return nil, err
	}
	s := &SippServer{run: run, dir: dir, args: args, start: time.Now()}
	s.proc = StartProcess(t, ProcessConfig{
		Name:      "sipp " + run.Scenario + " on " + s.Addr(),
		Path:      bin,
		Args:      args,
		Dir:       dir,
		StopGrace: 2 * time.Second,
	})
	ctx, cancel := context.WithTimeout(t.Context(), sippServerReady)
	defer cancel()
	proto := "udp"
	if run.Transport == "t1" {
		proto = "tcp"
	}
	for {
		ok, err := socketBound(proto, run.Local, run.LocalPort)
		if err != nil {
			_ = s.proc.Stop()
			return nil, err
		}
		if ok {
			return s, nil
		}
		select {
		case <-s.proc.Done():
			res := s.result()
			if res.ExitCode == sippExitBind {
				return nil, fmt.Errorf("%w: %s", errAddrInUse, lastLines(res.Output, 5))
			}
			return nil, fmt.Errorf("sipp exited before binding %s:\n%v", s.Addr(), res)
		case <-ctx.Done():
			_ = s.proc.Stop()
			return nil, fmt.Errorf("sipp did not bind %s/%s within %v:\n%v", s.Addr(), proto, sippServerReady, s.result())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Addr returns the "host:port" SIPp listens on.
func (s *SippServer) Addr() string {
	return net.JoinHostPort(s.run.Local, strconv.Itoa(s.run.LocalPort))
}

// Done is closed when SIPp has exited.
func (s *SippServer) Done() <-chan struct{} { return s.proc.Done() }

// Wait waits for SIPp to exit on its own, at most for the rest of its
// Timeout plus a grace period (SIPp's own -timeout normally ends it first,
// with exit status 1), then stops it, and returns what happened.
func (s *SippServer) Wait() SippResult {
	deadline := time.Until(s.start.Add(s.run.timeout() + 5*time.Second))
	select {
	case <-s.proc.Done():
	case <-time.After(max(deadline, 0)):
		_ = s.proc.Stop()
	}
	return s.result()
}

// Counters returns SIPp's counters as it last wrote them (SippResult's
// Counters): it writes its statistics every -fd seconds (pass "-fd", "1"
// in Extra to read them while it runs) and when it exits.
func (s *SippServer) Counters() map[string]int {
	var res SippResult
	res.readTraces(s.dir)
	return res.Counters
}

// Stop stops SIPp now (SIGTERM, then SIGKILL) and returns what happened.
// SIPp exits 0 on SIGTERM, so only the call counters (OK) tell whether the
// calls it was waiting for completed.
func (s *SippServer) Stop() SippResult {
	_ = s.proc.Stop()
	return s.result()
}

// result builds the SippResult once the process has exited; before that it
// reports ExitCode -1 with the traces so far.
func (s *SippServer) result() SippResult {
	res := SippResult{Output: s.proc.Output(), Args: redactArgs(s.args), Duration: time.Since(s.start), ExitCode: -1}
	select {
	case <-s.proc.Done():
		res.ExitCode = 0
		var ee *exec.ExitError
		if err := s.proc.Err(); errors.As(err, &ee) {
			res.ExitCode = ee.ExitCode() // -1 if killed by a signal
		} else if err != nil {
			res.ExitCode = -1
		}
	default:
	}
	res.readTraces(s.dir)
	return res
}

// socketBound reports whether a UDP socket is bound, or a TCP socket
// listening, on host:port, from /proc/net/udp, /proc/net/tcp or, for an
// IPv6 host, /proc/net/udp6 and /proc/net/tcp6 (Linux).
func socketBound(proto, host string, port int) (bool, error) {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false, fmt.Errorf("peers: %q is not an IP address", host)
	}
	file := proto
	if a.Is6() {
		file += "6"
	}
	f, err := os.Open("/proc/net/" + file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	// The kernel prints the address as host-order (little-endian on every
	// platform this runs on) 32-bit hex numbers, one for IPv4, four for
	// IPv6, and the port big-endian.
	b := a.AsSlice()
	var want strings.Builder
	for i := 0; i < len(b); i += 4 {
		fmt.Fprintf(&want, "%02X%02X%02X%02X", b[i+3], b[i+2], b[i+1], b[i])
	}
	fmt.Fprintf(&want, ":%04X", port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[1] != want.String() {
			continue
		}
		// TCP state 0A is LISTEN; an unconnected UDP socket shows 07.
		if proto == "udp" || fields[3] == "0A" {
			return true, nil
		}
	}
	return false, sc.Err()
}
