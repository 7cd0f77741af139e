package proxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/tcpguard"
	"github.com/authproxy/authproxy/proxy/wsgate"
)

// SIP over WebSocket (RFC 7118): browsers' softphones.
//
// A "ws" or "wss" listener is a wsgate.Listener (upgrade checks, caps,
// timeouts) served by sipgo's WS or WSS transport. Requests from a
// WebSocket are handled as any client's: admitted by client group (and
// authproxy's own digest challenge, or a token checked at the upgrade),
// forwarded to the upstream, the upstream's challenges answered. What the
// transport changes:
//   - Record-Route and Path name authproxy twice, the WebSocket listener
//     for the browser's side and the upstream-facing listener for the
//     other (RFC 5658 double Record-Route, addRecordRoute and
//     prepareRegister), with transport=ws for WS and WSS alike (RFC 7118
//     §5.2 defines no "wss" value);
//   - the browser's Via sent-by and Contact host are "<random>.invalid"
//     (RFC 7118 §5.2): nothing can reach them but the browser's own
//     connection. Responses go back on the connection the request came
//     on (sipgo's server transaction); requests in a dialog follow the
//     dialog's client address (the connection), and requests for a
//     registered Contact the binding made when its REGISTER passed (the
//     connection it registered on, reachAt): the flow of RFC 5626,
//     also named by a flow token in the Path (flowTokens below), so that
//     a request the registrar sends through that Path reaches the
//     connection whatever its Request-URI;
//   - a connection that closes takes its bindings with it (nothing can
//     reach that Contact any more); its dialogs stay until they end or
//     idle out, and a request toward a closed connection fails at once
//     (ErrFlowClosed) instead of sipgo dialing the browser.
//
// SDP passes untouched: ICE and DTLS-SRTP run between the browser and the
// far end.

// ErrFlowClosed is returned for a request toward a WebSocket client whose
// connection has closed: nothing else reaches it.
var ErrFlowClosed = errors.New("websocket connection of the client is closed")

// newWebSocketGate is the gate of the WebSocket listeners, refusing the
// sources and capping the connections as the TCP guard does.
func (p *Proxy) newWebSocketGate(l wsgate.Limits, capture bool) *wsgate.Gate {
	cfg := wsgate.Config{
		Limits:   l,
		Classify: func(src netip.Addr) tcpguard.Peer { return p.rt.Load().connectionPeer(src) },
		Logger:   p.log.With("component", "websocket"),
		Inspect:  p.inspectStream,
		OnClose:  p.webSocketClosed,
	}
	if capture {
		// HEP has no WebSocket protocol type: the messages go as TCP,
		// which carries them.
		cfg.Tap = p.tapStream
	}
	return wsgate.New(cfg)
}

// webSocketListenerConfig is what listener l checks at the upgrade.
func webSocketListenerConfig(transport string, l Listener) wsgate.ListenerConfig {
	c := wsgate.ListenerConfig{Transport: transport, Path: l.WebSocket.Path, Origins: l.WebSocket.Origins}
	if transport == "WSS" {
		c.TLS = l.TLS
	}
	if !l.WebSocket.TokenSecret.IsZero() {
		c.TokenSecret = []byte(l.WebSocket.TokenSecret.Reveal())
	}
	return c
}

// validateWebSocket checks cfg.WebSocket's values.
func validateWebSocket(l wsgate.Limits) error {
	if l.MaxConns < 0 || l.MaxConnsPerSource < 0 || l.HandshakeTimeout < 0 || l.IdleTimeout < 0 || l.PingInterval < 0 {
		return fmt.Errorf("websocket limits must not be negative (0 turns one off)")
	}
	if l.MaxMessageSize > wsgate.DefaultMaxMessageSize {
		return fmt.Errorf("websocket max message size %d: at most %d (sipgo's WebSocket read buffer)", l.MaxMessageSize, wsgate.DefaultMaxMessageSize)
	}
	return nil
}

// webSocketClosed forgets the bindings registered over the connection
// that closed; nothing else ends with it.
func (p *Proxy) webSocketClosed(transport string, remote netip.AddrPort) {
	removed := p.bindings.removeFlow(transport, remote.String())
	for _, b := range removed {
		p.forgetFlowBinding(b)
	}
	if len(removed) > 0 {
		p.log.Debug("websocket closed: bindings removed", "transport", transport, "source", remote.String(), "bindings", len(removed))
	}
}

// forgetFlowBinding removes b, which a closed WebSocket took, from the
// state store: only while the store still holds it as registered over that
// connection through this instance, since the client may have registered
// again over a new one (here or through another instance) before the old
// one was found dead.
func (p *Proxy) forgetFlowBinding(b binding) {
	v, err := p.store.get(keyContact + b.ckey)
	if err != nil {
		return // not there, or the store cannot say: its expiry removes it
	}
	var sb storedBinding
	if json.Unmarshal(v, &sb) != nil || sb.Transport != b.transport || sb.Addr != b.addr || sb.Member != p.store.id {
		return
	}
	p.forgetBinding(b.aor, b.ckey, b.alias)
}

// webSocketOpen reports whether sipgo still holds the connection to a
// WebSocket client at addr.
func (p *Proxy) webSocketOpen(transport, addr string) bool {
	c, _ := p.ua.TransportLayer().GetConnection(transport, addr)
	if c == nil {
		return false
	}
	_, _ = c.TryClose() // Get took a reference
	return true
}

// WebSocketStats returns what the WebSocket listeners' gate counted.
func (p *Proxy) WebSocketStats() wsgate.Stats { return p.ws.Stats() }

// tokenUser is the user of the token the WebSocket connection a request
// came on presented at its upgrade, or "".
func (p *Proxy) tokenUser(transport, source string) string {
	if !isWebSocket(transport) {
		return ""
	}
	ap, err := netip.ParseAddrPort(source)
	if err != nil {
		return ""
	}
	return p.ws.TokenUser(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
}

// Flow tokens (RFC 5626 §5.2). The Path entry authproxy adds for a
// browser's REGISTER names the WebSocket it came over in its user part,
// "fl-" + base64url(HMAC-SHA256(key, flow)[:10] + flow), flow being
// transport "|" address; the ";ob" parameter says authproxy keeps that
// flow (§5.1). A request the registrar sends through that Path goes down
// that connection whatever its Request-URI; when the connection has
// closed it is answered 430 Flow Failed (§5.3). The key is drawn at start:
// flows do not outlive the process.
const flowTokenPrefix = "fl-"

// flowTokenMAC is the length of a flow token's truncated HMAC: 80 bits,
// as RFC 5626 §5.2's example.
const flowTokenMAC = 10

// flowTokens makes and checks flow tokens.
type flowTokens struct{ key []byte }

func newFlowTokens() *flowTokens {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return &flowTokens{key: k}
}

func (ft *flowTokens) mac(flow string) []byte {
	m := hmac.New(sha256.New, ft.key)
	m.Write([]byte(flow))
	return m.Sum(nil)[:flowTokenMAC]
}

// token is the user part naming the flow of transport from addr.
func (ft *flowTokens) token(transport, addr string) string {
	flow := transport + "|" + addr
	return flowTokenPrefix + base64.RawURLEncoding.EncodeToString(append(ft.mac(flow), flow...))
}

// parse returns the flow a token names, or ok false when user is no
// token of ours (forged, altered, or not a token).
func (ft *flowTokens) parse(user string) (transport, addr string, ok bool) {
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(user, flowTokenPrefix))
	if !strings.HasPrefix(user, flowTokenPrefix) || err != nil || len(raw) <= flowTokenMAC {
		return "", "", false
	}
	flow := string(raw[flowTokenMAC:])
	if !hmac.Equal(raw[:flowTokenMAC], ft.mac(flow)) {
		return "", "", false
	}
	transport, addr, ok = strings.Cut(flow, "|")
	return transport, addr, ok && isWebSocket(transport)
}

// flowPathURI is the Path entry of a REGISTER that came over the
// WebSocket listener l from addr: its flow token, lr and ob.
func (p *Proxy) flowPathURI(l *boundListener, transport, addr string) sip.Uri {
	u := sip.Uri{Scheme: "sip", User: p.flows.token(transport, addr), Host: l.advertise, Port: l.port, UriParams: sip.NewParams()}
	u.UriParams.Add("transport", l.uriTransport())
	u.UriParams.Add("lr", "")
	u.UriParams.Add("ob", "")
	return u
}

// routeFlow looks for a flow token in our own Route entries of an
// upstream's request (the Path the registrar preloaded): the flow it
// names, and whether one was found.
func (f *forwarding) routeFlow() (transport, addr string, found bool) {
	for _, h := range f.req.GetHeaders("Route") {
		r, ok := h.(*sip.RouteHeader)
		if !ok || !f.p.isOwnURI(r.Address) {
			break
		}
		if tp, a, ok := f.p.flows.parse(r.Address.User); ok {
			return tp, a, true
		}
	}
	return "", "", false
}
