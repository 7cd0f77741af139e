package proxy

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/emiago/sipgo/siptest"

	"github.com/authproxy/authproxy/credentials"
)

// Two upstreams and two credentials, each scoped to one of them.
const (
	fuzzAddrA, fuzzAddrB = "127.0.0.2:5060", "127.0.0.3:5060"
	fuzzUserA, fuzzUserB = "alice-only-a", "bob-only-b"
)

// socketlessProxy is a Proxy wired to sipgo's siptest doubles: requests it
// sends upstream are handed to upstream(), which returns the response, and
// nothing touches a socket.
type socketlessProxy struct {
	p     *Proxy
	logs  *bytes.Buffer
	logMu sync.Mutex // guards logs
	mu    sync.Mutex
	sent  []*sip.Request
}

// logString returns what the proxy logged so far.
func (sp *socketlessProxy) logString() string {
	sp.logMu.Lock()
	defer sp.logMu.Unlock()
	return sp.logs.String()
}

func newSocketlessProxy(t testing.TB, upstream func(*sip.Request) *sip.Response) *socketlessProxy {
	t.Helper()
	store, err := credentials.NewStore([]credentials.Entry{
		{Username: fuzzUserA, Password: credentials.NewSecret("pw-a"), Server: fuzzAddrA},
		{Username: fuzzUserB, Password: credentials.NewSecret("pw-b"), Server: fuzzAddrB},
	})
	if err != nil {
		t.Fatal(err)
	}
	sp := &socketlessProxy{logs: &bytes.Buffer{}}
	p, err := New(Config{
		Listeners: []Listener{{Transport: "udp", Address: "127.0.0.1:5060"}},
		Upstreams: []Upstream{
			{Name: "pbx-a", Address: fuzzAddrA, Domains: []string{"pbx-a.example.com"}},
			{Name: "pbx-b", Address: fuzzAddrB, Transport: "tcp", Domains: []string{"pbx-b.example.com"}, Default: true},
		},
		// A group fails over from pbx-a to pbx-b: a request moving from
		// one to the other must never carry the first one's credential.
		Groups: []UpstreamGroup{{Name: "both", Upstreams: []string{"pbx-a", "pbx-b"}, Domains: []string{"group.example.com"},
			FailoverOn: []int{500, 503, 603}}},
		Credentials:     store,
		Clients:         []ClientGroup{{Name: "lan", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Upstreams: []string{"*"}}},
		UpstreamTimeout: 300 * time.Millisecond,
		TimerC:          300 * time.Millisecond,
		Logger:          slog.New(slog.NewTextHandler(lockedWriter{&sp.logMu, sp.logs}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ua, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ua.Close() })
	client, err := sipgo.NewClient(ua)
	if err != nil {
		t.Fatal(err)
	}
	client.TxRequester = &siptest.ClientTxRequester{OnRequest: func(r *sip.Request) *sip.Response {
		sp.mu.Lock()
		sp.sent = append(sp.sent, r.Clone())
		sp.mu.Unlock()
		return upstream(r)
	}}
	p.ua, p.client, p.runCtx = ua, client, context.Background()
	p.listeners = []*boundListener{{Listener: Listener{Transport: "udp", Address: "127.0.0.1:5060"}, transport: "UDP", ip: net.ParseIP("127.0.0.1"), port: 5060, advertise: "127.0.0.1"}}
	sp.p = p
	return sp
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// fuzzUpstream challenges a request without credentials with the given
// challenge values and accepts one with any, failing as fail says: bit 0,
// pbx-a answers 503 to authenticated requests; bit 1, 500; bit 2, pbx-a
// answers 503 before any challenge; bit 3, pbx-b answers 503 to
// authenticated requests; bit 4, pbx-a answers 603.
func fuzzUpstream(challenges []string, fail byte) func(*sip.Request) *sip.Response {
	return func(r *sip.Request) *sip.Response {
		if r.IsCancel() || r.IsAck() {
			return sip.NewResponseFromRequest(r, 200, "OK", nil)
		}
		a := r.Destination() == fuzzAddrA
		if a && fail&4 != 0 {
			return sip.NewResponseFromRequest(r, 503, "Service Unavailable", nil)
		}
		if r.GetHeader("Authorization") == nil && r.GetHeader("Proxy-Authorization") == nil {
			res := sip.NewResponseFromRequest(r, 407, "Proxy Authentication Required", nil)
			for _, c := range challenges {
				res.AppendHeader(sip.NewHeader("Proxy-Authenticate", c))
				res.AppendHeader(sip.NewHeader("WWW-Authenticate", c))
			}
			return res
		}
		switch {
		case a && fail&1 != 0:
			return sip.NewResponseFromRequest(r, 503, "Service Unavailable", nil)
		case a && fail&2 != 0:
			return sip.NewResponseFromRequest(r, 500, "Server Internal Error", nil)
		case a && fail&16 != 0:
			return sip.NewResponseFromRequest(r, 603, "Decline", nil)
		case !a && fail&8 != 0:
			return sip.NewResponseFromRequest(r, 503, "Service Unavailable", nil)
		}
		return sip.NewResponseFromRequest(r, 200, "OK", nil)
	}
}

// FuzzHandle drives whole requests through the proxy's handler: any bytes
// the SIP parser accepts as a request, from any source, with any challenge
// from the upstream, and upstreams failing in any way (fail, see
// fuzzUpstream), which makes requests routed to the group fail over from
// pbx-a to pbx-b. Invariants: no panic; requests only ever go to a
// configured upstream; a credential scoped to one upstream never reaches
// the other, before or after a failover; no Authorization or
// Proxy-Authorization the client sent is forwarded. (FuzzHandleUDP runs
// real sockets, the fast lane and upstreams that verify every credential.)
func FuzzHandle(f *testing.F) {
	seeds := []string{
		"MESSAGE sip:1002@pbx-a.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;rport\r\nFrom: <sip:1001@pbx-a.example.com>;tag=a\r\nTo: <sip:1002@pbx-a.example.com>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"INVITE sip:1002@pbx-b.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK2\r\nFrom: <sip:1001@x>;tag=a\r\nTo: <sip:1002@x>\r\nCall-ID: c2\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@127.0.0.1:5999>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"REGISTER sip:127.0.0.2:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK3\r\nFrom: <sip:1001@pbx-a.example.com>;tag=a\r\nTo: <sip:1001@pbx-a.example.com>\r\nCall-ID: c3\r\nCSeq: 7 REGISTER\r\nRoute: <sip:127.0.0.3:5060;lr>\r\nContact: <sip:1001@127.0.0.1:5999>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"BYE sip:1002@127.0.0.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK4\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nRoute: <sip:evil.example.net;lr>\r\nFrom: <sip:1001@x>;tag=a\r\nTo: <sip:1002@x>;tag=b\r\nCall-ID: c4\r\nCSeq: 2 BYE\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n",
	}
	seeds = append(seeds,
		"MESSAGE sip:1002@pbx-a.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK5\r\nAuthorization: Digest username=\"alice-only-a\", realm=\"asterisk\", nonce=\"na\", uri=\"sip:1002@pbx-a.example.com\", response=\"00\"\r\nFrom: <sip:1001@x>;tag=a\r\nTo: <sip:1002@x>\r\nCall-ID: c5\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"INVITE sip:1002@pbx-b.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK6\r\nproxy-AUTHORIZATION: Digest username=\"bob-only-b\", realm=\"asterisk\", nonce=\"na\", uri=\"sip:1002@pbx-b.example.com\", response=\"00\"\r\nFrom: <sip:1001@x>;tag=a\r\nTo: <sip:1002@x>\r\nCall-ID: c6\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@127.0.0.1:5999>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
	)
	// RFC 4475 torture messages shipped with sipgo, where present.
	if dir := sipgoTortureDir(); dir != "" {
		files, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
		for _, p := range files {
			if b, err := os.ReadFile(p); err == nil && len(b) < 4096 {
				seeds = append(seeds, string(b))
			}
		}
	}
	group := []string{
		"MESSAGE sip:1002@group.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK5;rport\r\nFrom: <sip:1001@group.example.com>;tag=a\r\nTo: <sip:1002@group.example.com>\r\nCall-ID: c5\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"INVITE sip:1002@group.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK6\r\nFrom: <sip:1001@x>;tag=a\r\nTo: <sip:1002@x>\r\nCall-ID: c6\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@127.0.0.1:5999>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"REGISTER sip:group.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK7\r\nFrom: <sip:1001@group.example.com>;tag=a\r\nTo: <sip:1001@group.example.com>\r\nCall-ID: c7\r\nCSeq: 2 REGISTER\r\nContact: <sip:1001@127.0.0.1:5999>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
	}
	for i, s := range seeds {
		f.Add([]byte(s), `Digest realm="asterisk", nonce="n`+string(rune('a'+i%26))+`", qop="auth", algorithm=MD5`, byte(1), byte(0))
	}
	f.Add([]byte(seeds[0]), `Digest realm="asterisk", nonce="x", algorithm=SHA-512-256-sess, qop="auth-int"`, byte(10), byte(0))
	f.Add([]byte(seeds[1]), `Digest Realm=a.b, NONCE=x, stale=TRUE`, byte(200), byte(0))
	for i, s := range group {
		for _, fail := range []byte{1, 2, 4, 8, 9, 16} {
			f.Add([]byte(s), `Digest realm="asterisk", nonce="g`+string(rune('a'+i))+`", qop="auth", algorithm=MD5`, byte(1), fail)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte, challenge string, src, fail byte) {
		msg, err := sip.ParseMessage(raw)
		if err != nil {
			return
		}
		req, ok := msg.(*sip.Request)
		if !ok || req.Via() == nil || req.CSeq() == nil || req.IsAck() || req.IsCancel() {
			return
		}
		if _, err := sip.ServerTxKeyMake(req); err != nil {
			return
		}
		req.SetTransport("UDP")
		req.SetSource(netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, src}), 5999).String())
		sp := newSocketlessProxy(t, fuzzUpstream([]string{challenge}, fail))
		tx := siptest.NewServerTxRecorder(req)
		done := make(chan struct{})
		go func() { defer close(done); sp.p.handle(req, tx) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("handler did not return within 10s")
		}
		tx.Terminate()
		if strings.Contains(sp.logs.String(), "panic while handling request") {
			t.Fatalf("panic:\n%s", sp.logs.String())
		}
		var clientAuth []string
		for _, h := range req.Headers() {
			if n := strings.ToLower(h.Name()); n == "authorization" || n == "proxy-authorization" {
				clientAuth = append(clientAuth, strings.TrimSpace(h.Value()))
			}
		}
		sp.mu.Lock()
		defer sp.mu.Unlock()
		for _, s := range sp.sent {
			dst := s.Destination()
			if dst != fuzzAddrA && dst != fuzzAddrB {
				t.Fatalf("request sent to %q, not a configured upstream", dst)
			}
			for _, h := range append(s.GetHeaders("Authorization"), s.GetHeaders("Proxy-Authorization")...) {
				v := h.Value()
				if (dst == fuzzAddrA && strings.Contains(v, fuzzUserB)) || (dst == fuzzAddrB && strings.Contains(v, fuzzUserA)) {
					t.Fatalf("credential of the other upstream sent to %s: %s", dst, v)
				}
				if slices.Contains(clientAuth, strings.TrimSpace(v)) {
					t.Fatalf("the client's own %s forwarded to %s: %s", h.Name(), dst, v)
				}
			}
		}
	})
}

// sipgoTortureDir finds sipgo's RFC 4475 torture messages in the module
// cache, or returns "".
func sipgoTortureDir() string {
	out, err := os.ReadDir(filepath.Join(goModCache(), "github.com", "emiago"))
	if err != nil {
		return ""
	}
	for _, e := range out {
		if strings.HasPrefix(e.Name(), "sipgo@") {
			return filepath.Join(goModCache(), "github.com", "emiago", e.Name(), "sip", "testdata", "torture")
		}
	}
	return ""
}

func goModCache() string {
	if c := os.Getenv("GOMODCACHE"); c != "" {
		return c
	}
	home, _ := os.UserHomeDir()
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		gopath = filepath.Join(home, "go")
	}
	return filepath.Join(strings.Split(gopath, string(os.PathListSeparator))[0], "pkg", "mod")
}
