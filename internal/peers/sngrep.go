package peers

import (
	"bytes"
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
	"time"

	"github.com/google/uuid"

	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy/hep"
)

// Sngrep is sngrep receiving HEP on a loopback UDP port (-L) and writing
// every SIP message it receives to a pcap file (-O), without its
// interface (-N -q). sngrep 1.6 writes each message as it arrives, as the
// decapsulated packet: an Ethernet frame with made-up MAC addresses and an
// IPv4 and UDP header carrying the HEP source and destination, the HEP
// timestamp as the record's time. It writes a TCP message as UDP too, and
// an IPv6 one with the addresses 0.0.0.0; HEP's correlation id, agent id
// and key are not in the file.
type Sngrep struct {
	// Addr is the "host:port" sngrep receives HEP on.
	Addr string
	// PCAP is the file sngrep writes.
	PCAP string
	proc *Process
}

// StartSngrep starts sngrep receiving HEP on host (a loopback address) and
// returns once it does: it sends probe packets until one is in the pcap
// file (their Call-IDs start with "sngrep-probe-"). It is stopped when the
// test ends, or by Stop.
func StartSngrep(t *testing.T, host string) *Sngrep {
	t.Helper()
	Require(t, "sngrep")
	path, err := LookPath("sngrep")
	if err != nil {
		t.Fatal(err)
	}
	s := &Sngrep{
		Addr: net.JoinHostPort(host, strconv.Itoa(FreePort(t, host))),
		PCAP: filepath.Join(t.TempDir(), "capture.pcap"),
	}
	s.proc = StartProcess(t, ProcessConfig{
		Name: "sngrep " + s.Addr, Path: path,
		Args: []string{"-L", "udp:" + s.Addr, "-N", "-q", "-O", s.PCAP},
		// sngrep takes a second or two to stop after SIGTERM: its capture
		// thread notices at its next poll.
		StopGrace: 10 * time.Second,
	})
	s.waitReady(t)
	return s
}

// waitReady sends HEP probes to s until sngrep wrote one to its file.
func (s *Sngrep) waitReady(t *testing.T) {
	t.Helper()
	conn, err := net.Dial("udp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	callID := "sngrep-probe-" + uuid.NewString()
	msg := "OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK" + uuid.NewString() +
		"\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: " + callID +
		"\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	ap := netip.MustParseAddrPort("127.0.0.1:9")
	pkt, err := hep.Append(nil, &hep.Packet{Src: ap, Dst: ap, Proto: hep.ProtoUDP, Time: time.Now(), Payload: []byte(msg)})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "sngrep to receive HEP", func() bool {
		select {
		case <-s.proc.Done():
			t.Fatalf("sngrep exited: %v\n%s", s.proc.Err(), s.proc.Output())
		default:
		}
		_, _ = conn.Write(pkt) // refused until sngrep listens
		data, err := os.ReadFile(s.PCAP)
		return err == nil && bytes.Contains(data, []byte(callID))
	})
}

// Packets reads the pcap file as it is now.
func (s *Sngrep) Packets(t *testing.T) []PCAPPacket {
	t.Helper()
	data, err := os.ReadFile(s.PCAP)
	if err != nil {
		t.Fatal(err)
	}
	pkts, err := ReadPCAP(data)
	if err != nil {
		t.Fatal(err)
	}
	return pkts
}

// Stop stops sngrep by its PID with SIGTERM and waits for it to exit; the
// pcap file is complete then (sngrep writes each message as it arrives).
// It fails when sngrep needed SIGKILL or exited with an error.
func (s *Sngrep) Stop() error {
	err := s.proc.Stop()
	if strings.Contains(s.proc.Output(), "no exit after SIGTERM") {
		return fmt.Errorf("sngrep %s did not stop on SIGTERM", s.Addr)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
	}
	return err
}
