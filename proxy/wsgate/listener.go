package wsgate

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/authproxy/authproxy/proxy/tcpguard"
)

// ListenerConfig is what one WebSocket listener checks at the upgrade.
type ListenerConfig struct {
	// Transport is "WS" or "WSS"; with TLS set, connections are TLS
	// servers with that configuration.
	Transport string
	TLS       *tls.Config
	// Path is the only request path upgraded (default "/"); any other is
	// answered 404.
	Path string
	// Origins are the page origins ("https://app.example.com") allowed to
	// open a connection, compared case-insensitively; a request with
	// another Origin is answered 403. Empty allows every origin. A request
	// without Origin (no browser sends one without) is allowed: Origin
	// protects browsers' users from other sites' pages (RFC 6455 §10.2),
	// not the server from other clients.
	Origins []string
	// TokenSecret, when set, makes a valid token (token.go) in the
	// "token" query parameter or an "Authorization: Bearer" header a
	// condition of the upgrade (401 without).
	TokenSecret []byte
}

// maxHandshake bounds the bytes of an upgrade request (request line and
// headers); browsers send well under 2 kB.
const maxHandshake = 8192

// Acceptance backoff after a failed accept, as tcpguard's.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Listener is a net.Listener whose Accept returns upgraded, checked
// WebSocket connections ready for sipgo's ServeWS or ServeWSS.
type Listener struct {
	g     *Gate
	inner net.Listener
	cfg   ListenerConfig
	name  string

	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	loop      sync.WaitGroup
}

// Listen wraps ln; the accept loop starts at once.
func (g *Gate) Listen(ln net.Listener, cfg ListenerConfig) *Listener {
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	l := &Listener{g: g, inner: ln, cfg: cfg, name: strings.ToLower(cfg.Transport) + " " + ln.Addr().String(),
		conns: make(chan net.Conn), done: make(chan struct{})}
	l.loop.Go(l.acceptLoop)
	return l
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close stops accepting; connections already handed on stay open (the SIP
// stack closes them).
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.inner.Close()
	})
	l.loop.Wait()
	return err
}

// Accept returns the next upgraded connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// acceptLoop accepts raw connections, refusing or upgrading each on its
// own goroutine, until Close.
func (l *Listener) acceptLoop() {
	delay := time.Duration(0)
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or a transient failure: retry with a
			// backoff instead of spinning or giving up.
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) {
				l.g.log.Debug("websocket accept failed", "listener", l.name, "error", err)
			}
			select {
			case <-time.After(delay):
			case <-l.done:
				return
			}
			continue
		}
		delay = 0
		src := remoteAddrPort(raw)
		peer, reason := l.g.admit(src.Addr())
		if reason != "" {
			l.g.refusal(reason, src, l.name) // counted before the peer sees the close
			_ = raw.Close()
			continue
		}
		go l.upgrade(raw, src, peer)
	}
}

func remoteAddrPort(c net.Conn) netip.AddrPort {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap
}

// refusal is an HTTP answer to an upgrade request that is refused.
type refusal struct {
	status int
	reason string // Stats reason
	text   string // body and log text
	header string // extra header lines, each ending CRLF
}

func (r *refusal) Error() string { return r.text }

// upgrade runs the TLS handshake and the HTTP upgrade of raw under the
// handshake deadline, and hands the connection on or closes it.
func (l *Listener) upgrade(raw net.Conn, src netip.AddrPort, peer tcpguard.Peer) {
	deadline := time.Now().Add(l.g.cfg.Limits.HandshakeTimeout)
	_ = raw.SetDeadline(deadline)
	stream := raw
	if l.cfg.TLS != nil {
		tc := tls.Server(raw, l.cfg.TLS)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			l.fail(raw, src, peer, ReasonHandshake, err)
			return
		}
		stream = tc
	}
	lim := &io.LimitedReader{R: stream, N: maxHandshake}
	br := bufio.NewReaderSize(lim, 4096)
	req, err := http.ReadRequest(br)
	if err != nil {
		l.fail(stream, src, peer, ReasonHandshake, fmt.Errorf("reading the upgrade request: %w", err))
		return
	}
	user, key, rf := l.check(req)
	if rf != nil {
		l.fail(stream, src, peer, rf.reason, rf)
		return
	}
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + acceptKey(key) + "\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
	if _, err := io.WriteString(stream, resp); err != nil {
		l.fail(stream, src, peer, ReasonHandshake, err)
		return
	}
	_ = raw.SetDeadline(time.Time{})
	lim.N = 1 << 62 // frames follow, bounded by the frame reader
	c := newConn(l, stream, br, src, peer, user)
	if user != "" {
		l.g.mu.Lock()
		l.g.users[src] = user
		l.g.mu.Unlock()
	}
	l.g.upgraded.Add(1)
	select {
	case l.conns <- c:
		c.start()
	case <-l.done:
		_ = c.Close()
	}
}

// fail counts and closes a connection refused during its upgrade, after
// the HTTP answer when err is a refusal (counted first, so that whoever
// reads the answer finds it counted).
func (l *Listener) fail(c net.Conn, src netip.AddrPort, peer tcpguard.Peer, reason string, err error) {
	l.g.admission.Release(src.Addr(), peer)
	l.g.refusal(reason, src, l.name)
	l.g.log.Debug("websocket upgrade refused", "listener", l.name, "source", src.String(), "reason", reason, "error", err)
	var rf *refusal
	if errors.As(err, &rf) {
		writeRefusal(c, rf)
	}
	_ = c.Close()
}

func writeRefusal(w io.Writer, rf *refusal) {
	body := rf.text + "\n"
	_, _ = fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s",
		rf.status, http.StatusText(rf.status), len(body), rf.header, body)
}

// check decides on an upgrade request (RFC 6455 §4.2.1, RFC 7118 §4): it
// returns the token's user (if a token is required), the client's key, or
// the refusal.
func (l *Listener) check(req *http.Request) (user, key string, rf *refusal) {
	switch {
	case req.Method != http.MethodGet:
		return "", "", &refusal{status: http.StatusMethodNotAllowed, reason: ReasonHandshake, text: "only GET upgrades"}
	case req.URL.Path != l.cfg.Path:
		return "", "", &refusal{status: http.StatusNotFound, reason: ReasonPath, text: "no websocket here"}
	case !headerHasToken(req.Header, "Upgrade", "websocket") || !headerHasToken(req.Header, "Connection", "upgrade"):
		return "", "", &refusal{status: http.StatusUpgradeRequired, reason: ReasonHandshake, text: "websocket upgrade required",
			header: "Upgrade: websocket\r\n"}
	case req.Header.Get("Sec-WebSocket-Version") != "13":
		return "", "", &refusal{status: http.StatusUpgradeRequired, reason: ReasonHandshake, text: "websocket version 13 required",
			header: "Sec-WebSocket-Version: 13\r\n"}
	}
	key = req.Header.Get("Sec-WebSocket-Key")
	if k, err := base64.StdEncoding.DecodeString(key); err != nil || len(k) != 16 {
		return "", "", &refusal{status: http.StatusBadRequest, reason: ReasonHandshake, text: "bad Sec-WebSocket-Key"}
	}
	if origin := req.Header.Get("Origin"); origin != "" && !l.originAllowed(origin) {
		return "", "", &refusal{status: http.StatusForbidden, reason: ReasonOrigin, text: "origin not allowed"}
	}
	if !headerHasToken(req.Header, "Sec-WebSocket-Protocol", "sip") {
		return "", "", &refusal{status: http.StatusBadRequest, reason: ReasonSubprotocol,
			text: `subprotocol "sip" required (RFC 7118 section 4)`}
	}
	if l.cfg.TokenSecret != nil {
		tok := req.URL.Query().Get("token")
		if a := req.Header.Get("Authorization"); tok == "" && len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
			tok = strings.TrimSpace(a[7:])
		}
		u, err := VerifyToken(l.cfg.TokenSecret, tok, time.Now())
		if err != nil {
			return "", "", &refusal{status: http.StatusUnauthorized, reason: ReasonToken, text: "valid token required"}
		}
		user = u
	}
	return user, key, nil
}

func (l *Listener) originAllowed(origin string) bool {
	if len(l.cfg.Origins) == 0 {
		return true
	}
	for _, o := range l.cfg.Origins {
		if strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}

// headerHasToken reports whether a comma-separated header (any of its
// lines) lists token, case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, line := range h.Values(name) {
		for _, t := range strings.Split(line, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// acceptKey is Sec-WebSocket-Accept for key (RFC 6455 §4.2.2 step 5.4).
func acceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}
