package bench

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/icholy/digest"
)

// clientMode is how the latency client deals with the upstream's
// challenges.
type clientMode int

const (
	// bare sends every request without credentials: the way through
	// authproxy, which answers the challenges.
	bare clientMode = iota
	// ownNonce answers the upstream's first challenge and sends every
	// request with credentials for that nonce (nc counting up): one round
	// trip a request, as authproxy's preemptive answers make it.
	ownNonce
	// answerEach sends every request without credentials and answers its
	// 407 with the request again, credentials added (RFC 3261 §22.3: same
	// Call-ID and From tag, CSeq + 1, a new branch): two round trips a
	// request, as every request challenged makes it. Its response time
	// runs from the first send to the 200.
	answerEach
)

// latencyClient is the load generator of TestLatency: its transport
// toward the path and its way with challenges.
type latencyClient struct {
	tcp  bool // one TCP connection; UDP otherwise
	mode clientMode
}

type latencyResult struct {
	name    string
	n, lost int
	// rtts are the response times to the response's arrival at the
	// client's socket; readRtts to the client's reading it. Both sorted.
	rtts, readRtts []time.Duration
}

func (r latencyResult) p(q float64) time.Duration { return percentile(r.rtts, q) }

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))].Round(time.Microsecond)
}

// probe builds the latency client's MESSAGEs: request i, its CSeq number
// (2 for the answer to a challenge) and Proxy-Authorization value.
type probe struct {
	transport, local, uri string
}

func (p probe) message(i, cseq int, authz string) []byte {
	var h string
	if authz != "" {
		h = "Proxy-Authorization: " + authz + "\r\n"
	}
	body := "latency probe"
	return fmt.Appendf(nil, "MESSAGE %s SIP/2.0\r\nVia: SIP/2.0/%s %s;branch=z9hG4bK-lat%d-%d;rport\r\nMax-Forwards: 70\r\n"+
		"From: <%s>;tag=lat%d\r\nTo: <%s>\r\nCall-ID: lat-%d@bench\r\nCSeq: %d MESSAGE\r\n%sContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
		p.uri, p.transport, p.local, i, cseq, p.uri, i, p.uri, i, cseq, h, len(body), body)
}

// answer returns the Proxy-Authorization for request i that answers the
// challenge in a 407.
func (p probe) answer(resp []byte, count int) (string, error) {
	v := header(resp, "Proxy-Authenticate")
	if v == "" {
		return "", errors.New("407 without Proxy-Authenticate")
	}
	chal, err := digest.ParseChallenge(v)
	if err != nil {
		return "", fmt.Errorf("challenge %q: %w", v, err)
	}
	cred, err := digest.Digest(chal, digest.Options{Method: "MESSAGE", URI: p.uri, Username: benchUser, Password: benchPass, Count: count})
	if err != nil {
		return "", fmt.Errorf("answer the challenge: %w", err)
	}
	return cred.String(), nil
}

// header returns the value of the first header field name in a SIP
// message, "" when absent.
func header(m []byte, name string) string {
	head, _, _ := bytes.Cut(m, []byte("\r\n\r\n"))
	for _, l := range strings.Split(string(head), "\r\n")[1:] {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// probeIndex returns the request number in a response's Call-ID.
func probeIndex(m []byte) (int, bool) {
	i := bytes.Index(m, []byte("Call-ID: lat-"))
	if i < 0 {
		return 0, false
	}
	rest := m[i+len("Call-ID: lat-"):]
	j := bytes.IndexByte(rest, '@')
	k, err := strconv.Atoi(string(rest[:max(j, 0)]))
	return k, err == nil
}

// runLatency sends rate MESSAGEs a second to dst for seconds as client c
// and returns the response times of those sent after warmup.
func runLatency(t *testing.T, dst string, c latencyClient, rate, seconds, warmup int, name string) latencyResult {
	t.Helper()
	conn := dialLatency(t, dst, c.tcp)
	defer conn.close()
	pr := probe{transport: conn.transport(), local: conn.local(), uri: fmt.Sprintf("sip:%s@%s", benchUser, domain)}
	var authz func(i int) string
	if c.mode == ownNonce {
		authz = firstNonce(t, conn, pr, dst)
	}
	total := rate * seconds
	sent := make([]time.Time, total)
	got := make([]time.Duration, total)
	arrived := make([]time.Duration, total)
	var mu sync.Mutex
	done := make(chan struct{})
	answered := make([]bool, total)
	go func() { // the receiver
		defer close(done)
		for {
			msgs, at, err := conn.recv(time.Now().Add(3 * time.Second))
			now := time.Now()
			if err != nil {
				return
			}
			for _, m := range msgs {
				k, ok := probeIndex(m)
				if !ok || k < 0 || k >= total {
					continue
				}
				if c.mode == answerEach && bytes.HasPrefix(m, []byte("SIP/2.0 407")) && !answered[k] {
					answered[k] = true
					a, err := pr.answer(m, 1)
					if err != nil {
						t.Error(err)
						return
					}
					if err := conn.send(pr.message(k, 2, a)); err != nil {
						t.Error(err)
						return
					}
					continue
				}
				if !bytes.HasPrefix(m, []byte("SIP/2.0 200")) {
					continue
				}
				mu.Lock()
				if got[k] == 0 {
					got[k] = now.Sub(sent[k])
					arrived[k] = at.Sub(sent[k])
				}
				mu.Unlock()
			}
		}
	}()
	start := time.Now()
	var lateSends int // requests that left over 2 ms after their time
	for i := range total {
		// Paced by the clock: request i leaves at start + i/rate.
		due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		} else if d < -2*time.Millisecond && i >= rate*warmup {
			lateSends++
		}
		a := ""
		if authz != nil {
			a = authz(i)
		}
		m := pr.message(i, 1, a)
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		if err := conn.send(m); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	r := latencyResult{name: name}
	mu.Lock()
	defer mu.Unlock()
	for i := rate * warmup; i < total; i++ {
		r.n++
		if got[i] == 0 {
			r.lost++
			continue
		}
		r.rtts = append(r.rtts, arrived[i])
		r.readRtts = append(r.readRtts, got[i])
	}
	if os.Getenv("AUTHPROXY_BENCH_OUTPUT") != "" {
		t.Logf("%s: %d requests left the client over 2 ms late; slow windows (start: requests over 2 ms/slowest): %s", name, lateSends, slowWindows(arrived, rate, warmup))
	}
	slices.Sort(r.rtts)
	slices.Sort(r.readRtts)
	return r
}

// firstNonce sends one request without credentials to dst, reads the
// challenge and returns the Proxy-Authorization of request i for that
// nonce (nc = i+1).
func firstNonce(t *testing.T, conn *latencyConn, pr probe, dst string) func(i int) string {
	t.Helper()
	if err := conn.send(pr.message(-1, 1, "")); err != nil {
		t.Fatal(err)
	}
	msgs, _, err := conn.recv(time.Now().Add(2 * time.Second))
	if err != nil || len(msgs) == 0 {
		t.Fatalf("no challenge from %s: %v", dst, err)
	}
	if _, err := pr.answer(msgs[0], 1); err != nil {
		t.Fatalf("%s: %v:\n%s", dst, err, msgs[0])
	}
	return func(i int) string {
		a, err := pr.answer(msgs[0], i+1)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
}

// slowWindows says when the slow responses were: per 100 ms of sending,
// how many took over 2 ms and the slowest, for the windows that had any.
func slowWindows(arrived []time.Duration, rate, warmup int) string {
	bin := max(1, rate/10)
	var line strings.Builder
	for b0 := rate * warmup; b0 < len(arrived); b0 += bin {
		slow, worst := 0, time.Duration(0)
		for i := b0; i < min(b0+bin, len(arrived)); i++ {
			if arrived[i] > 2*time.Millisecond {
				slow++
			}
			worst = max(worst, arrived[i])
		}
		if slow > 0 {
			fmt.Fprintf(&line, "%.1fs:%d/%v ", float64(b0)/float64(rate), slow, worst.Round(100*time.Microsecond))
		}
	}
	return line.String()
}

// latencyConn is the latency client's socket: a UDP socket, or one TCP
// connection whose byte stream it splits into SIP messages (RFC 3261
// §18.3: Content-Length frames the body).
type latencyConn struct {
	udp     *net.UDPConn
	raddr   *net.UDPAddr
	tcp     *net.TCPConn
	wmu     sync.Mutex // TCP writes come from the sender and the receiver
	pending []byte     // TCP bytes read but not yet a whole message
	stamps  bool       // the kernel stamps what arrives (SO_TIMESTAMPNS)
	buf     []byte
	oob     []byte
}

func dialLatency(t *testing.T, dst string, tcp bool) *latencyConn {
	t.Helper()
	c := &latencyConn{buf: make([]byte, 65535), oob: make([]byte, 128)}
	if tcp {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 5)}, Timeout: 5 * time.Second}
		conn, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		c.tcp = conn.(*net.TCPConn)
		_ = c.tcp.SetNoDelay(true)
	} else {
		conn, err := net.ListenPacket("udp", "127.0.0.5:0")
		if err != nil {
			t.Fatal(err)
		}
		c.udp = conn.(*net.UDPConn)
		_ = c.udp.SetReadBuffer(4 << 20)
		if c.raddr, err = net.ResolveUDPAddr("udp", dst); err != nil {
			t.Fatal(err)
		}
	}
	c.stamps = enableRxTimestamps(t, c.syscallConn(t))
	return c
}

func (c *latencyConn) syscallConn(t *testing.T) syscall.RawConn {
	t.Helper()
	var raw syscall.RawConn
	var err error
	if c.tcp != nil {
		raw, err = c.tcp.SyscallConn()
	} else {
		raw, err = c.udp.SyscallConn()
	}
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func (c *latencyConn) transport() string {
	if c.tcp != nil {
		return "TCP"
	}
	return "UDP"
}

func (c *latencyConn) local() string {
	if c.tcp != nil {
		return c.tcp.LocalAddr().String()
	}
	return c.udp.LocalAddr().String()
}

func (c *latencyConn) close() {
	if c.tcp != nil {
		_ = c.tcp.Close()
	} else {
		_ = c.udp.Close()
	}
}

func (c *latencyConn) send(m []byte) error {
	if c.udp != nil {
		_, err := c.udp.WriteTo(m, c.raddr)
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.tcp.Write(m)
	return err
}

// recv waits until deadline for what arrives next and returns the whole
// messages in it and when it reached the socket: the kernel's stamp
// (for TCP, of the last segment read, so a message that arrived earlier in
// the same read counts as late as that), or the time it was read.
func (c *latencyConn) recv(deadline time.Time) ([][]byte, time.Time, error) {
	if c.udp != nil {
		_ = c.udp.SetReadDeadline(deadline)
		n, oobn, _, _, err := c.udp.ReadMsgUDP(c.buf, c.oob)
		at := time.Now()
		if err != nil {
			return nil, at, err
		}
		if c.stamps {
			at = rxTimestamp(c.oob[:oobn], at)
		}
		return [][]byte{slices.Clone(c.buf[:n])}, at, nil
	}
	_ = c.tcp.SetReadDeadline(deadline)
	raw, err := c.tcp.SyscallConn()
	if err != nil {
		return nil, time.Now(), err
	}
	var n, oobn int
	var rerr error
	if err := raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = syscall.Recvmsg(int(fd), c.buf, c.oob, 0)
		return rerr != syscall.EAGAIN
	}); err != nil {
		return nil, time.Now(), err
	}
	at := time.Now()
	if rerr != nil {
		return nil, at, rerr
	}
	if n == 0 {
		return nil, at, errors.New("connection closed by the proxy")
	}
	if c.stamps {
		at = rxTimestamp(c.oob[:oobn], at)
	}
	c.pending = append(c.pending, c.buf[:n]...)
	var msgs [][]byte
	for {
		m, rest, ok := frame(c.pending)
		if !ok {
			break
		}
		msgs = append(msgs, m)
		c.pending = rest
	}
	c.pending = slices.Clone(c.pending)
	return msgs, at, nil
}

// frame cuts the first whole SIP message off a stream: headers to the
// blank line, then Content-Length bytes of body (RFC 3261 §18.3). Keepalive
// CRLFs before it (RFC 5626 §3.5.1) are skipped.
func frame(b []byte) (msg, rest []byte, ok bool) {
	b = bytes.TrimLeft(b, "\r\n")
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		return nil, b, false
	}
	head := b[:end+4]
	length := 0
	if v := header(head, "Content-Length"); v != "" {
		length, _ = strconv.Atoi(v)
	} else if v := header(head, "l"); v != "" {
		length, _ = strconv.Atoi(v)
	}
	if len(b) < len(head)+length {
		return nil, b, false
	}
	n := len(head) + length
	return slices.Clone(b[:n]), b[n:], true
}

// enableRxTimestamps asks the kernel to stamp what the socket receives with
// its arrival time (SO_TIMESTAMPNS; for TCP, the last segment of each
// read), so that a response's time is when it reached the client's socket,
// not when the client's goroutine, which shares the machine's two cores
// with everything measured, got to read it.
func enableRxTimestamps(t *testing.T, raw syscall.RawConn) bool {
	t.Helper()
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		t.Logf("no kernel receive timestamps (%v %v): response times are when the client read them", err, serr)
		return false
	}
	return true
}

// rxTimestamp returns the kernel's arrival stamp in a datagram's control
// messages, or fallback.
func rxTimestamp(oob []byte, fallback time.Time) time.Time {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return fallback
	}
	for _, m := range msgs {
		if m.Header.Level == syscall.SOL_SOCKET && m.Header.Type == syscall.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return time.Unix(sec, nsec)
		}
	}
	return fallback
}
