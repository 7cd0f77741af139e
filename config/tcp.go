package config

import (
	"fmt"
	"strconv"
	"time"
)

// TCP is the [tcp] table: what one connection to a TCP or TLS listener,
// and all of them together, may hold. A zero count or duration turns its
// limit off. Connections authproxy opens to upstreams are not limited;
// connections from a source no [[client]] group admits (and that is no
// upstream's address) are closed at once whatever the limits.
type TCP struct {
	// MaxConnections bounds the client connections open at once, over all
	// TCP and TLS listeners (default 10000). Upstreams' connections are not
	// counted.
	MaxConnections int
	// MaxConnectionsPerSource bounds the client connections open at once
	// from one address (default 500: the phones of a site behind one NAT).
	MaxConnectionsPerSource int
	// IdleTimeout closes a connection that carried no message and no
	// keep-alive for this long since its last message (default 1h).
	IdleTimeout time.Duration
	// MessageTimeout bounds the wait for a connection's first complete
	// message, and for any message from its first byte to its last
	// (default 10s).
	MessageTimeout time.Duration
	// HandshakeTimeout bounds a TLS handshake (default 10s).
	HandshakeTimeout time.Duration
	// MaxMessageSize is the largest message accepted, in bytes, headers
	// and body; a larger request is answered 513 and its connection closed
	// (default and most 65535, 4096 at least).
	MaxMessageSize int
}

// Bounds of [tcp].
const (
	// minTCPTimeout is the shortest timeout [tcp] accepts: anything shorter
	// ("10ms" for "10s") would close connections that work.
	minTCPTimeout = time.Second
	// minMessageSize: an INVITE with a plain SDP offer takes 1–3 kB; a
	// smaller limit would refuse ordinary calls.
	minMessageSize = 4096
	// maxMessageSize is the limit of sipgo's parser, which reads every
	// message after the limit is checked (proxy.MaxMessageSize).
	maxMessageSize = 65535
)

// connectionCaps checks the caps on client connections of the table
// named table, max_connections and max_connections_per_source: 0 turns a
// cap off, a negative one is refused.
func (v *validator) connectionCaps(table string, total, perSource int) {
	for _, f := range []struct {
		key string
		val int
	}{{table + ".max_connections", total}, {table + ".max_connections_per_source", perSource}} {
		if f.val < 0 {
			v.add(f.key, strconv.Itoa(f.val), "must not be negative (0 turns the limit off)", ErrInvalid, nil)
		}
	}
}

func (v *validator) buildTCP(t fileTCP) TCP {
	out := TCP{MaxConnections: t.MaxConnections, MaxConnectionsPerSource: t.MaxConnectionsPerSource, MaxMessageSize: t.MaxMessageSize}
	v.connectionCaps("tcp", t.MaxConnections, t.MaxConnectionsPerSource)
	out.IdleTimeout = v.tcpTimeout("tcp.idle_timeout", t.IdleTimeout)
	out.MessageTimeout = v.tcpTimeout("tcp.message_timeout", t.MessageTimeout)
	out.HandshakeTimeout = v.tcpTimeout("tcp.handshake_timeout", t.HandshakeTimeout)
	if t.MaxMessageSize < minMessageSize || t.MaxMessageSize > maxMessageSize {
		v.add("tcp.max_message_size", strconv.Itoa(t.MaxMessageSize),
			fmt.Sprintf("must be between %d and %d bytes", minMessageSize, maxMessageSize), ErrInvalid, nil)
	}
	return out
}

// tcpTimeout parses a [tcp] timeout: "0s" (off) or at least minTCPTimeout.
func (v *validator) tcpTimeout(key, val string) time.Duration {
	d, err := time.ParseDuration(val)
	if err != nil || d < 0 || d > 0 && d < minTCPTimeout {
		v.add(key, strconv.Quote(val), fmt.Sprintf(`must be a duration of at least %s such as "30s", or "0s" for none`, minTCPTimeout), ErrInvalid, nil)
		return 0
	}
	return d
}
