package config

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/authproxy/authproxy/credentials"
)

// WebSocket is the [websocket] table: what the connections of the "ws"
// and "wss" listeners may hold, together. A zero count or duration turns
// its limit off. Connections from a source no [[client]] group admits are
// closed at once whatever the limits.
type WebSocket struct {
	// MaxConnections bounds the client connections open at once over all
	// WebSocket listeners (default 10000); MaxConnectionsPerSource those
	// from one address (default 500).
	MaxConnections, MaxConnectionsPerSource int
	// HandshakeTimeout bounds the TLS handshake and HTTP upgrade together
	// (default 10s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection on which nothing arrived, not even
	// a Pong, for this long (default 2m).
	IdleTimeout time.Duration
	// PingInterval sends a WebSocket Ping after the client was quiet this
	// long (default 30s); browsers answer with a Pong.
	PingInterval time.Duration
	// MaxMessageSize is the largest SIP message accepted, in bytes
	// (default and most 32768, 4096 at least); a larger one closes the
	// connection with code 1009.
	MaxMessageSize int
}

// maxWSMessageSize is sipgo's WebSocket read buffer
// (sip.TransportBufferReadSize), the most a message may be.
const maxWSMessageSize = 32768

func (v *validator) buildWebSocket(w fileWebSocket) WebSocket {
	out := WebSocket{MaxConnections: w.MaxConnections, MaxConnectionsPerSource: w.MaxConnectionsPerSource, MaxMessageSize: w.MaxMessageSize}
	v.connectionCaps("websocket", w.MaxConnections, w.MaxConnectionsPerSource)
	out.HandshakeTimeout = v.tcpTimeout("websocket.handshake_timeout", w.HandshakeTimeout)
	out.IdleTimeout = v.tcpTimeout("websocket.idle_timeout", w.IdleTimeout)
	out.PingInterval = v.tcpTimeout("websocket.ping_interval", w.PingInterval)
	if out.HandshakeTimeout == 0 {
		v.add("websocket.handshake_timeout", strconv.Quote(w.HandshakeTimeout), "must not be 0: an upgrade that never completes would hold its connection", ErrInvalid, nil)
	}
	if out.IdleTimeout > 0 && out.PingInterval > 0 && out.IdleTimeout <= out.PingInterval {
		v.add("websocket.idle_timeout", strconv.Quote(w.IdleTimeout),
			fmt.Sprintf("must be longer than ping_interval (%s), or a quiet live client is closed before it is pinged", w.PingInterval), ErrInvalid, nil)
	}
	if w.MaxMessageSize < minMessageSize || w.MaxMessageSize > maxWSMessageSize {
		v.add("websocket.max_message_size", strconv.Itoa(w.MaxMessageSize),
			fmt.Sprintf("must be between %d and %d bytes (sipgo's WebSocket read buffer)", minMessageSize, maxWSMessageSize), ErrInvalid, nil)
	}
	return out
}

// webSocketListen validates the ws/wss-only keys of listen entry l into o;
// for other transports it reports them as misplaced.
func (v *validator) webSocketListen(key string, l fileListen, o *Listen) {
	if o.Transport != "ws" && o.Transport != "wss" {
		if l.Path != "" {
			v.add(key+".path", strconv.Quote(l.Path), `applies only to transport = "ws" or "wss"`, ErrInvalid, nil)
		}
		if len(l.Origins) > 0 {
			v.add(key+".origins", strconv.Quote(strings.Join(l.Origins, ", ")), `applies only to transport = "ws" or "wss"`, ErrInvalid, nil)
		}
		if l.TokenSecretEnv != nil || l.TokenSecretFile != nil {
			v.add(key, "token_secret", `token_secret_env and token_secret_file apply only to transport = "ws" or "wss"`, ErrInvalid, nil)
		}
		return
	}
	o.Path = "/"
	if l.Path != "" {
		if !strings.HasPrefix(l.Path, "/") || strings.ContainsAny(l.Path, "?# \t") {
			v.add(key+".path", strconv.Quote(l.Path), `must be an absolute URL path such as "/sip" (no query, no fragment)`, ErrInvalid, nil)
		}
		o.Path = l.Path
	}
	for i, origin := range l.Origins {
		u, err := url.Parse(origin)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			v.add(fmt.Sprintf("%s.origins[%d]", key, i), strconv.Quote(origin),
				`must be a web origin, scheme and host[:port] only, such as "https://app.example.com"`, ErrInvalid, nil)
			continue
		}
		o.Origins = append(o.Origins, lowerASCII(u.Scheme+"://"+u.Host))
	}
	v.tokenSecret(key, l, o)
}

// minTokenSecret is the shortest token secret accepted: 16 bytes, below
// which guessing an HMAC key becomes thinkable.
const minTokenSecret = 16

// tokenSecret loads a listener's token secret from its one source.
func (v *validator) tokenSecret(key string, l fileListen, o *Listen) {
	var val string
	switch {
	case l.TokenSecretEnv != nil && l.TokenSecretFile != nil:
		v.add(key, "token_secret_env, token_secret_file", "sets more than one secret source; set at most one", ErrInvalid, nil)
		return
	case l.TokenSecretEnv != nil:
		name := *l.TokenSecretEnv
		got, set := v.opts.lookupEnv(name)
		switch {
		case name == "":
			v.add(key+".token_secret_env", `""`, "must name an environment variable", ErrRequired, nil)
			return
		case !set || got == "":
			v.add(key+".token_secret_env", strconv.Quote(name), "environment variable is not set or empty", ErrRequired, nil)
			return
		}
		val = got
	case l.TokenSecretFile != nil:
		if *l.TokenSecretFile == "" {
			v.add(key+".token_secret_file", `""`, "must name a file", ErrRequired, nil)
			return
		}
		got, rule, err := readPasswordFile(v.opts.baseDir, *l.TokenSecretFile)
		if rule != "" {
			v.add(key+".token_secret_file", strconv.Quote(*l.TokenSecretFile), rule, ErrInvalid, err)
			return
		}
		val = got
	default:
		return
	}
	if len(val) < minTokenSecret {
		v.add(key+".token_secret", redacted, fmt.Sprintf("must be at least %d bytes", minTokenSecret), ErrInvalid, nil)
		return
	}
	o.TokenSecret = credentials.NewSecret(val)
}
