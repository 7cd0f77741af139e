// Package wsgate serves SIP over WebSocket (RFC 7118) to sipgo's WS and
// WSS transports, with the controls sipgo's own listener lacks. sipgo
// v1.7.3 upgrades every connection it accepts whatever its path, Origin or
// subprotocol, and its frame reader keeps text frames only, ignores control
// frames (no Pong) and has no idle timeout. A wsgate Listener sits in front:
//
//   - the caps of tcpguard (connections open in total and per source), and
//     the refusal of sources no client group admits, before any byte is
//     read or a TLS handshake started;
//   - the HTTP upgrade (RFC 6455 §4.2) under a handshake deadline, checked
//     here: method, path, the WebSocket headers, the page's Origin against
//     the allowed ones (403), the subprotocol "sip" (RFC 7118 §4), and,
//     when configured, a signed token in the URL or a header (401);
//   - after the upgrade, each connection reads the client's frames itself:
//     masked frames only (RFC 6455 §5.1), text and binary alike (RFC 7118
//     §4.2: both carry SIP), fragments joined, a message larger than the
//     maximum refused with close code 1009 before it is buffered, Pings
//     answered, a Ping sent when the client was quiet, and the connection
//     closed when nothing (not even a Pong) arrived for the idle timeout;
//   - sipgo then sees an already checked connection: its own upgrade is
//     fed a synthetic request and its 101 answer is dropped, and every
//     complete message reaches it as one masked text frame, as its reader
//     expects. What sipgo writes (unmasked text frames) goes out as it is.
//
// The connections sipgo dials itself never pass through here.
package wsgate

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// Limits bound what WebSocket connections may hold. A zero field turns its
// limit off, except MaxMessageSize and HandshakeTimeout, which default.
type Limits struct {
	// MaxConns bounds the client connections open at once over every
	// Listener of the Gate; MaxConnsPerSource those from one address.
	MaxConns, MaxConnsPerSource int
	// HandshakeTimeout bounds the TLS handshake and the HTTP upgrade
	// together (default 10s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection on which no frame (message, Ping or
	// Pong) arrived for this long.
	IdleTimeout time.Duration
	// PingInterval sends a Ping after the client was quiet this long; a
	// browser answers with a Pong (RFC 6455 §5.5.2), which keeps a live
	// connection from the idle timeout and its NAT binding open.
	PingInterval time.Duration
	// MaxMessageSize is the largest SIP message accepted, in bytes; a
	// larger one closes the connection with code 1009 (default 32768).
	MaxMessageSize int
}

// Defaults of Limits.
const (
	defaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxMessageSize is the read buffer of sipgo's WS transport
	// (sip.TransportBufferReadSize): a larger message would reach its
	// parser truncated.
	DefaultMaxMessageSize = 32768
	// writeTimeout bounds one frame written to a client that stopped
	// reading: the writer (a transaction, the pinger) must not hang on it.
	writeTimeout = 10 * time.Second
)

// Refusal and close reasons, as Stats and the logs name them.
const (
	ReasonSourceDenied   = tcpguard.ReasonSourceDenied
	ReasonPerSourceLimit = tcpguard.ReasonPerSourceLimit
	ReasonTotalLimit     = tcpguard.ReasonTotalLimit
	ReasonHandshake      = "handshake-failed" // timeout, TLS failure, not an upgrade
	ReasonOrigin         = "origin-denied"
	ReasonSubprotocol    = "no-sip-subprotocol"
	ReasonToken          = "token-denied"
	ReasonPath           = "wrong-path"
	ReasonIdle           = "idle-timeout"
	ReasonTooLarge       = "too-large"
	ReasonProtocol       = "protocol-error"
)

// Stats counts what a Gate did since it was made.
type Stats struct {
	// Open is the number of connections open now, upgraded or not.
	Open int
	// Upgraded counts connections handed to the SIP stack.
	Upgraded uint64
	// Refused counts connections closed before or at the upgrade, by
	// reason; Closed those the gate closed later.
	Refused, Closed map[string]uint64
}

// Config configures a Gate.
type Config struct {
	Limits Limits
	// Classify says who a source address is (nil: every source is a
	// Client); Refused sources are closed at once, Upstream ones are exempt
	// from the caps.
	Classify func(netip.Addr) tcpguard.Peer
	// Logger receives refusals (rate-limited) and closes (debug).
	Logger *slog.Logger
	// Inspect, when set, sees each complete message before the SIP stack:
	// it reports whether the message goes on, and an answer to send back
	// (nil: none). transport is "WS" or "WSS".
	Inspect func(msg []byte, transport string, from netip.AddrPort) (pass bool, answer []byte)
	// OnClose is called once for each upgraded connection when it closes,
	// whoever closed it.
	OnClose func(transport string, remote netip.AddrPort)
	// Tap, when set, sees each complete SIP message a connection reads
	// (before Inspect) and each one written on it (sent true): the SIP
	// stack's and the gate's own answers, without their WebSocket framing.
	// local and remote are the connection's addresses. It runs on the
	// reading or writing goroutine and must not keep msg.
	Tap func(msg []byte, sent bool, local, remote netip.AddrPort)
}

// Gate holds the limits, counts and statistics shared by its Listeners.
type Gate struct {
	cfg Config
	log *slog.Logger

	admission *tcpguard.Admission

	mu    sync.Mutex
	users map[netip.AddrPort]string // token user of each open connection that had one

	upgraded atomic.Uint64
	cmu      sync.Mutex
	refused  map[string]uint64
	closed   map[string]uint64

	lastRefusalLog atomic.Int64
}

// New returns a Gate for cfg.
func New(cfg Config) *Gate {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Limits.HandshakeTimeout <= 0 {
		cfg.Limits.HandshakeTimeout = defaultHandshakeTimeout
	}
	if cfg.Limits.MaxMessageSize <= 0 || cfg.Limits.MaxMessageSize > DefaultMaxMessageSize {
		cfg.Limits.MaxMessageSize = DefaultMaxMessageSize
	}
	return &Gate{cfg: cfg, log: log, admission: tcpguard.NewAdmission(cfg.Classify, cfg.Limits.MaxConns, cfg.Limits.MaxConnsPerSource),
		users:   map[netip.AddrPort]string{},
		refused: map[string]uint64{}, closed: map[string]uint64{}}
}

// Stats returns what the gate counted so far.
func (g *Gate) Stats() Stats {
	g.cmu.Lock()
	defer g.cmu.Unlock()
	s := Stats{Open: g.admission.Open(), Upgraded: g.upgraded.Load(), Refused: map[string]uint64{}, Closed: map[string]uint64{}}
	for k, v := range g.refused {
		s.Refused[k] = v
	}
	for k, v := range g.closed {
		s.Closed[k] = v
	}
	return s
}

// TokenUser returns the user the token of the open connection from remote
// named, or "" when it had none (or is closed).
func (g *Gate) TokenUser(remote netip.AddrPort) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.users[remote]
}

// admit decides whether a connection from src is served: the peer kind,
// or a refusal reason.
func (g *Gate) admit(src netip.Addr) (tcpguard.Peer, string) {
	peer, why := g.admission.Admit(src)
	return peer, refusalReasons[why]
}

// refusalReasons is the reason of each refusal of tcpguard.Admission.
var refusalReasons = [...]string{tcpguard.NotRefused: "", tcpguard.SourceDenied: ReasonSourceDenied,
	tcpguard.TotalLimit: ReasonTotalLimit, tcpguard.PerSourceLimit: ReasonPerSourceLimit}

// refusal counts a connection refused for reason and logs it, at most one
// line a second (a flood must not become a log flood).
func (g *Gate) refusal(reason string, src netip.AddrPort, listener string) {
	g.cmu.Lock()
	g.refused[reason]++
	g.cmu.Unlock()
	now := time.Now().UnixNano()
	last := g.lastRefusalLog.Load()
	if now-last < int64(time.Second) || !g.lastRefusalLog.CompareAndSwap(last, now) {
		return
	}
	g.log.Warn("websocket connection refused", "reason", reason, "source", src.String(), "listener", listener)
}

// closedFor counts a connection the gate closed after its upgrade.
func (g *Gate) closedFor(reason string) {
	g.cmu.Lock()
	defer g.cmu.Unlock()
	g.closed[reason]++
}
