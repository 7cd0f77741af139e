package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// MaxMessageSize is the largest SIP message authproxy accepts, start line,
// headers and body, in bytes: the limit of sipgo's parser
// (sip.ParseMaxMessageLength), which is also about the most one UDP
// datagram carries. It is the default and the upper bound of
// Config.TCP.MaxMessageSize, and the one constant every transport's size
// check uses.
const MaxMessageSize = 65535

// ErrListenerStopped is wrapped by Readiness when a listener stopped
// serving while the proxy runs (not by a shutdown).
var ErrListenerStopped = errors.New("listener stopped")

// ListenerStatus is a snapshot of one bound listener.
type ListenerStatus struct {
	// Transport is "udp", "tcp", "tls", "ws" or "wss"; Address the bound
	// host:port.
	Transport, Address string
	// Serving is false once the listener stopped while the proxy runs;
	// Error then says why.
	Serving bool
	Error   string
}

// Listeners returns the bound listeners, in configuration order; empty
// before Run has bound them.
func (p *Proxy) Listeners() []ListenerStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ListenerStatus, 0, len(p.listeners))
	for _, l := range p.listeners {
		s := ListenerStatus{Transport: strings.ToLower(l.transport), Address: l.bound(), Serving: l.stopped == nil}
		if l.stopped != nil {
			s.Error = l.stopped.Error()
		}
		out = append(out, s)
	}
	return out
}

// TCPStats returns what the guard of the TCP and TLS listeners counted:
// connections open, refused, closed by a deadline or for a message too
// large.
func (p *Proxy) TCPStats() tcpguard.Stats { return p.tcp.Stats() }

// bound is the listener's bound "host:port".
func (l *boundListener) bound() string {
	return net.JoinHostPort(l.ip.String(), strconv.Itoa(l.port))
}

// uriTransport is the transport parameter of a URI naming l: "ws" for a
// WSS listener too (RFC 7118 §5.2 defines no "wss" value).
func (l *boundListener) uriTransport() string {
	if l.transport == "WSS" {
		return "ws"
	}
	return strings.ToLower(l.transport)
}

// listenerStopped records that l's serve loop returned with err while the
// proxy runs: no request reaches it any more, which Readiness reports.
func (p *Proxy) listenerStopped(l *boundListener, err error) {
	if err == nil {
		err = errors.New("serve returned")
	}
	p.log.Error("listener stopped", "transport", strings.ToLower(l.transport), "address", l.bound(), "error", err)
	p.mu.Lock()
	defer p.mu.Unlock()
	l.stopped = err
}

// stoppedListener returns an error wrapping ErrListenerStopped naming the
// first listener that stopped, or nil. p.mu must be held.
func (p *Proxy) stoppedListener() error {
	for _, l := range p.listeners {
		if l.stopped != nil {
			return fmt.Errorf("%w: %s %s: %v", ErrListenerStopped, strings.ToLower(l.transport), l.bound(), l.stopped)
		}
	}
	return nil
}

// tcpLimits is cfg.TCP with MaxMessageSize defaulted.
func tcpLimits(cfg Config) tcpguard.Limits {
	l := cfg.TCP
	if l.MaxMessageSize <= 0 {
		l.MaxMessageSize = MaxMessageSize
	}
	return l
}

// validateTCP checks cfg.TCP's values.
func validateTCP(l tcpguard.Limits) error {
	if l.MaxConns < 0 || l.MaxConnsPerSource < 0 || l.IdleTimeout < 0 || l.MessageTimeout < 0 || l.HandshakeTimeout < 0 {
		return fmt.Errorf("tcp limits must not be negative (0 turns one off)")
	}
	if l.MaxMessageSize > MaxMessageSize {
		return fmt.Errorf("tcp max message size %d: at most %d (sipgo's parser limit)", l.MaxMessageSize, MaxMessageSize)
	}
	return nil
}

// connectionPeer decides who may hold a connection to a TCP or TLS
// listener, by the admission rules requests go through (groupFor,
// fromUpstream): a configured upstream's address, exempt from the caps; a
// source some client group admits; or nobody, refused at once.
func (rt *routing) connectionPeer(src netip.Addr) tcpguard.Peer {
	switch {
	case rt.fromUpstream(src) != nil:
		return tcpguard.Upstream
	case rt.groupFor(src) != nil:
		return tcpguard.Client
	}
	return tcpguard.Refused
}
