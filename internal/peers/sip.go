package peers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// NewToken returns a random hex string of n bytes, for branches, tags and
// Call-IDs.
func NewToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// UDPExchange sends one SIP request over UDP to addr (a loopback host:port)
// and returns the first SIP message received back. build gets the local
// "ip:port" of the socket, for the Via and Contact headers, and returns the
// whole request. The request is retransmitted every 200ms (a fixed, short
// T1: everything here is on loopback) until an answer arrives or ctx ends.
// A 100 Trying is skipped when skipProvisional is true.
func UDPExchange(ctx context.Context, addr string, skipProvisional bool, build func(local string) string) (string, error) {
	if err := checkLoopbackAddr(addr); err != nil {
		return "", err
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return "", err
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	msg := []byte(build(conn.LocalAddr().String()))
	buf := make([]byte, 65535)
	for {
		if _, err := conn.Write(msg); err != nil {
			// ECONNREFUSED from an earlier ICMP port-unreachable: the peer is
			// not listening yet. Keep trying until ctx ends.
			if !isConnRefused(err) {
				return "", err
			}
		}
		deadline := time.Now().Add(200 * time.Millisecond)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetReadDeadline(deadline)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				break
			}
			resp := string(buf[:n])
			if skipProvisional && strings.HasPrefix(resp, "SIP/2.0 1") {
				continue
			}
			return resp, nil
		}
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("no SIP answer from %s: %w", addr, context.Cause(ctx))
		}
	}
}

func isConnRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// sipReadyTimeout bounds WaitSIP.
const sipReadyTimeout = 10 * time.Second

// WaitSIP returns once addr (a loopback UDP "host:port") answers an OPTIONS
// with any SIP response: the daemon p listens there. It fails the test if p
// exits first or nothing answers within 10s.
func WaitSIP(t testing.TB, addr string, p *Process) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), sipReadyTimeout)
	defer cancel()
	if err := waitSIP(ctx, addr, p); err != nil {
		t.Fatalf("peers: %v\n--- output ---\n%s", err, p.Output())
	}
}

// waitSIP sends an OPTIONS to addr until any SIP response arrives, p exits
// or ctx ends.
func waitSIP(ctx context.Context, addr string, p *Process) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopOnExit(ctx, cancel, p)
	_, err := UDPExchange(ctx, addr, false, func(local string) string {
		return probeRequest(addr, local, NewToken(8))
	})
	return err
}

// probeRequest builds the OPTIONS that StartKamailio uses to wait for
// readiness. The X-Peers-Probe header makes the generated script answer 200
// before authentication and log "PEERS|probe|<token>".
func probeRequest(target, local, token string) string {
	return "OPTIONS sip:" + target + " SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + local + ";branch=z9hG4bK-peers-" + NewToken(6) + ";rport\r\n" +
		"Max-Forwards: 70\r\n" +
		"From: <sip:probe@" + local + ">;tag=" + NewToken(4) + "\r\n" +
		"To: <sip:probe@" + target + ">\r\n" +
		"Call-ID: peers-probe-" + token + "\r\n" +
		"CSeq: 1 OPTIONS\r\n" +
		"X-Peers-Probe: " + token + "\r\n" +
		"Content-Length: 0\r\n\r\n"
}

// StatusCode returns the status code of a SIP response, or 0.
func StatusCode(resp string) int {
	var code int
	if _, err := fmt.Sscanf(resp, "SIP/2.0 %d", &code); err != nil {
		return 0
	}
	return code
}

// HeaderValue returns the value of the first header named name
// (case-insensitive; compact forms are not expanded) in a SIP message.
func HeaderValue(msg, name string) string {
	head, _, _ := strings.Cut(msg, "\r\n\r\n")
	for i, line := range strings.Split(head, "\r\n") {
		if i == 0 {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
