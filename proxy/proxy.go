package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/tcpguard"
)

func init() {
	// sipgo refuses UDP writes above UDPMTUSize-200 (1300 bytes) with
	// ErrUDPMTUCongestion and never falls back to TCP. A forwarded INVITE
	// with SDP, our Via and an Authorization header crosses that easily, so
	// the limit is raised to what a UDP datagram can carry in practice
	// (loopback and LAN fragment fine). Set here, before any goroutine can
	// read it, because it is a package global of sipgo.
	if sip.UDPMTUSize < 9000 {
		sip.UDPMTUSize = 9000
	}
	// A completed non-INVITE server transaction over UDP lingers to answer
	// retransmissions of its request with the same response: Timer J, 64*T1
	// = 32 s in RFC 3261 §17.2.2. The patched sipgo keeps only the response
	// bytes for that long (internal/sipgo/PATCHES.md, 6), which at
	// thousands of requests a second is still most of authproxy's heap. A
	// client stops retransmitting once a response reaches it and
	// retransmits at most every T2 (4 s) until then, so T4 (5 s) still
	// absorbs every retransmission but those whose responses were all lost:
	// the wait Kamailio's tm module uses (wt_timer, 5 s) for the same
	// reason.
	if sip.Timer_J > sip.T4 {
		sip.Timer_J = sip.T4
	}
	// The same for INVITE transactions once a 2xx passed (RFC 6026's
	// Accepted state, Timer L on the server side and M on the client side,
	// both 32 s): each holds the INVITE, its SDP and the 2xx, and a call
	// setup rate of a few hundred a second kept some 100 MB of them, most
	// of authproxy's memory with thousands of calls up. They absorb INVITE
	// retransmissions (a client stops sending them at the first 1xx) and
	// pass the callee's 2xx retransmissions on (sent until the ACK arrives,
	// normally milliseconds). Later 2xx retransmissions, after an ACK lost
	// for 5 s, are relayed statelessly by handleStrayResponse.
	if sip.Timer_L > sip.T4 {
		sip.Timer_L = sip.T4
	}
	if sip.Timer_M > sip.T4 {
		sip.Timer_M = sip.T4
	}
}

// Proxy is authproxy's SIP side: it serves clients on the configured
// listeners, forwards their requests to the configured upstreams and answers
// the upstreams' digest challenges with the configured credentials.
type Proxy struct {
	cfg Config
	log *slog.Logger
	rt  atomic.Pointer[routing]

	ua     *sipgo.UserAgent
	srv    *sipgo.Server
	client *sipgo.Client
	lane   *fastLane // UDP out-of-dialog non-INVITE requests, without sipgo's transactions
	// strayWriter sends the responses handleStrayResponse relays.
	strayWriter strayResponseWriter

	cseq     *cseqTable
	nonces   *nonceCounter
	preempt  *authCache // challenges kept for preemptive answers (preemptive.go)
	dialogs  *dialogTable
	bindings *bindingTable // contacts registered through us (registrar.go)
	finals   recentFinals
	// accepted remembers, for the time a client may still retransmit it,
	// each INVITE over UDP whose 2xx was relayed (acceptedKey), so that a
	// retransmission arriving after sipgo ended the server transaction
	// (Timer L, 5 s) is absorbed instead of forwarded as a new INVITE.
	accepted recentFinals
	limiter  *limiter
	local    *localAuth
	health   *healthChecker  // OPTIONS pings to the upstreams (health.go)
	regs     *regManager     // trunk registrations (registration.go)
	tcp      *tcpguard.Guard // caps and deadlines of inbound TCP/TLS connections (listeners.go)

	pins     *pinTable        // where each request with our branch went (pinning.go)
	recent   *recentDatagrams // where recent request datagrams came from (unparsable.go)
	parser   *sip.Parser      // sipgo's parser, lenient about some headers (validate.go)
	inputLog *logThrottle     // lines about bad input, one per kind and interval

	lastRefusalLog atomic.Int64 // unix nanos of the last "request refused" log line

	mu        sync.Mutex
	listeners []*boundListener
	runCtx    context.Context

	flight inflight
}

// boundListener is a Listener after bind: its real port and the host we
// advertise in Via and Record-Route.
type boundListener struct {
	Listener
	transport string // "UDP" / "TCP"
	ip        net.IP
	port      int
	advertise string
	local     string // ip:port, as sipgo's UDP pool knows the listening socket
	closer    io.Closer
	udp       net.PacketConn
	tcp       net.Listener
	stopped   error // why serving stopped while the proxy runs; guarded by Proxy.mu
}

// New checks cfg and prepares a proxy; nothing is bound until Run.
func New(cfg Config) (*Proxy, error) {
	ups, err := cfg.validate()
	if err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	if cfg.MaxChallenges <= 0 {
		cfg.MaxChallenges = defaultMaxChallenges
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = defaultUpstreamTimeout
	}
	if cfg.TimerC <= 0 {
		cfg.TimerC = defaultTimerC
	}
	if cfg.DialogIdleTimeout <= 0 {
		cfg.DialogIdleTimeout = defaultDialogIdle
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = defaultShutdownGrace
	}
	cfg.setRegistrationDefaults()
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		cfg:      cfg,
		log:      log,
		cseq:     newCSeqTable(),
		nonces:   newNonceCounter(),
		preempt:  newAuthCache(),
		dialogs:  newDialogTable(),
		bindings: newBindingTable(),
		limiter:  newLimiter(cfg.Limits),
		local:    newLocalAuth(),
		pins:     newPinTable(),
		recent:   newRecentDatagrams(),
		parser:   sip.NewParser(sip.WithHeadersParsers(lenientHeaderParsers())),
		inputLog: newLogThrottle(sipgoLogInterval),
	}
	p.rt.Store(&routing{upstreams: ups, creds: cfg.Credentials, maxChallenges: cfg.MaxChallenges, clients: cfg.Clients})
	p.health = newHealthChecker(p, cfg.Health)
	p.regs = newRegManager(p)
	p.tcp = tcpguard.New(tcpguard.Config{
		Limits:   tcpLimits(cfg),
		Classify: func(src netip.Addr) tcpguard.Peer { return p.rt.Load().connectionPeer(src) },
		Logger:   log.With("component", "tcp"),
	})
	return p, nil
}

// ErrRestartRequired is wrapped by Reload when the new configuration
// changes something only a restart can apply (the listeners, their TCP
// limits).
var ErrRestartRequired = errors.New("listener changes need a restart")

// Reload applies a new configuration to requests that start from now on:
// upstreams, routes, credentials and the challenge budget are swapped as
// one. Requests, transactions and dialogs in progress keep what they
// started with. An invalid configuration is rejected whole and the old one
// stays. Listener changes are not applied (they need new sockets): Reload
// then applies everything else and returns an error wrapping
// ErrRestartRequired.
func (p *Proxy) Reload(cfg Config) error {
	ups, err := cfg.validate()
	if err != nil {
		return fmt.Errorf("proxy config: %w", err)
	}
	if cfg.MaxChallenges <= 0 {
		cfg.MaxChallenges = defaultMaxChallenges
	}
	p.rt.Store(&routing{upstreams: ups, creds: cfg.Credentials, maxChallenges: cfg.MaxChallenges, clients: cfg.Clients})
	p.limiter.setLimits(cfg.Limits)
	p.health.configure(cfg.Health)
	p.regs.reconcile(cfg.Registrations)
	if !sameListeners(p.cfg.Listeners, cfg.Listeners) || tcpLimits(p.cfg) != tcpLimits(cfg) {
		return fmt.Errorf("reload: %w", ErrRestartRequired)
	}
	return nil
}

func sameListeners(a, b []Listener) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !strings.EqualFold(a[i].Transport, b[i].Transport) || a[i].Address != b[i].Address || a[i].Advertise != b[i].Advertise {
			return false
		}
	}
	return true
}

// DialogCount returns the number of established dialogs authproxy tracks.
func (p *Proxy) DialogCount() int { return p.dialogs.len() }

// ListenAddrs returns the bound "transport host:port" of every listener,
// once Run has bound them (for tests that listen on port 0).
func (p *Proxy) ListenAddrs() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for _, l := range p.listeners {
		key := strings.ToLower(l.transport)
		if _, ok := out[key]; !ok {
			out[key] = net.JoinHostPort(l.ip.String(), strconv.Itoa(l.port))
		}
	}
	return out
}

// Run binds every listener, serves until ctx is cancelled, then stops
// accepting requests, lets the ones in flight finish within ShutdownGrace,
// and closes everything it started. It returns nil after a clean stop.
func (p *Proxy) Run(ctx context.Context) error {
	bound, err := p.bind()
	if err != nil {
		return err
	}
	p.lane = newFastLane(p)
	sipgoLog := p.sipgoLogger()
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent("authproxy"),
		sipgo.WithUserAgenTLSConfig(p.upstreamTLS()),
		sipgo.WithUserAgentParser(p.parser),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerLogger(sipgoLog),
			sip.WithTransactionLayerUnhandledResponseHandler(p.handleStrayResponse),
			sip.WithTransactionLayerFastLane(p.lane),
			sip.WithTransactionLayerCancelFilter(p.cancelMatched),
		),
		sipgo.WithUserAgentTransportLayerOptions(
			sip.WithTransportLayerLogger(sipgoLog),
			sip.WithTransportLayerReadFilter(p.readFilter),
		),
	)
	if err != nil {
		closeAll(bound)
		return fmt.Errorf("sip user agent: %w", err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(sipgoLog))
	if err != nil {
		closeAll(bound)
		_ = ua.Close()
		return fmt.Errorf("sip server: %w", err)
	}
	client, err := sipgo.NewClient(ua, sipgo.WithClientLogger(sipgoLog))
	if err != nil {
		closeAll(bound)
		_ = ua.Close()
		return fmt.Errorf("sip client: %w", err)
	}
	p.mu.Lock()
	p.ua, p.srv, p.client = ua, srv, client
	p.strayWriter = srv.WriteResponse
	p.listeners = bound
	p.runCtx = ctx
	p.mu.Unlock()

	p.registerHandlers(srv)
	healthDone := p.health.start(ctx) // stops with ctx
	// The lane's Timer F runs until the requests in flight have drained.
	laneCtx, stopLane := context.WithCancel(context.Background())
	laneDone := make(chan struct{})
	go func() {
		defer close(laneDone)
		p.lane.run(laneCtx)
	}()
	defer func() {
		stopLane()
		<-laneDone
	}()

	var serving sync.WaitGroup
	for _, l := range bound {
		serving.Add(1)
		go func() {
			defer serving.Done()
			var err error
			switch {
			case l.udp != nil:
				err = srv.ServeUDP(l.udp)
			case l.transport == "TLS":
				err = srv.ServeTLS(l.tcp)
			default:
				err = srv.ServeTCP(l.tcp)
			}
			if ctx.Err() == nil {
				p.listenerStopped(l, err)
			}
		}()
	}
	// sipgo registers a UDP listener in its connection pool only once its
	// serve goroutine runs; until then a request sent from that address
	// would try to bind it again ("address already in use"). Wait for it.
	for _, l := range bound {
		if l.udp == nil {
			continue
		}
		deadline := time.Now().Add(2 * time.Second)
		for !p.udpListenerServing(l) {
			if time.Now().After(deadline) {
				p.log.Warn("udp listener not registered by sipgo yet", "address", l.udp.LocalAddr().String())
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, l := range bound {
		p.log.Info("listening", "transport", strings.ToLower(l.transport),
			"address", net.JoinHostPort(l.ip.String(), strconv.Itoa(l.port)), "advertise", l.advertise)
	}
	if p.cfg.Ready != nil {
		p.cfg.Ready()
	}
	regCtx, stopRegs := context.WithCancel(context.Background())
	defer stopRegs()
	p.regs.start(regCtx, p.cfg.Registrations)

	sweep := time.NewTicker(30 * time.Second)
	defer sweep.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case now := <-sweep.C:
			p.cseq.sweep(now)
			p.nonces.sweep(now)
			p.preempt.sweep(now)
			p.dialogs.sweep(now, p.cfg.DialogIdleTimeout)
			p.bindings.sweep(now)
			p.finals.sweep(now)
			p.accepted.sweep(now)
			p.limiter.sweep(now)
			p.pins.sweep(now)
		}
	}

	// Stop: refuse new requests, let those in flight finish (their upstream
	// responses still arrive on the listeners, so those stay open), then
	// close the sockets and the UA.
	p.log.Info("shutting down", "in_flight", p.flight.count(), "grace", p.cfg.ShutdownGrace)
	// Trunk registrations unregister (Expires: 0, bounded) while the
	// listeners still receive the answers.
	stopRegs()
	p.regs.wait()
	if !p.flight.drain(p.cfg.ShutdownGrace) {
		p.log.Warn("shutdown grace elapsed with requests in flight", "in_flight", p.flight.count())
	}
	<-healthDone
	closeAll(bound)
	_ = ua.Close()
	serving.Wait()
	p.log.Info("stopped")
	return nil
}

// udpSocketBuffer is the receive and send buffer asked for each UDP
// listener. One socket carries every client's requests and every upstream's
// responses, read by one goroutine; the kernel default (about 200 kB, some
// 300 requests) overflows at a few thousand requests a second whenever that
// goroutine waits a millisecond for a CPU (a GC pause, a burst), and every
// dropped datagram costs its sender a 500 ms retransmission. 4 MB absorbs
// bursts twenty times longer. Linux caps it at net.core.rmem_max /
// wmem_max (often 208 kB: raise those sysctls to get the full buffer).
const udpSocketBuffer = 4 << 20

// growSocketBuffers raises pc's buffers toward udpSocketBuffer; a refusal
// only costs headroom, so it is logged, not returned.
func growSocketBuffers(pc net.PacketConn, log *slog.Logger) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return
	}
	if err := uc.SetReadBuffer(udpSocketBuffer); err != nil {
		log.Warn("cannot grow the UDP receive buffer", "address", pc.LocalAddr().String(), "error", err)
	}
	if err := uc.SetWriteBuffer(udpSocketBuffer); err != nil {
		log.Warn("cannot grow the UDP send buffer", "address", pc.LocalAddr().String(), "error", err)
	}
}

func (p *Proxy) bind() ([]*boundListener, error) {
	var out []*boundListener
	for _, l := range p.cfg.Listeners {
		tp, _ := normTransport(l.Transport)
		bl := &boundListener{Listener: l, transport: tp}
		var laddr net.Addr
		switch tp {
		case "UDP":
			pc, err := net.ListenPacket("udp", l.Address)
			if err != nil {
				closeAll(out)
				return nil, fmt.Errorf("listen udp %s: %w", l.Address, err)
			}
			growSocketBuffers(pc, p.log)
			bl.udp, bl.closer, laddr = pc, pc, pc.LocalAddr()
		case "TCP", "TLS":
			ln, err := net.Listen("tcp", l.Address)
			if err != nil {
				closeAll(out)
				return nil, fmt.Errorf("listen %s %s: %w", strings.ToLower(tp), l.Address, err)
			}
			var tlsConf *tls.Config
			if tp == "TLS" {
				tlsConf = l.TLS
			}
			// The guard accepts (retrying when out of descriptors), refuses
			// and caps; sipgo serves what it lets through.
			gl := p.tcp.Listen(ln, tlsConf)
			bl.tcp, bl.closer, laddr = gl, gl, ln.Addr()
		}
		host, portStr, _ := net.SplitHostPort(laddr.String())
		bl.ip = net.ParseIP(host)
		bl.port, _ = strconv.Atoi(portStr)
		bl.local = laddr.String()
		bl.advertise = l.Advertise
		if bl.advertise == "" {
			bl.advertise = host
		}
		out = append(out, bl)
	}
	return out, nil
}

func closeAll(ls []*boundListener) {
	for _, l := range ls {
		_ = l.closer.Close()
	}
}

// inflight counts requests being handled so that shutdown can wait for
// them; once draining, new requests are refused.
type inflight struct {
	mu       sync.Mutex
	n        int
	draining bool
	idle     chan struct{}
}

// enter registers a request; false means the proxy is shutting down.
func (f *inflight) enter() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.draining {
		return false
	}
	f.n++
	return true
}

func (f *inflight) leave() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
}

func (f *inflight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// drain refuses new requests and waits up to grace for the others; it
// reports whether all finished.
func (f *inflight) drain(grace time.Duration) bool {
	f.mu.Lock()
	f.draining = true
	if f.n == 0 {
		f.mu.Unlock()
		return true
	}
	idle := make(chan struct{})
	f.idle = idle
	f.mu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}
