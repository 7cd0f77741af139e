package bench

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestTCPAttacks measures what two attacks on authproxy's TCP listener
// leave behind after a while: 500 idle connections from a source no client
// group admits, and 1,000 connections from admitted sources each holding
// 60 kB of a header block that never ends. For each it reports, after the
// hold time, the connections the attacker still has open, the sockets
// authproxy holds, and its heap: live (after a forced GC) before and
// after, and in use at its peak during the hold. authproxy runs with its
// default [tcp] settings.
//
//	AUTHPROXY_BENCH_TCP=1 go test ./bench -run TestTCPAttacks -v -timeout 10m
//
// AUTHPROXY_BENCH_TCP_HOLD sets the hold in seconds (default 30);
// AUTHPROXY_BENCH_BIN runs a binary built elsewhere (e.g. from another
// commit, for a before/after table) instead of building ./cmd/authproxy.
func TestTCPAttacks(t *testing.T) {
	if os.Getenv("AUTHPROXY_BENCH_TCP") == "" {
		t.Skip("set AUTHPROXY_BENCH_TCP=1 to run the TCP attack measurements")
	}
	hold := 30 * time.Second
	if s, err := strconv.Atoi(os.Getenv("AUTHPROXY_BENCH_TCP_HOLD")); err == nil && s > 0 {
		hold = time.Duration(s) * time.Second
	}
	bin := authproxyBinary(t)
	var b strings.Builder
	fmt.Fprintf(&b, "\n| attack | after %s: attacker's connections open | authproxy's sockets | heap: live before, in use at peak, live after |\n|---|---|---|---|\n", hold)
	for _, a := range []struct {
		name  string
		conns int
		from  func(i int) string // source address of connection i
		send  []byte
	}{
		{
			// 127.200.0.1 is outside the client group (127.0.0.0/9).
			name: "500 idle, refused source", conns: 500,
			from: func(int) string { return "127.200.0.1" },
		},
		{
			// Four admitted sources, under the per-source cap.
			name: "1,000 × 60 kB unfinished headers", conns: 1000,
			from: func(i int) string { return fmt.Sprintf("127.0.0.%d", 1+i%4) },
			send: unfinishedHeaders(60 << 10),
		},
	} {
		t.Run(a.name, func(t *testing.T) {
			admin, sip, proc := startAttackTarget(t, bin)
			sockets0 := socketCount(proc.Pid())
			heap0 := liveHeap(t, admin)
			conns := attack(t, sip, a.conns, a.from, a.send)
			peak := heap0
			deadline := time.Now().Add(hold)
			for time.Now().Before(deadline) {
				time.Sleep(time.Second)
				peak = max(peak, scrape(t, admin, "go_memstats_heap_inuse_bytes"))
			}
			open := stillOpen(conns)
			sockets := socketCount(proc.Pid()) - sockets0
			heap := liveHeap(t, admin)
			fmt.Fprintf(&b, "| %s | %d of %d | %d | %.1f, %.1f, %.1f MB |\n", a.name, open, a.conns, sockets,
				heap0/1e6, peak/1e6, heap/1e6)
			t.Logf("%s: open %d, sockets %d, heap %.1f MB (peak %.1f)\n%s", a.name, open, sockets, heap/1e6, peak/1e6,
				grepMetrics(t, admin, "authproxy_tcp_"))
		})
	}
	t.Log(b.String())
}

// startAttackTarget runs bin with an admin listener and one TCP listener,
// admitting 127.0.0.0/9, and returns the admin and SIP addresses once
// ready.
func startAttackTarget(t *testing.T, bin string) (admin, sip string, p *peers.Process) {
	t.Helper()
	sip = fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	admin = fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	conf := fmt.Sprintf(`[admin]
address = %q
pprof = true

[log]
level = "warn"
format = "json"

[proxy]
shutdown_grace = "1s"

[[listen]]
transport = "tcp"
address = %q

[[upstream]]
name = "pbx"
address = "127.0.0.2:5060"

[[credential]]
username = "bench"
password = "bench-Pw-0f3a"
server = "pbx"

[[client]]
name = "phones"
networks = ["127.0.0.0/9"]
upstreams = ["*"]
`, admin, sip)
	a := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: conf, Bin: bin, ReadyAdmin: admin})
	p = a.Process()
	return admin, sip, p
}

// attack opens n connections to sip from the addresses from gives, and
// writes send on each.
func attack(t *testing.T, sip string, n int, from func(int) string, send []byte) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from(i))}}
			c, err := d.Dial("tcp", sip)
			if err != nil {
				t.Errorf("connection %d: %v", i, err)
				return
			}
			conns[i] = c
			if send != nil {
				_, _ = c.Write(send)
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	return conns
}

// unfinishedHeaders is the start of a request: a start line and size
// bytes of header lines, without the empty line that would end them.
func unfinishedHeaders(size int) []byte {
	b := []byte("OPTIONS sip:pbx SIP/2.0\r\n")
	for i := 0; len(b) < size; i++ {
		b = fmt.Appendf(b, "X-Pad-%d: %s\r\n", i, strings.Repeat("p", 100))
	}
	return b[:size]
}

// stillOpen counts the connections the server has not closed: a read
// times out instead of ending.
func stillOpen(conns []net.Conn) int {
	n := 0
	for _, c := range conns {
		if c == nil {
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			n++
		}
	}
	return n
}

// liveHeap is authproxy's heap in use right after a forced GC: what is
// still referenced, not garbage waiting for the next cycle.
func liveHeap(t *testing.T, admin string) float64 {
	t.Helper()
	if err := savePprof(admin, "heap?gc=1", filepath.Join(t.TempDir(), "heap.pprof")); err != nil {
		t.Fatal(err)
	}
	return scrape(t, admin, "go_memstats_heap_inuse_bytes")
}

// socketCount is the number of sockets process pid holds.
func socketCount(pid int) int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}
