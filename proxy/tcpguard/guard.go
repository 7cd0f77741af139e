// Package tcpguard keeps SIP's TCP and TLS listeners serving under attack
// and when the process runs out of file descriptors. It wraps a
// net.Listener and the connections it accepts, below the SIP stack:
//
//   - the accept loop retries failed accepts (EMFILE, ENFILE, ...) with a
//     backoff from 5 ms doubling to 1 s, as net/http's Server.Serve does,
//     logging at most one line every few seconds, instead of stopping;
//   - a connection from a source the Classify function refuses, or beyond
//     the caps on connections open (in total, per source address), is
//     closed at once, before it is read or, for TLS, handshaken;
//   - each connection has deadlines: the TLS handshake, the first complete
//     message, any message in progress (a header trickled a byte at a time
//     cannot hold it), and the idle time between messages;
//   - a Framer follows the message boundaries of the stream (RFC 3261
//     §18.3) and stops a message larger than the maximum size before the
//     SIP stack sees all of it: the request is answered 513 (Message Too
//     Large, §21.5.14) when its headers allow, and the connection closed;
//   - with Config.Inspect, each complete message is shown to it before the
//     SIP stack reads it, and dropped (or answered) when it says so;
//   - with Config.Divert, a message may be taken from the SIP stack
//     altogether and answered later on the connection (Stream).
//
// CRLF keep-alives between messages (RFC 5626 §3.5.1) are taken out of the
// stream: a double CRLF is answered with a CRLF, and every CRLF counts as
// activity for the idle timeout, since keeping a client's connection (and
// its NAT binding) open is what they are for.
//
// Connections the SIP stack dials itself (to upstreams) never pass through
// a Listener and are not subject to any of this.
package tcpguard

import (
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"
)

// Limits bound what inbound connections may hold. A zero field turns its
// limit off.
type Limits struct {
	// MaxConns bounds the client connections open at once, over every
	// Listener of the Guard.
	MaxConns int
	// MaxConnsPerSource bounds the client connections open at once from
	// one source address.
	MaxConnsPerSource int
	// IdleTimeout closes a connection on which no message and no
	// keep-alive arrived for this long after its last message.
	IdleTimeout time.Duration
	// MessageTimeout closes a connection whose first complete message has
	// not arrived this long after it was accepted (after the TLS
	// handshake), or whose message in progress has not completed this long
	// after its first byte.
	MessageTimeout time.Duration
	// HandshakeTimeout closes a TLS connection whose handshake has not
	// completed this long after it was accepted.
	HandshakeTimeout time.Duration
	// MaxMessageSize is the largest message (start line, headers and
	// body) accepted; a larger one is answered 513 when it is a request
	// with the headers a response needs, and the connection is closed.
	MaxMessageSize int
}

// Peer is who a connection comes from, as Config.Classify decides.
type Peer uint8

// The kinds of peer.
const (
	// Refused: no client group admits the source; the connection is closed
	// at once.
	Refused Peer = iota
	// Client: an admitted client, subject to the caps.
	Client
	// Upstream: a configured upstream, exempt from the caps (a flood of
	// clients must not lock out the PBX) but not from the deadlines.
	Upstream
)

// Config configures a Guard.
type Config struct {
	Limits Limits
	// Classify says who a source address is. nil treats every source as a
	// Client.
	Classify func(netip.Addr) Peer
	// Logger receives refusals and accept failures (rate-limited) and each
	// connection the guard closes (debug). nil discards.
	Logger *slog.Logger
	// Inspect, when set, sees each complete message of a connection before
	// the SIP stack reads any of it: the connection holds a message's
	// bytes back until its last one arrived. It reports whether the message
	// goes on to the SIP stack, and an answer to write on the connection
	// (nil: none). transport is "TCP" or "TLS", from the connection's
	// remote address. It runs on the connection's reading goroutine and
	// must not keep msg.
	Inspect func(msg []byte, transport string, from netip.AddrPort) (pass bool, answer []byte)
	// Divert, when set, is offered each complete message Inspect let
	// through (each one, without Inspect) and reports whether it took it:
	// the SIP stack then never reads it, and whatever answers it is
	// written with s.WriteMessage, then or later. It runs on the
	// connection's reading goroutine, after Inspect, and must not keep
	// msg.
	Divert func(msg []byte, s Stream) bool
	// Tap, when set, sees each complete message a connection reads (before
	// Inspect) and everything written on it (sent true): the SIP stack's
	// writes, one message each, and the guard's own (answers, CRLF
	// pongs). local and remote are the connection's addresses. It runs on
	// the reading or writing goroutine and must not keep msg.
	Tap func(msg []byte, sent bool, local, remote netip.AddrPort)
}

// Refusal and close reasons, as Stats and the logs name them.
const (
	ReasonSourceDenied   = "source-denied"
	ReasonPerSourceLimit = "per-source-limit"
	ReasonTotalLimit     = "total-limit"
	ReasonIdle           = "idle-timeout"
	ReasonMessage        = "message-timeout"
	ReasonHandshake      = "handshake-timeout"
	ReasonTooLarge       = "too-large"
	ReasonMalformed      = "malformed"
	ReasonTLSFailed      = "tls-failed"
)

// Stats counts what a Guard did since it was made.
type Stats struct {
	// Open is the number of connections open now (clients and upstreams).
	Open int
	// Accepted counts connections admitted.
	Accepted uint64
	// Refused counts connections closed at once, by reason:
	// ReasonSourceDenied, ReasonPerSourceLimit, ReasonTotalLimit.
	Refused map[string]uint64
	// Closed counts connections the guard closed later, by reason:
	// ReasonIdle, ReasonMessage, ReasonHandshake (the timeouts),
	// ReasonTooLarge, ReasonMalformed, ReasonTLSFailed.
	Closed map[string]uint64
	// AcceptErrors counts failed accepts that were retried.
	AcceptErrors uint64
}

// counter indexes Guard.counts.
type counter int

const (
	cNone counter = iota // no counter: "nothing to count" where a counter is returned
	cAccepted
	cSourceDenied
	cPerSource
	cTotal
	cIdle
	cMessage
	cHandshake
	cTooLarge
	cMalformed
	cTLSFailed
	cAcceptErrors
	numCounters
)

var counterReasons = [numCounters]string{
	cSourceDenied: ReasonSourceDenied, cPerSource: ReasonPerSourceLimit, cTotal: ReasonTotalLimit,
	cIdle: ReasonIdle, cMessage: ReasonMessage, cHandshake: ReasonHandshake,
	cTooLarge: ReasonTooLarge, cMalformed: ReasonMalformed, cTLSFailed: ReasonTLSFailed,
}

// Guard holds the limits, the connection counts and the statistics shared
// by the Listeners it wraps.
type Guard struct {
	cfg Config
	log *slog.Logger

	admission *Admission
	counts    [numCounters]atomic.Uint64

	// refusalLog rate-limits the refusal lines: a flood must not turn into
	// a log flood.
	refusalLog rateLimit
}

// refusalLogEvery is the least time between two log lines about refused
// connections; the lines in between are counted in the next one.
const refusalLogEvery = time.Second

// New returns a Guard for cfg.
func New(cfg Config) *Guard {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Guard{cfg: cfg, log: log, admission: NewAdmission(cfg.Classify, cfg.Limits.MaxConns, cfg.Limits.MaxConnsPerSource)}
}

// Stats returns what the guard counted so far.
func (g *Guard) Stats() Stats {
	s := Stats{
		Open:         g.admission.Open(),
		Accepted:     g.counts[cAccepted].Load(),
		AcceptErrors: g.counts[cAcceptErrors].Load(),
		Refused:      map[string]uint64{},
		Closed:       map[string]uint64{},
	}
	for c := cSourceDenied; c <= cTotal; c++ {
		s.Refused[counterReasons[c]] = g.counts[c].Load()
	}
	for c := cIdle; c <= cTLSFailed; c++ {
		s.Closed[counterReasons[c]] = g.counts[c].Load()
	}
	return s
}

// admit decides whether a connection from src is served; it returns the
// peer kind, or the counter of the refusal.
func (g *Guard) admit(src netip.Addr) (Peer, counter) {
	peer, why := g.admission.Admit(src)
	return peer, refusalCounters[why]
}

// refusalCounters is the counter of each refusal of Admission.
var refusalCounters = [...]counter{NotRefused: cAccepted, SourceDenied: cSourceDenied, TotalLimit: cTotal, PerSourceLimit: cPerSource}

// refused counts and logs (rate-limited) a connection closed at once.
func (g *Guard) refused(c counter, src netip.Addr, listener string) {
	g.counts[c].Add(1)
	if ok, skipped := g.refusalLog.allow(time.Now(), refusalLogEvery); ok {
		g.log.Warn("tcp connection refused", "reason", counterReasons[c], "source", src.String(),
			"listener", listener, "refused_since_last_line", skipped+1)
	}
}

// rateLimit lets one event through per interval and counts the others.
type rateLimit struct {
	last    atomic.Int64 // unix nanos of the last event let through
	skipped atomic.Uint64
}

// allow reports whether an event at now may be logged, and how many were
// not since the last one that was.
func (r *rateLimit) allow(now time.Time, every time.Duration) (bool, uint64) {
	last := r.last.Load()
	if now.UnixNano()-last < int64(every) || !r.last.CompareAndSwap(last, now.UnixNano()) {
		r.skipped.Add(1)
		return false, 0
	}
	return true, r.skipped.Swap(0)
}
