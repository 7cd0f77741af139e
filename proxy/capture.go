package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/authproxy/authproxy/proxy/hep"
)

// Capture is Config.Capture: a copy of every SIP message authproxy reads
// or writes on its sockets, sent as a HEPv3 packet (proxy/hep) over UDP
// to a receiver such as Homer's heplify-server or sngrep. The zero value
// captures nothing.
type Capture struct {
	// HEP is the receiver's "host:port" (UDP); "" turns capture off. A
	// name is resolved once, when Run starts; when that fails, Run logs an
	// error and serves without capture.
	HEP string
	// AgentID is sent as the capture agent id (HEPv3 chunk 12), telling
	// one authproxy from another at the receiver.
	AgentID uint32
	// AuthKey, when set, is sent in every packet (HEPv3 chunk 14) for
	// receivers that check one.
	AuthKey string
	// KeepCredentials sends the digest response, cnonce and rspauth
	// values unredacted (redactCredentials); by default they are replaced
	// by "[redacted]".
	KeepCredentials bool
}

// Capture's queue bounds. The SIP path never waits for the receiver: a
// message that does not fit is dropped and counted. The sender keeps up
// with some 120,000 messages a second (BenchmarkCaptureSend), three times
// the proxy's peak (7,000 challenged MESSAGEs a second, six messages
// each); 4,096 messages absorb 0.1 s of that peak while the sender waits
// for a CPU. 16 MB bounds the memory when messages are large (at most
// MaxMessageSize each).
const (
	captureQueueLen   = 4096
	captureQueueBytes = 16 << 20
)

// Reasons a captured message was not sent, as CaptureStats.Dropped
// counts them.
const (
	CaptureQueueFull  = "queue-full" // the receiver or the sender fell behind
	CaptureTooLarge   = "too-large"  // the message does not fit in one HEPv3 packet
	CaptureSendFailed = "send-failed"
)

// CaptureStats counts what HEP capture did since Run started.
type CaptureStats struct {
	// Sent counts the HEPv3 packets sent.
	Sent uint64
	// Dropped counts the messages not sent, by reason: CaptureQueueFull,
	// CaptureTooLarge, CaptureSendFailed.
	Dropped map[string]uint64
}

// capturedMsg is one message read or written, as the SIP path hands it
// over: a copy of its bytes and where it went.
type capturedMsg struct {
	at       time.Time
	src, dst netip.AddrPort
	proto    uint8
	data     []byte
}

// capturer queues copies of the messages the taps see and sends them from
// one goroutine (run). A nil *capturer captures nothing; its methods are
// safe to call.
type capturer struct {
	cfg    Capture
	conn   net.Conn
	log    *slog.Logger
	queue  chan capturedMsg
	queued atomic.Int64 // bytes in queue

	sent                            atomic.Uint64
	queueFull, tooLarge, sendFailed atomic.Uint64
}

// validateCapture checks Config.Capture.
func validateCapture(c Capture) error {
	if c.HEP == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(c.HEP)
	if err != nil {
		return fmt.Errorf("capture hep %q: want host:port: %w", c.HEP, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
		return fmt.Errorf("capture hep %q: want host:port with a port 1..65535", c.HEP)
	}
	return nil
}

// newCapturer resolves the receiver and opens the UDP socket packets go
// out on; nil without a receiver configured.
func newCapturer(ctx context.Context, cfg Capture, log *slog.Logger) (*capturer, error) {
	if cfg.HEP == "" {
		return nil, nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", cfg.HEP)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	return &capturer{cfg: cfg, conn: conn, log: log, queue: make(chan capturedMsg, captureQueueLen)}, nil
}

// tap hands a copy of data, a message read or written with proto (hep.ProtoUDP
// or hep.ProtoTCP) from src to dst, to the sending goroutine. It never
// blocks: when the queue is full the message is dropped and counted.
// CRLF keep-alives (RFC 5626 §3.5.1) are no messages and are left out.
func (c *capturer) tap(data []byte, proto uint8, src, dst netip.AddrPort) {
	if c == nil || len(data) == 0 || isKeepAlive(data) {
		return
	}
	at := time.Now()
	if c.queued.Add(int64(len(data))) > captureQueueBytes {
		c.queued.Add(-int64(len(data)))
		c.queueFull.Add(1)
		return
	}
	m := capturedMsg{at: at, src: src, dst: dst, proto: proto, data: append([]byte(nil), data...)}
	select {
	case c.queue <- m:
	default:
		c.queued.Add(-int64(len(data)))
		c.queueFull.Add(1)
	}
}

// isKeepAlive reports whether data is only CR and LF bytes.
func isKeepAlive(data []byte) bool {
	for _, b := range data {
		if b != '\r' && b != '\n' {
			return false
		}
	}
	return true
}

// run sends the queued messages until ctx is done, then what is still
// queued, and closes the socket.
func (c *capturer) run(ctx context.Context) {
	if c == nil {
		return
	}
	defer c.conn.Close()
	var buf []byte
	for {
		select {
		case m := <-c.queue:
			buf = c.send(buf[:0], m)
		case <-ctx.Done():
			for {
				select {
				case m := <-c.queue:
					buf = c.send(buf[:0], m)
				default:
					return
				}
			}
		}
	}
}

// send encodes m into buf and sends it; it returns buf for the next one.
func (c *capturer) send(buf []byte, m capturedMsg) []byte {
	c.queued.Add(-int64(len(m.data)))
	payload := m.data
	if !c.cfg.KeepCredentials {
		payload = redactCredentials(payload)
	}
	p := hep.Packet{
		Src: m.src, Dst: m.dst, Proto: m.proto, Time: m.at,
		AgentID: c.cfg.AgentID, AuthKey: c.cfg.AuthKey,
		CorrelationID: captureCorrelation(payload), Payload: payload,
	}
	buf, err := hep.Append(buf, &p)
	switch {
	case errors.Is(err, hep.ErrTooLarge):
		c.tooLarge.Add(1)
		return buf
	case err != nil:
		c.sendFailed.Add(1) // no address: nothing the receiver could show
		return buf
	}
	if _, err := c.conn.Write(buf); err != nil {
		if c.sendFailed.Add(1) == 1 {
			c.log.Warn("cannot send to the HEP receiver; further failures are only counted", "receiver", c.cfg.HEP, "error", err)
		}
		return buf
	}
	c.sent.Add(1)
	return buf
}

// stats returns what c counted; zero counts for a nil c.
func (c *capturer) stats() CaptureStats {
	s := CaptureStats{Dropped: map[string]uint64{CaptureQueueFull: 0, CaptureTooLarge: 0, CaptureSendFailed: 0}}
	if c == nil {
		return s
	}
	s.Sent = c.sent.Load()
	s.Dropped[CaptureQueueFull] = c.queueFull.Load()
	s.Dropped[CaptureTooLarge] = c.tooLarge.Load()
	s.Dropped[CaptureSendFailed] = c.sendFailed.Load()
	return s
}

// CaptureStats returns what HEP capture counted (all zero when it is off).
func (p *Proxy) CaptureStats() CaptureStats { return p.capture.Load().stats() }
