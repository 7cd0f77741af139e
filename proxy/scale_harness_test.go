package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"weak"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/emiago/sipgo/siptest"

	"github.com/authproxy/authproxy/credentials"
)

// The harness of the state-scale benchmarks (scale_bench_test.go): a proxy
// with no sockets, whose upstream transactions are answered by scaleDouble,
// fed with requests parsed from bytes as the transport would, from client
// sources in 10.0.0.0/8, one address per call or registration.

// scaleFactor multiplies every state size of the scale benchmarks:
// AUTHPROXY_BENCH_SCALE=0.01 runs them with a hundredth of the state (a
// quick check); unset, they run at the sizes of the figures in
// bench/RESULTS.md ("State scale").
func scaleFactor(tb testing.TB) float64 {
	v := os.Getenv("AUTHPROXY_BENCH_SCALE")
	if v == "" {
		return 1
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 {
		tb.Fatalf("AUTHPROXY_BENCH_SCALE=%q: want a positive number", v)
	}
	return f
}

// scaled is n times scaleFactor, at least least.
func scaled(tb testing.TB, n, least int) int {
	return max(least, int(math.Round(float64(n)*scaleFactor(tb))))
}

// liveHeap is the heap the program holds after two collections (the
// second empties sync.Pool's victim caches).
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// heapProfile writes a heap profile named name to the directory
// AUTHPROXY_BENCH_HEAPPROFILE, when that is set (after a collection, so
// its in-use figures are the live heap).
func heapProfile(tb testing.TB, name string) {
	dir := os.Getenv("AUTHPROXY_BENCH_HEAPPROFILE")
	if dir == "" {
		return
	}
	runtime.GC()
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		tb.Fatal(err)
	}
}

// gcCPU is the CPU time the garbage collector has used so far
// (runtime/metrics, /cpu/classes/gc/total:cpu-seconds: an estimate the
// runtime updates at each collection).
func gcCPU() time.Duration {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return time.Duration(s[0].Value.Float64() * float64(time.Second))
}

// perItem is the heap grown from before to after, per item, in bytes.
func perItem(before, after uint64, items int) float64 {
	return (float64(after) - float64(before)) / float64(items)
}

// scaleUpstreamAddr is the address of upstream i (172.16.0.1 on, in
// 172.16.0.0/16): apart from the clients' 10.0.0.0/8, so that a client is
// never taken for an upstream.
func scaleUpstreamAddr(i int) string {
	return fmt.Sprintf("172.16.%d.%d:5060", (i+1)>>8, (i+1)&255)
}

// scaleClientAddr is the source of client i: 10.x.y.z:5060.
func scaleClientAddr(i int) string {
	return fmt.Sprintf("10.%d.%d.%d:5060", (i>>16)&255, (i>>8)&255, i&255)
}

// scaleChallenge is what the upstreams challenge with.
const scaleChallenge = `Digest realm="asterisk", nonce="sc4le-n0nce", opaque="op", qop="auth", algorithm=MD5`

// scaleConfig is a configuration of n upstreams pbx-0..pbx-(n-1), each at
// scaleUpstreamAddr(i) serving the domain pbxI.example.com, answered with
// store's credentials, for clients in 10.0.0.0/8. Every request is
// challenged (preemptive off).
func scaleConfig(n int, store *credentials.Store) Config {
	ups := make([]Upstream, n)
	for i := range ups {
		ups[i] = Upstream{Name: "pbx-" + strconv.Itoa(i), Address: scaleUpstreamAddr(i), Domains: []string{"pbx" + strconv.Itoa(i) + ".example.com"}}
	}
	return Config{
		Listeners:       []Listener{{Transport: "udp", Address: "127.0.0.1:5060"}},
		Upstreams:       ups,
		Credentials:     store,
		Clients:         []ClientGroup{{Name: "phones", Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Upstreams: []string{"*"}}},
		UpstreamTimeout: 30 * time.Second, // the double answers at once; only a starved machine waits
		TimerC:          30 * time.Second,
		Logger:          slog.New(slog.DiscardHandler),
	}
}

// scaleStore is a store holding one credential that answers every
// upstream.
func scaleStore(tb testing.TB) *credentials.Store {
	s, err := credentials.NewStore([]credentials.Entry{{Username: "scale", Password: credentials.NewSecret("pw")}})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// scaleProxy is a Proxy wired as newSocketlessProxy wires one, its
// upstream transactions answered by a scaleDouble.
type scaleProxy struct {
	p      *Proxy
	double *scaleDouble
}

func newScaleProxy(tb testing.TB, cfg Config) *scaleProxy {
	tb.Helper()
	p, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ua, err := sipgo.NewUA()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = ua.Close() })
	client, err := sipgo.NewClient(ua)
	if err != nil {
		tb.Fatal(err)
	}
	d := &scaleDouble{log: slog.New(slog.DiscardHandler)}
	client.TxRequester = d
	p.ua, p.client, p.runCtx = ua, client, context.Background()
	p.listeners = []*boundListener{{Listener: cfg.Listeners[0], transport: "UDP", ip: net.ParseIP("127.0.0.1"), port: 5060, advertise: "127.0.0.1"}}
	return &scaleProxy{p: p, double: d}
}

// scaleDouble answers what the proxy sends: an upstream (172.16.0.0/16)
// challenges every out-of-dialog request without credentials and accepts
// the rest, tagging its 2xx to an INVITE "callee" with a Contact at its
// own address; a client (anything else) accepts everything. ACKs are
// counted, no transaction is made for them. It keeps weak pointers to the
// transactions it makes, so that settle can end those still waiting on a
// timer, when it last made one, and where its request went.
type scaleDouble struct {
	log      *slog.Logger
	acks     atomic.Int64
	last     atomic.Int64 // unix nanoseconds
	lastDest atomic.Pointer[string]
	mu       sync.Mutex
	txs      []weak.Pointer[sip.ClientTx]
}

func (d *scaleDouble) Request(_ context.Context, req *sip.Request) (sip.ClientTransaction, error) {
	if req.IsAck() {
		d.acks.Add(1)
		return nil, nil
	}
	dst := req.Destination()
	d.lastDest.Store(&dst)
	key, err := sip.ClientTxKeyMake(req)
	if err != nil {
		return nil, fmt.Errorf("scale double: %w", err)
	}
	tx := sip.NewClientTx(key, req, discardConn{}, d.log)
	if err := tx.Init(); err != nil {
		return nil, fmt.Errorf("scale double: %w", err)
	}
	d.mu.Lock()
	d.txs = append(d.txs, weak.Make(tx))
	d.mu.Unlock()
	d.last.Store(time.Now().UnixNano())
	go tx.Receive(scaleAnswer(req))
	return tx, nil
}

// scaleAnswer is the response of the peer req is sent to.
func scaleAnswer(req *sip.Request) *sip.Response {
	host, _, _ := net.SplitHostPort(req.Destination())
	if !strings.HasPrefix(host, "172.16.") {
		return sip.NewResponseFromRequest(req, 200, "OK", nil) // a client
	}
	_, toTag := tags(req)
	if toTag == "" && req.GetHeader("Proxy-Authorization") == nil {
		res := sip.NewResponseFromRequest(req, 407, "Proxy Authentication Required", nil)
		res.AppendHeader(sip.NewHeader("Proxy-Authenticate", scaleChallenge))
		return res
	}
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	if req.IsInvite() {
		res.To().Params.Add("tag", "callee")
		res.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "1002", Host: host, Port: 5060}})
	}
	return res
}

// settle lets every transaction timer of the requests so far run out, as
// a quiet minute would: it waits until Timer D (T4 = 5 s under
// TuneSIPStack, which sipgo also applies as Timer K to non-INVITE
// transactions over UDP) after the
// double's last transaction began, since sipgo may arm that timer after
// the transaction was terminated (the proxy ends a challenged
// transaction as soon as it has its 407, and sipgo's actFinal starts the
// timer afterwards), and such a timer holds the transaction and the
// proxy's hooks on it; then it ends the transactions still open, and
// sweeps what the proxy keeps for 64*T1 at most (2xx-answered INVITEs,
// ended dialogs, response pins) and the limiter's idle sources, as the
// proxy's 30 s sweeper would. What is left is state that outlives a call
// setup or a request: dialogs, bindings, CSeq offsets.
func (sp *scaleProxy) settle() {
	if t := sp.double.last.Swap(0); t != 0 {
		time.Sleep(time.Until(time.Unix(0, t).Add(max(sip.Timer_D, sip.Timer_M) + time.Second)))
	}
	sp.double.mu.Lock()
	txs := sp.double.txs
	sp.double.txs = nil
	sp.double.mu.Unlock()
	for _, w := range txs {
		if tx := w.Value(); tx != nil {
			tx.Terminate()
		}
	}
	p := sp.p
	later := time.Now().Add(2 * 64 * sip.T1)
	p.accepted.sweep(later)
	p.finals.sweep(later)
	p.pins.sweep(later)
	p.dialogs.sweep(later, p.cfg.DialogIdleTimeout)
	p.limiter.sweep(later)
}

// discardConn is the connection of the double's transactions: what they
// write (ACKs for non-2xx, retransmissions) goes nowhere.
type discardConn struct{}

func (discardConn) LocalAddr() net.Addr        { return nil }
func (discardConn) WriteMsg(sip.Message) error { return nil }
func (discardConn) Ref(int) int                { return 1 }
func (discardConn) TryClose() (int, error)     { return 1, nil }
func (discardConn) Close() error               { return nil }

// parse parses raw as a request that came over UDP from src.
func (sp *scaleProxy) parse(tb testing.TB, raw, src string) *sip.Request {
	msg, err := sip.ParseMessage([]byte(raw))
	if err != nil {
		tb.Fatalf("parse: %v\n%s", err, raw)
	}
	req := msg.(*sip.Request)
	req.SetTransport("UDP")
	req.SetSource(src)
	return req
}

// send parses raw as a request from src, runs it through the handler (an
// ACK through the ACK handler) and fails unless it was answered 200.
func (sp *scaleProxy) send(tb testing.TB, raw, src string) {
	req := sp.parse(tb, raw, src)
	if req.IsAck() {
		sp.p.handleAck(req, nil)
		return
	}
	tx := siptest.NewServerTxRecorder(req)
	sp.p.handle(req, tx)
	rs := tx.Result()
	tx.Terminate()
	if len(rs) == 0 || rs[len(rs)-1].StatusCode != 200 {
		tb.Fatalf("%s not answered 200: %v", req.Method, rs)
	}
}

// Requests of the scale benchmarks. Client i sends from
// scaleClientAddr(i); id makes Call-IDs and branches unique.

func scaleInvite(id string, i, up int) string {
	return "INVITE sip:1002@pbx" + strconv.Itoa(up) + ".example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + scaleClientAddr(i) + ";branch=z9hG4bK-i" + id + ";rport\r\n" +
		"From: <sip:1001@pbx" + strconv.Itoa(up) + ".example.com>;tag=c" + id + "\r\n" +
		"To: <sip:1002@pbx" + strconv.Itoa(up) + ".example.com>\r\n" +
		"Call-ID: call-" + id + "\r\nCSeq: 1 INVITE\r\n" +
		"Contact: <sip:1001@" + scaleClientAddr(i) + ">\r\n" +
		"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
}

// scaleInDialog is a request of the client in the dialog of call id,
// through upstream up.
func scaleInDialog(method, id string, i, up, seq int, branch string) string {
	return method + " sip:1002@" + scaleUpstreamAddr(up) + " SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + scaleClientAddr(i) + ";branch=z9hG4bK-" + branch + ";rport\r\n" +
		"From: <sip:1001@pbx" + strconv.Itoa(up) + ".example.com>;tag=c" + id + "\r\n" +
		"To: <sip:1002@pbx" + strconv.Itoa(up) + ".example.com>;tag=callee\r\n" +
		"Call-ID: call-" + id + "\r\nCSeq: " + strconv.Itoa(seq) + " " + method + "\r\n" +
		"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
}

// scaleMessage is an out-of-dialog MESSAGE of client i to upstream up.
func scaleMessage(id string, i, up int) string {
	return "MESSAGE sip:1002@pbx" + strconv.Itoa(up) + ".example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + scaleClientAddr(i) + ";branch=z9hG4bK-m" + id + ";rport\r\n" +
		"From: <sip:1001@pbx" + strconv.Itoa(up) + ".example.com>;tag=m" + id + "\r\n" +
		"To: <sip:1002@pbx" + strconv.Itoa(up) + ".example.com>\r\n" +
		"Call-ID: msg-" + id + "\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n" +
		"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
}

// scaleRegister registers user u<i> at scaleClientAddr(i) with upstream 0.
func scaleRegister(id string, i, seq int) string {
	aor := "sip:u" + strconv.Itoa(i) + "@pbx0.example.com"
	return "REGISTER sip:pbx0.example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + scaleClientAddr(i) + ";branch=z9hG4bK-r" + id + ";rport\r\n" +
		"From: <" + aor + ">;tag=r" + strconv.Itoa(i) + "\r\nTo: <" + aor + ">\r\n" +
		"Call-ID: reg-" + strconv.Itoa(i) + "\r\nCSeq: " + strconv.Itoa(seq) + " REGISTER\r\n" +
		"Contact: <sip:u" + strconv.Itoa(i) + "@" + scaleClientAddr(i) + ">\r\nExpires: 3600\r\n" +
		"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
}

// scaleUnregisterAll removes every binding of user u<i> (RFC 3261
// §10.2.2).
func scaleUnregisterAll(id string, i, seq int) string {
	aor := "sip:u" + strconv.Itoa(i) + "@pbx0.example.com"
	return "REGISTER sip:pbx0.example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + scaleClientAddr(i) + ";branch=z9hG4bK-r" + id + ";rport\r\n" +
		"From: <" + aor + ">;tag=r" + strconv.Itoa(i) + "\r\nTo: <" + aor + ">\r\n" +
		"Call-ID: reg-" + strconv.Itoa(i) + "\r\nCSeq: " + strconv.Itoa(seq) + " REGISTER\r\n" +
		"Contact: *\r\nExpires: 0\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
}

// scaleInbound is a MESSAGE upstream 0 sends to the contact client i
// registered.
func scaleInbound(id string, i int) string {
	return "MESSAGE sip:u" + strconv.Itoa(i) + "@" + scaleClientAddr(i) + " SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + scaleUpstreamAddr(0) + ";branch=z9hG4bK-in" + id + "\r\n" +
		"From: <sip:1002@pbx0.example.com>;tag=in" + id + "\r\n" +
		"To: <sip:u" + strconv.Itoa(i) + "@pbx0.example.com>\r\n" +
		"Call-ID: in-" + id + "\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n" +
		"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
}

// scatter maps the k-th request of a benchmark to one of n items, spread
// over the table rather than walking it in order.
func scatter(k, n int) int {
	return int(uint64(k) * 2654435761 % uint64(n))
}

// TestScaleHarness keeps the scale benchmarks' requests working through
// the handler: calls leave dialogs whose INFO, ACK and BYE go through,
// registrations leave bindings an upstream's MESSAGE reaches, and
// "Contact: *" removes them.
func TestScaleHarness(t *testing.T) {
	sp := newScaleProxy(t, scaleConfig(3, scaleStore(t)))
	sp.fillDialogs(t, 3)
	if n := sp.p.DialogCount(); n != 3 {
		t.Fatalf("%d dialogs after 3 calls", n)
	}
	sp.send(t, scaleInDialog("INFO", "1", 1, 0, 2, "t-info"), scaleClientAddr(1))
	sp.send(t, scaleInDialog("BYE", "1", 1, 0, 3, "t-bye"), scaleClientAddr(1))
	if n := sp.p.DialogCount(); n != 2 {
		t.Fatalf("%d dialogs after a BYE, want 2", n)
	}
	sp.send(t, scaleMessage("t-last", 0, 2), scaleClientAddr(0))
	if got := *sp.double.lastDest.Load(); got != scaleUpstreamAddr(2) {
		t.Fatalf("a MESSAGE to pbx2.example.com went to %s, want %s", got, scaleUpstreamAddr(2))
	}
	sp.fillBindings(t, 2)
	sp.send(t, scaleInbound("t-in", 1), scaleUpstreamAddr(0))
	if got := *sp.double.lastDest.Load(); got != scaleClientAddr(1) {
		t.Fatalf("the upstream's MESSAGE to u1 went to %s, want its contact %s", got, scaleClientAddr(1))
	}
	sp.send(t, scaleUnregisterAll("t-ua", 1, 2), scaleClientAddr(1))
	if n := len(sp.p.Bindings()); n != 1 {
		t.Fatalf("%d bindings after unregistering one AOR of 2, want 1", n)
	}
}
