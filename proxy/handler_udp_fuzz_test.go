package proxy_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// FuzzHandleUDP sends any datagram to a proxy running on loopback, as
// users run it (preemptive answers on), between two UDP upstreams that
// challenge with the same realm and verify every credential they get with
// the fake PBX's own digest code. Out-of-dialog MESSAGE, OPTIONS and
// PUBLISH take the fast lane (the client's bytes edited and sent on),
// everything else sipgo's transactions. Each datagram is sent twice, the
// second time once the first is finished, so that the second may carry a
// preemptive answer. Invariants, checked by each upstream on everything it
// receives: every Authorization and Proxy-Authorization is one authproxy
// computed for that upstream's own account, for a nonce that upstream
// issued, for the Request-URI as sent (so no answer a client sent, and no
// credential of the other upstream, is ever forwarded); and the proxy
// neither panics nor stops answering.
func FuzzHandleUDP(f *testing.F) {
	const via = "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-fz;rport\r\n"
	clientAuth := "Authorization: Digest username=\"alice-only-a\", realm=\"asterisk\", nonce=\"client-nonce\", uri=\"sip:1002@pbx-a.example.com\", response=\"0123456789abcdef0123456789abcdef\"\r\n"
	clientProxyAuth := "proxy-authorization: Digest username=\"mallory\", realm=\"asterisk\", nonce=\"n\", uri=\"sip:x\", response=\"00\", cnonce=\"c\", nc=00000001, qop=auth\r\n"
	seeds := []string{
		"MESSAGE sip:1002@pbx-a.example.com SIP/2.0\r\n" + via + "From: <sip:1001@pbx-a.example.com>;tag=a\r\nTo: <sip:1002@pbx-a.example.com>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		"MESSAGE sip:1002@pbx-a.example.com SIP/2.0\r\n" + via + clientAuth + clientProxyAuth + "From: <sip:1001@pbx-a.example.com>;tag=a\r\nTo: <sip:1002@pbx-a.example.com>\r\nCall-ID: c2\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"OPTIONS sip:2002@pbx-b.example.com;transport=UDP SIP/2.0\r\n" + via + clientAuth + "From: <sip:2001@pbx-b.example.com>;tag=b\r\nTo: <sip:2002@PBX-B.example.com>\r\nCall-ID: c3\r\nCSeq: 9 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"PUBLISH sip:1002@pbx-a.example.com SIP/2.0\r\n" + via + "From: <sip:1001@pbx-a.example.com>;tag=a\r\nTo: <sip:1002@pbx-a.example.com>\r\nCall-ID: c4\r\nCSeq: 1 PUBLISH\r\nEvent: presence\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"MESSAGE sip:1002@pbx-a.example.com SIP/2.0\r\n" + via + "Route: <sip:pbx-b.example.com;lr>\r\n" + clientAuth + "From: <sip:1001@pbx-a.example.com>;tag=a\r\nTo: <sip:1002@pbx-a.example.com>\r\nCall-ID: c5\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"INVITE sip:1002@pbx-b.example.com SIP/2.0\r\n" + via + clientAuth + "From: <sip:1001@pbx-b.example.com>;tag=a\r\nTo: <sip:1002@pbx-b.example.com>\r\nCall-ID: c6\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@127.0.0.1:5999>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"REGISTER sip:pbx-a.example.com SIP/2.0\r\n" + via + clientProxyAuth + "From: <sip:1001@pbx-a.example.com>;tag=a\r\nTo: <sip:1001@pbx-a.example.com>\r\nCall-ID: c7\r\nCSeq: 3 REGISTER\r\nContact: <sip:1001@127.0.0.1:5999>\r\nExpires: 60\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		"m sip:1002@pbx-a.example.com SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-fz;rport\r\nf: <sip:1001@pbx-a.example.com>;tag=a\r\nt: <sip:1002@pbx-a.example.com>\r\ni: c8\r\nCSeq: 1 m\r\nl: 0\r\n\r\n",
	}
	for i, s := range seeds {
		f.Add([]byte(s), byte(i))
	}
	f.Fuzz(func(t *testing.T, raw []byte, challenge byte) {
		if len(raw) > 4000 {
			return // a datagram, within what authproxy sends on over UDP
		}
		env := startUDPFuzzEnv(t, challenge, fuzzUpstreamTimeout)
		for copyN := range 2 {
			// A transaction of its own each time (the branch made unique).
			dgram := bytes.ReplaceAll(raw, []byte("z9hG4bK"), []byte(fmt.Sprintf("z9hG4bK%d-%d.", env.id, copyN)))
			env.send(t, dgram)
			env.settle(t)
		}
		env.check(t)
	})
}

// TestFuzzHandleUDPHarness: the fuzz target's harness is not vacuous: a
// MESSAGE and an INVITE sent twice, as the target sends each input, reach
// their upstream, whose checks accept the answers to its challenges and,
// for the second copy, preemptive ones; a client's own answer is refused
// there (a credential planted past authproxy is reported).
func TestFuzzHandleUDPHarness(t *testing.T) {
	for _, tc := range []struct {
		name, dgram string
		up          int
	}{
		{"MESSAGE", "MESSAGE sip:1002@pbx-a.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-h;rport\r\nFrom: <sip:1001@pbx-a.example.com>;tag=a\r\nTo: <sip:1002@pbx-a.example.com>\r\nCall-ID: h1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", 0},
		{"INVITE", "INVITE sip:1002@pbx-b.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-h;rport\r\nFrom: <sip:1001@pbx-b.example.com>;tag=a\r\nTo: <sip:1002@pbx-b.example.com>\r\nCall-ID: h2\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@127.0.0.1:5999>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Every request here is answered: no wait is bounded but by
			// the test's own limit, however busy the machine.
			env := startUDPFuzzEnv(t, 0, testutil.EventuallyLimit)
			for copyN := range 2 {
				env.send(t, []byte(strings.ReplaceAll(tc.dgram, "z9hG4bK", fmt.Sprintf("z9hG4bK%d.", copyN))))
				// The second copy is preemptive only if the first was
				// answered before it was sent: settle alone does not
				// order them (sipgo handles each request on a goroutine
				// of its own, so the sentinel may be answered before the
				// first copy's handler has started).
				env.awaitFinal(t, 200)
				env.settle(t)
			}
			env.check(t)
			u := env.ups[tc.up]
			u.mu.Lock()
			accepted := slices.Clone(u.accepted)
			u.mu.Unlock()
			if !slices.Equal(accepted, []int{1, 2}) {
				t.Fatalf("upstream accepted answers with counts %v, want 1 (to its challenge) then 2 (preemptive)", accepted)
			}
		})
	}
	t.Run("planted", func(t *testing.T) {
		env := startUDPFuzzEnv(t, 0, fuzzUpstreamTimeout)
		u := env.ups[0]
		req := sip.NewRequest(sip.MESSAGE, sip.Uri{Scheme: "sip", User: "1002", Host: "pbx-a.example.com"})
		req.AppendHeader(sip.NewHeader("Authorization", `Digest username="alice-only-a", realm="asterisk", nonce="client-nonce", uri="sip:1002@pbx-a.example.com", response="00"`))
		if got := u.verifyAll(req, []byte("MESSAGE sip:1002@pbx-a.example.com SIP/2.0\r\n")); got != -1 || len(u.problems()) != 1 {
			t.Fatalf("a client's answer: verifyAll %d, problems %q; want it reported", got, u.problems())
		}
	})
}

// udpFuzzIteration numbers the environments, for unique branches.
var udpFuzzIteration atomic.Int64

// udpFuzzEnv is one proxy between a client socket and two verifying
// upstreams.
type udpFuzzEnv struct {
	id     int64
	p      *proxy.Proxy
	addr   *net.UDPAddr // the proxy's UDP listener
	client net.PacketConn
	ups    []*verifyingUpstream
	logs   *syncBuffer
}

// fuzzUpstreamTimeout is the proxy's UpstreamTimeout and TimerC for fuzz
// inputs: an input whose response the proxy cannot match waits this long
// (the upstreams answer everything else at once).
const fuzzUpstreamTimeout = 200 * time.Millisecond

// startUDPFuzzEnv starts a proxy whose UpstreamTimeout and TimerC are
// timeout, between a client socket and two verifying upstreams.
func startUDPFuzzEnv(t *testing.T, challenge byte, timeout time.Duration) *udpFuzzEnv {
	t.Helper()
	e := &udpFuzzEnv{id: udpFuzzIteration.Add(1), logs: &syncBuffer{}}
	a := startVerifyingUpstream(t, "127.0.0.2", "alice-only-a", "pw-a", challenge)
	b := startVerifyingUpstream(t, "127.0.0.3", "bob-only-b", "pw-b", challenge>>4)
	e.ups = []*verifyingUpstream{a, b}
	store, err := credentials.NewStore([]credentials.Entry{
		{Username: a.username, Password: credentials.NewSecret(a.password), Server: a.addr()},
		{Username: b.username, Password: credentials.NewSecret(b.password), Server: b.addr()},
	})
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	e.p, err = proxy.New(proxy.Config{
		Listeners: []proxy.Listener{{Transport: "udp", Address: "127.0.0.1:0"}},
		Upstreams: []proxy.Upstream{
			{Name: "pbx-a", Address: a.addr(), Domains: []string{"pbx-a.example.com"}, Default: true, Preemptive: proxy.PreemptiveAll},
			{Name: "pbx-b", Address: b.addr(), Domains: []string{"pbx-b.example.com"}, Preemptive: proxy.PreemptiveAll},
		},
		Credentials:     store,
		Clients:         []proxy.ClientGroup{{Name: "lan", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Upstreams: []string{"*"}}},
		UpstreamTimeout: timeout,
		TimerC:          timeout,
		ShutdownGrace:   time.Second,
		Logger:          slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Ready:           func() { close(ready) },
	})
	if err != nil {
		t.Fatal(err)
	}
	runProxy(t, e.p, ready, nil)
	if e.addr, err = net.ResolveUDPAddr("udp4", e.p.ListenAddrs()["udp"]); err != nil {
		t.Fatal(err)
	}
	if e.client, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.client.Close() })
	return e
}

func (e *udpFuzzEnv) send(t *testing.T, dgram []byte) {
	t.Helper()
	if _, err := e.client.WriteTo(dgram, e.addr); err != nil {
		t.Fatal(err)
	}
}

// awaitFinal reads the client socket until a final response arrives and
// fails the test unless its status is want.
func (e *udpFuzzEnv) awaitFinal(t *testing.T, want int) {
	t.Helper()
	buf := make([]byte, 65535)
	_ = e.client.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	for {
		n, _, err := e.client.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no final response: %v\n%s", err, e.logs.String())
		}
		msg, err := sip.ParseMessage(bytes.Clone(buf[:n]))
		if err != nil {
			continue
		}
		if res, ok := msg.(*sip.Response); ok && res.StatusCode >= 200 {
			if res.StatusCode != want {
				t.Fatalf("final response %d, want %d", res.StatusCode, want)
			}
			return
		}
	}
}

// settle waits until the proxy is done with everything sent so far that
// has reached a handler: an OPTIONS to the proxy itself, sent after it
// from the same socket, is answered, then no request is in progress
// (challenges answered, responses relayed). A request whose handler sipgo
// has not started yet (each runs on a goroutine of its own) is not waited
// for: the fuzz target's copies may overlap, which its checks allow.
func (e *udpFuzzEnv) settle(t *testing.T) {
	t.Helper()
	local := e.client.LocalAddr().String()
	callID := fmt.Sprintf("sentinel-%d-%d", e.id, time.Now().UnixNano())
	e.send(t, []byte("OPTIONS sip:"+e.addr.String()+" SIP/2.0\r\n"+
		"Via: SIP/2.0/UDP "+local+";branch=z9hG4bK-"+callID+";rport\r\n"+
		"From: <sip:fuzz@127.0.0.1>;tag=s\r\nTo: <sip:"+e.addr.String()+">\r\nCall-ID: "+callID+"\r\n"+
		"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"))
	buf := make([]byte, 65535)
	_ = e.client.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	for {
		n, _, err := e.client.ReadFrom(buf)
		if err != nil {
			t.Fatalf("the proxy did not answer an OPTIONS to itself: %v\n%s", err, e.logs.String())
		}
		if bytes.Contains(buf[:n], []byte("Call-ID: "+callID)) && bytes.HasPrefix(buf[:n], []byte("SIP/2.0 200")) {
			break
		}
	}
	testutil.Eventually(t, "no request in progress", func() bool { return e.p.InFlight() == 0 })
}

// check fails the test with what the upstreams saw wrong, or a panic.
func (e *udpFuzzEnv) check(t *testing.T) {
	t.Helper()
	for _, u := range e.ups {
		for _, v := range u.problems() {
			t.Error(v)
		}
	}
	if strings.Contains(e.logs.String(), "panic while handling request") {
		t.Errorf("panic:\n%s", e.logs.String())
	}
}

// verifyingUpstream is a UDP upstream that challenges every request
// without credentials, checks every credential it gets, and answers 200
// when they are right.
type verifyingUpstream struct {
	pc                 net.PacketConn
	username, password string
	code               int    // 401 or 407
	algorithm, qop     string // of its challenges ("" qop: none)

	mu       sync.Mutex
	nonces   map[string]bool
	bad      []string
	accepted []int // the nonce count of every credential verified
}

// The challenges the upstreams choose from, by the fuzzer's byte.
var (
	fuzzAlgorithms = []string{"MD5", "SHA-256", "SHA-512-256", "MD5-sess", "SHA-256-sess", "sha-256"}
	fuzzQOPs       = []string{"auth", "auth-int", "auth,auth-int", ""}
)

func startVerifyingUpstream(t *testing.T, host, username, password string, sel byte) *verifyingUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp4", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	u := &verifyingUpstream{pc: pc, username: username, password: password, code: 407, nonces: map[string]bool{},
		algorithm: fuzzAlgorithms[int(sel)%len(fuzzAlgorithms)], qop: fuzzQOPs[int(sel>>2)%len(fuzzQOPs)]}
	if sel&0x8 != 0 {
		u.code = 401
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.serve()
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return u
}

func (u *verifyingUpstream) addr() string { return u.pc.LocalAddr().String() }

func (u *verifyingUpstream) problems() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.bad...)
}

func (u *verifyingUpstream) serve() {
	buf := make([]byte, 65535)
	for {
		n, from, err := u.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		data := bytes.Clone(buf[:n])
		msg, err := sip.ParseMessage(data)
		if err != nil {
			u.problem("the upstream got a message it cannot parse: %v\n%q", err, data)
			continue
		}
		req, ok := msg.(*sip.Request)
		if !ok || req.IsAck() {
			if ok {
				u.verifyAll(req, data)
			}
			continue
		}
		res := u.answer(req, data)
		_, _ = u.pc.WriteTo([]byte(res.String()), from)
	}
}

// answer checks req's credentials and builds the response: a challenge
// when it has none, 200 when they are right, 403 otherwise.
func (u *verifyingUpstream) answer(req *sip.Request, data []byte) *sip.Response {
	if req.IsCancel() {
		return sip.NewResponseFromRequest(req, 200, "OK", nil)
	}
	switch u.verifyAll(req, data) {
	case 0:
		return u.challenge(req)
	case -1:
		return sip.NewResponseFromRequest(req, 403, "Forbidden", nil)
	}
	return sip.NewResponseFromRequest(req, 200, "OK", nil)
}

// verifyAll checks every credential of req; it returns how many were
// right, or -1 when one was not.
func (u *verifyingUpstream) verifyAll(req *sip.Request, data []byte) int {
	ok := 0
	for _, h := range req.Headers() {
		name := strings.ToLower(h.Name())
		if name != "authorization" && name != "proxy-authorization" {
			continue
		}
		if why := u.verify(req, data, h.Value()); why != "" {
			u.problem("%s %s carries %s: %s: %q", req.Method, req.Recipient.String(), h.Name(), why, h.Value())
			return -1
		}
		ok++
	}
	return ok
}

// verify returns what is wrong with one credential, "" when it is one
// authproxy computed for this upstream's account and challenge.
func (u *verifyingUpstream) verify(req *sip.Request, data []byte, value string) string {
	// icholy/digest's parser reads quoted values as runes, turning a byte
	// that is not UTF-8 into U+FFFD; a server compares bytes, and so does
	// fakepbx's parser.
	params, err := fakepbx.ParseDigestParams(value)
	if err != nil {
		return fmt.Sprintf("unparsable (%v)", err)
	}
	nc, err := strconv.ParseUint(params["nc"], 16, 32)
	if err != nil && params["nc"] != "" {
		return fmt.Sprintf("nc %q: %v", params["nc"], err)
	}
	cr := digest.Credentials{Username: params["username"], Realm: params["realm"], Nonce: params["nonce"], URI: params["uri"],
		Response: params["response"], Algorithm: params["algorithm"], Cnonce: params["cnonce"], QOP: params["qop"], Nc: int(nc)}
	if cr.Username != u.username {
		return "another account's username"
	}
	u.mu.Lock()
	issued := u.nonces[cr.Nonce]
	u.mu.Unlock()
	if !issued {
		return "a nonce this upstream never issued"
	}
	line, _, _ := bytes.Cut(data, []byte("\r\n"))
	if f := strings.Fields(string(line)); len(f) < 2 || cr.URI != f[1] {
		return fmt.Sprintf("uri %q is not the Request-URI sent (%q)", cr.URI, line)
	}
	if req.IsAck() {
		return "" // the INVITE's answer, computed for the INVITE
	}
	want, err := fakepbx.DigestResponse(fakepbx.DigestInput{
		Algorithm: cr.Algorithm, Username: cr.Username, Realm: cr.Realm, Password: u.password,
		Method: string(req.Method), URI: cr.URI, Nonce: cr.Nonce, Cnonce: cr.Cnonce, NC: uint32(cr.Nc), QOP: cr.QOP, Body: req.Body(),
	})
	if err != nil {
		return err.Error()
	}
	if cr.Response != want {
		return "a wrong response"
	}
	u.mu.Lock()
	u.accepted = append(u.accepted, cr.Nc)
	u.mu.Unlock()
	return ""
}

func (u *verifyingUpstream) challenge(req *sip.Request) *sip.Response {
	u.mu.Lock()
	nonce := fmt.Sprintf("%s-%d", u.addr(), len(u.nonces))
	u.nonces[nonce] = true
	u.mu.Unlock()
	v := `Digest realm="asterisk", nonce="` + nonce + `", opaque="op", algorithm=` + u.algorithm
	if u.qop != "" {
		v += `, qop="` + u.qop + `"`
	}
	hdr, reason := "Proxy-Authenticate", "Proxy Authentication Required"
	if u.code == 401 {
		hdr, reason = "WWW-Authenticate", "Unauthorized"
	}
	res := sip.NewResponseFromRequest(req, u.code, reason, nil)
	res.AppendHeader(sip.NewHeader(hdr, v))
	return res
}

func (u *verifyingUpstream) problem(format string, args ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.bad = append(u.bad, fmt.Sprintf("upstream %s: ", u.addr())+fmt.Sprintf(format, args...))
}
