package proxy

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// sipgo logs what it cannot handle with the bytes that caused it: "failed
// to parse" with the whole datagram or TCP read (up to 64 kB), at ERROR,
// once per datagram. Those bytes are a client's or an upstream's (an
// Authorization header's digest response can be cracked offline), and
// anyone can send them as often as they like. Every logger authproxy gives
// sipgo (the user agent's layers, the server and client, sipgo's default
// logger) goes through sipgoLogHandler, which:
//   - redacts every value (redactText: Authorization and
//     Proxy-Authorization lines, digest response, cnonce and nonce values)
//     and cuts it at sipgoLogValueMax bytes;
//   - logs what outside input causes (sipgoInputMessages) at WARN, not
//     ERROR: the fault is the sender's;
//   - puts sipgo's levels on authproxy's scale (sipgoLevel): its INFO
//     lines are a library's chatter, DEBUG for authproxy; what a stopping
//     transport says about its own closed sockets ("UDP ref went
//     negative on try close", "use of closed network connection") is
//     DEBUG, not a warning on every shutdown;
//   - joins sipgo's nested "caller" attributes (TransportLayer, then
//     Transport<UDP>) into one, so that a JSON line has each key once, and
//     spells sipgo's misspelt messages right (sipgoMessages);
//   - lets one line of each message through per sipgoLogInterval at INFO
//     and above, the next one saying how many were held back
//     ("suppressed"); DEBUG lines, asked for, pass;
//   - hands each message the parser refused to the proxy (parseRefused),
//     which answers or counts it, however many lines are held back.
//
// These are all the places sipgo v1.7.3 puts message bytes in a log
// record: transport_udp.go, transport_tcp.go and transport_ws.go ("failed
// to parse", "data"). Request lines ("req", StartLine) and transaction keys
// elsewhere carry a Request-URI and a branch, no credentials, and are
// redacted and throttled the same way.

// sipgoLogValueMax is how much of one value sipgo logs is kept: enough to
// see what a message was (its start line and first headers), not a 64 kB
// copy of whatever a peer sent.
const sipgoLogValueMax = 512

// sipgoLogInterval is how often one kind of sipgo line (its message) may
// be logged at INFO and above.
const sipgoLogInterval = 10 * time.Second

// sipgoInputMessages are sipgo's log messages that outside input causes:
// logged at WARN at most.
var sipgoInputMessages = map[string]bool{
	"failed to parse":                                    true,
	"Server tx failed to handle request":                 true,
	"Client tx failed to handle response":                true,
	"Failed to send stateless 400 for malformed request": true,
}

// sipgoShutdownMessages are sipgo's warnings and errors about its own
// connections being closed: what every stop of its transports says, no
// fault of anyone's. DEBUG.
var sipgoShutdownMessages = map[string]bool{
	"UDP ref went negative on try close": true,
	"TCP ref went negative":              true,
	"WS ref went negative":               true,
	"connection pool not clean cleanup":  true,
	"Closing connection returned error":  true,
	"Failed to close listener":           true,
}

// sipgoMessages respells sipgo v1.7.3's misspelt messages.
var sipgoMessages = map[string]string{
	"Fail to accept conenction":                    "Fail to accept connection",
	"ACK loop retransimission. Resending after T2": "ACK loop retransmission. Resending after T2",
}

// sipgoCallerKey is the attribute sipgo names its layers with, once per
// layer ("TransportLayer", then "Transport<UDP>").
const sipgoCallerKey = "caller"

// closedConnection is the text of net.ErrClosed: an error carrying it is
// a read or accept on a socket the stop closed.
const closedConnection = "use of closed network connection"

// sipgoLevel returns the level authproxy logs r at: WARN at most for what
// outside input causes, DEBUG for shutdown noise and for sipgo's INFO
// chatter, r's own level otherwise.
func sipgoLevel(r slog.Record) slog.Level {
	switch {
	case sipgoShutdownMessages[r.Message] || recordHas(r, closedConnection):
		return slog.LevelDebug
	case sipgoInputMessages[r.Message]:
		return min(r.Level, slog.LevelWarn)
	case r.Level < slog.LevelWarn:
		return slog.LevelDebug
	}
	return r.Level
}

// recordHas reports whether any of r's attribute values (an error's text
// included) contains s.
func recordHas(r slog.Record, s string) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		v := a.Value.Resolve()
		var text string
		switch v.Kind() {
		case slog.KindString:
			text = v.String()
		case slog.KindAny:
			if err, ok := v.Any().(error); ok {
				text = err.Error()
			}
		}
		found = strings.Contains(text, s)
		return !found
	})
	return found
}

// sipgoParseFailed is sipgo's message for bytes its parser refused.
const sipgoParseFailed = "failed to parse"

// sipgoLogHandler wraps the handler of a logger authproxy gives sipgo.
type sipgoLogHandler struct {
	inner    slog.Handler
	throttle *logThrottle
	// callers are the "caller" values of WithAttrs, outermost first,
	// written as one attribute by Handle.
	callers []string
	// refused, if set, is given the bytes of every message the parser
	// refused (Proxy.parseRefused).
	refused func(data string)
}

// SipgoLogger returns l for sipgo's use (sip.SetDefaultLogger): values
// redacted and cut short, lines outside input causes at WARN at most and
// throttled. The proxy wraps the loggers it gives sipgo itself.
func SipgoLogger(l *slog.Logger) *slog.Logger {
	return slog.New(&sipgoLogHandler{inner: l.Handler(), throttle: newLogThrottle(sipgoLogInterval)})
}

// sipgoLogger returns the logger the proxy gives sipgo.
func (p *Proxy) sipgoLogger() *slog.Logger {
	h := &sipgoLogHandler{inner: p.log.Handler(), throttle: newLogThrottle(sipgoLogInterval), refused: p.parseRefused}
	return slog.New(h).With("component", "sipgo")
}

// Enabled lets ERROR records through whatever the level, for parse
// failures to be answered and counted; Handle decides what is written.
func (h *sipgoLogHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= slog.LevelError || h.inner.Enabled(ctx, level)
}

// Handle writes r redacted, at authproxy's level for it (sipgoLevel),
// unless throttled.
func (h *sipgoLogHandler) Handle(ctx context.Context, r slog.Record) error {
	level := sipgoLevel(r)
	if r.Message == sipgoParseFailed && h.refused != nil {
		if data, ok := recordString(r, "data"); ok {
			h.refused(data)
		}
	}
	if !h.inner.Enabled(ctx, level) {
		return nil
	}
	suppressed := 0
	if level >= slog.LevelInfo {
		ok, n := h.throttle.allow(r.Message, time.Now())
		if !ok {
			return nil
		}
		suppressed = n
	}
	msg := r.Message
	if m, ok := sipgoMessages[msg]; ok {
		msg = m
	}
	out := slog.NewRecord(r.Time, level, msg, r.PC)
	callers := h.callers
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == sipgoCallerKey {
			callers = append(callers[:len(callers):len(callers)], a.Value.String())
			return true
		}
		out.AddAttrs(redactAttr(a))
		return true
	})
	if len(callers) > 0 {
		out.AddAttrs(slog.String(sipgoCallerKey, strings.Join(callers, "/")))
	}
	if suppressed > 0 {
		out.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.inner.Handle(ctx, out)
}

// WithAttrs redacts attrs too, and keeps "caller" for Handle to join.
func (h *sipgoLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	callers := h.callers
	red := make([]slog.Attr, 0, len(attrs))
	for _, a := range attrs {
		if a.Key == sipgoCallerKey {
			callers = append(callers[:len(callers):len(callers)], a.Value.String())
			continue
		}
		red = append(red, redactAttr(a))
	}
	return &sipgoLogHandler{inner: h.inner.WithAttrs(red), throttle: h.throttle, refused: h.refused, callers: callers}
}

// WithGroup keeps the wrapping.
func (h *sipgoLogHandler) WithGroup(name string) slog.Handler {
	return &sipgoLogHandler{inner: h.inner.WithGroup(name), throttle: h.throttle, refused: h.refused, callers: h.callers}
}

// recordString returns the string value of r's attribute key.
func recordString(r slog.Record, key string) (string, bool) {
	var v string
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key && a.Value.Kind() == slog.KindString {
			v, found = a.Value.String(), true
			return false
		}
		return true
	})
	return v, found
}

// redactAttr returns a with its value redacted and cut short: strings,
// errors and anything else printed as text; groups member by member.
func redactAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, shorten(redactText(v.String())))
	case slog.KindGroup:
		g := v.Group()
		out := make([]any, len(g))
		for i, m := range g {
			out[i] = redactAttr(m)
		}
		return slog.Group(a.Key, out...)
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return slog.String(a.Key, shorten(redactText(err.Error())))
		}
		return slog.String(a.Key, shorten(redactText(v.String())))
	}
	return slog.Attr{Key: a.Key, Value: v}
}

// shorten cuts s at sipgoLogValueMax bytes, saying how much was left out.
func shorten(s string) string {
	if len(s) <= sipgoLogValueMax {
		return s
	}
	return s[:sipgoLogValueMax] + "…[" + strconv.Itoa(len(s)-sipgoLogValueMax) + " more bytes]"
}
