package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/tcpguard"
	"github.com/authproxy/authproxy/proxy/wsgate"
)

// Proxy is authproxy's SIP side: it serves clients on the configured
// listeners, forwards their requests to the configured upstreams and answers
// the upstreams' digest challenges with the configured credentials.
//
// Its parts are embedded, so that each field reads as p.field: the sipgo
// stack it runs on, the tables of request and dialog state, the guards on
// what sources send, the services kept per upstream, and the listeners.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	started time.Time
	rt      atomic.Pointer[routing] // upstreams, groups, credentials: swapped whole by Reload
	sipStack
	stateTables
	sourceGuards
	upstreamServices
	listenState
}

// sipStack is the sipgo user agent the proxy runs on, and what it adds to
// sipgo's paths.
type sipStack struct {
	ua     *sipgo.UserAgent
	srv    *sipgo.Server
	client *sipgo.Client
	lane   *fastLane   // requests forwarded without sipgo's transactions (fastlane.go)
	parser *sip.Parser // sipgo's parser, lenient about some headers (validate.go)
	// strayWriter sends the responses handleStrayResponse relays.
	strayWriter strayResponseWriter
	// capture sends HEPv3 copies of the messages (capture.go); nil when
	// off. Set once by Run before anything serves.
	capture atomic.Pointer[capturer]
	// sipgoAcks counts the ACKs sipgo's handler got (handleAck), those the
	// UDP listeners' sockets did not take (fastlane_ack.go).
	sipgoAcks atomic.Int64
}

// stateTables are what the proxy remembers about requests, dialogs and
// challenges beyond one transaction.
type stateTables struct {
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
}

// sourceGuards decide what a source may send and which messages are
// believed: limits, local authentication, response pinning, CANCEL
// sources, TCP caps, and the throttles of what bad input logs.
type sourceGuards struct {
	limiter  *limiter
	local    *localAuth
	pins     *pinTable        // where each request with our branch went (pinning.go)
	invites  *inviteSources   // where each INVITE came from, for its CANCEL (cancel.go)
	recent   *recentDatagrams // where recent request datagrams came from (unparsable.go)
	tcp      *tcpguard.Guard  // caps and deadlines of inbound TCP/TLS connections (listeners.go)
	ws       *wsgate.Gate     // upgrade checks, caps and timeouts of inbound WebSocket connections (websocket.go)
	flows    *flowTokens      // flow tokens in the Path of WebSocket clients' REGISTERs (websocket.go)
	inputLog *logThrottle     // lines about bad input, one per kind and interval

	lastRefusalLog atomic.Int64 // unix nanos of the last "request refused" log line
}

// upstreamServices run per upstream, beside the requests.
type upstreamServices struct {
	health  *healthChecker // OPTIONS pings to the upstreams' targets (health.go)
	regs    *regManager    // trunk registrations (registration.go)
	store   *stateSync     // the state store (statestore.go)
	targets *targets       // what upstream names resolve to (targets.go)
	tlsConn *tlsConnector  // TLS connections to upstream targets, verified for their names (tlsconn.go)
	tcpConn *tcpConnector  // TCP connections to upstream targets, with capture on (tcpconn.go); nil otherwise
}

// listenState is the bound listeners and the requests in flight, guarded
// by mu where noted.
type listenState struct {
	mu        sync.Mutex
	listeners []*boundListener
	runCtx    context.Context
	flight    inflight
}

// boundListener is a Listener after bind: its real port and the host we
// advertise in Via and Record-Route.
type boundListener struct {
	Listener
	transport string // "UDP", "TCP", "TLS", "WS", "WSS"
	ip        net.IP
	port      int
	advertise string
	local     string // ip:port, as sipgo's UDP pool knows the listening socket
	closer    io.Closer
	udp       net.PacketConn // the socket itself
	sock      *laneSocket    // the socket as sipgo reads it (udpsocket.go)
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
	if cfg.FailoverTimeout <= 0 {
		cfg.FailoverTimeout = defaultFailoverTimeout
	}
	cfg.setRegistrationDefaults()
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dns := cfg.DNS
	dns.Logger = log.With("component", "dns")
	tg, err := newTargets(dns)
	if err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	p := &Proxy{
		cfg:              cfg,
		log:              log,
		started:          time.Now(),
		upstreamServices: upstreamServices{targets: tg},
		sipStack:         sipStack{parser: sip.NewParser(sip.WithHeadersParsers(lenientHeaderParsers()))},
		stateTables: stateTables{
			cseq:     newCSeqTable(),
			nonces:   newNonceCounter(),
			preempt:  newAuthCache(),
			dialogs:  newDialogTable(),
			bindings: newBindingTable(),
		},
		sourceGuards: sourceGuards{
			limiter:  newLimiter(cfg.Limits),
			local:    newLocalAuth(),
			pins:     newPinTable(),
			invites:  newInviteSources(cfg.TimerC),
			recent:   newRecentDatagrams(),
			inputLog: newLogThrottle(sipgoLogInterval),
			flows:    newFlowTokens(),
		},
	}
	rt, err := p.newRouting(cfg, ups)
	if err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	p.rt.Store(rt)
	p.health = newHealthChecker(p, cfg.Health)
	p.store = newStateSync(cfg.State, instanceName(cfg.Instance), cfg.LeaseTTL, log)
	p.store.republish = p.republishState
	p.regs = newRegManager(p)
	guard := tcpguard.Config{
		Limits:   tcpLimits(cfg),
		Classify: func(src netip.Addr) tcpguard.Peer { return p.rt.Load().connectionPeer(src) },
		Logger:   log.With("component", "tcp"),
		Inspect:  p.inspectStream,
		Divert:   p.divertStream,
	}
	if cfg.Capture.HEP != "" {
		guard.Tap = p.tapStream
	}
	p.tcp = tcpguard.New(guard)
	p.ws = p.newWebSocketGate(cfg.WebSocket, cfg.Capture.HEP != "")
	return p, nil
}

// newRouting is the routing cfg describes, with its source index as far
// as the resolver knows the upstreams' names yet.
func (p *Proxy) newRouting(cfg Config, ups []*upstream) (*routing, error) {
	groups, err := buildGroups(cfg.Groups, ups)
	if err != nil {
		return nil, err
	}
	rt := &routing{upstreams: ups, groups: groups, creds: cfg.Credentials, maxChallenges: cfg.MaxChallenges, clients: cfg.Clients,
		names: indexRouteNames(ups, groups)}
	p.indexSources(rt)
	return rt, nil
}

// ErrRestartRequired is wrapped by Reload when the new configuration
// changes something only a restart can apply (the listeners, their TCP
// limits, the capture).
var ErrRestartRequired = errors.New("listener changes need a restart")

// Reload applies a new configuration to requests that start from now on:
// upstreams (whose new names the resolver watches from now on), groups,
// routes, credentials and the challenge budget are swapped as one. The
// DNS settings and FailoverTimeout are kept from New. Requests, transactions and dialogs in progress keep what they
// started with. An invalid configuration is rejected whole and the old one
// stays. Listener and capture changes are not applied (they need new
// sockets): Reload then applies everything else and returns an error
// wrapping ErrRestartRequired.
func (p *Proxy) Reload(cfg Config) error {
	ups, err := cfg.validate()
	if err != nil {
		return fmt.Errorf("proxy config: %w", err)
	}
	if cfg.MaxChallenges <= 0 {
		cfg.MaxChallenges = defaultMaxChallenges
	}
	rt, err := p.newRouting(cfg, ups)
	if err != nil {
		return fmt.Errorf("proxy config: %w", err)
	}
	p.targets.watch(ups)
	p.rt.Store(rt)
	p.limiter.setLimits(cfg.Limits)
	p.health.configure(cfg.Health)
	p.regs.reconcile(cfg.Registrations)
	if !sameListeners(p.cfg.Listeners, cfg.Listeners) || tcpLimits(p.cfg) != tcpLimits(cfg) || p.cfg.WebSocket != cfg.WebSocket || p.cfg.Capture != cfg.Capture {
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
		wa, wb := a[i].WebSocket, b[i].WebSocket
		if wa.Path != wb.Path || !slices.Equal(wa.Origins, wb.Origins) || wa.TokenSecret.Reveal() != wb.TokenSecret.Reveal() {
			return false
		}
	}
	return true
}

// DialogCount returns the number of established dialogs authproxy tracks.
func (p *Proxy) DialogCount() int { return p.dialogs.len() }

// ListenAddrs returns the bound "host:port" of the first listener of each
// transport ("udp", "tcp", "tls", "ws", "wss"), and of the first IPv6 one
// ("udp6", "tcp6", "tls6", ...), once Run has bound them (for tests that listen on port
// 0).
func (p *Proxy) ListenAddrs() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for _, l := range p.listeners {
		keys := []string{strings.ToLower(l.transport)}
		if l.ip.To4() == nil {
			keys = append(keys, keys[0]+"6")
		}
		for _, key := range keys {
			if _, ok := out[key]; !ok {
				out[key] = net.JoinHostPort(l.ip.String(), strconv.Itoa(l.port))
			}
		}
	}
	return out
}

// Run binds every listener, serves until ctx is cancelled, then stops
// accepting requests, lets the ones in flight finish within ShutdownGrace,
// and closes everything it started. It returns nil after a clean stop.
func (p *Proxy) Run(ctx context.Context) error {
	capture, err := newCapturer(ctx, p.cfg.Capture, p.log.With("component", "capture"))
	if err != nil {
		// SIP goes on without the copies: a receiver whose name does not
		// resolve must not take the proxy down.
		p.log.Error("HEP capture off: cannot open a socket to the receiver", "receiver", p.cfg.Capture.HEP, "error", err)
	}
	p.capture.Store(capture)
	// Capture sends until everything else stopped, the messages of the
	// shutdown included, then what is still queued.
	captureCtx, stopCapture := context.WithCancel(context.Background())
	captureDone := make(chan struct{})
	go func() {
		defer close(captureDone)
		capture.run(captureCtx)
	}()
	defer func() {
		stopCapture()
		<-captureDone
	}()
	bound, err := p.bind()
	if err != nil {
		return err
	}
	if n := p.loadBindings(ctx); n > 0 {
		p.log.Info("bindings restored from the state store", "bindings", n)
	}
	p.loadOffsets(ctx)
	p.lane = newFastLane(p)
	sipgoLog := p.sipgoLogger()
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent("authproxy"),
		sipgo.WithUserAgenTLSConfig(p.upstreamTLS()),
		sipgo.WithUserAgentParser(p.parser),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerLogger(sipgoLog),
			sip.WithTransactionLayerUnhandledResponseHandler(p.handleStrayResponse),
		),
		sipgo.WithUserAgentTransportLayerOptions(
			sip.WithTransportLayerLogger(sipgoLog),
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
	tlsConn := newTLSConnector(capture, func(addr string) bool {
		c, _ := ua.TransportLayer().GetConnection("tls", addr)
		if c == nil {
			return false
		}
		_, _ = c.TryClose() // Get took a reference
		return true
	})
	var tcpConn *tcpConnector
	if capture != nil {
		tcpConn = newTCPConnector(capture, firstTCPAddr(bound), func(addr string) bool {
			c, _ := ua.TransportLayer().GetConnection("tcp", addr)
			if c == nil {
				return false
			}
			_, _ = c.TryClose() // Get took a reference
			return true
		})
	}
	p.mu.Lock()
	p.ua, p.srv, p.client, p.tlsConn, p.tcpConn = ua, srv, client, tlsConn, tcpConn
	p.strayWriter = srv.WriteResponse
	p.listeners = bound
	p.runCtx = ctx
	p.mu.Unlock()

	p.registerHandlers(srv)
	// The resolver and the source index outlive ctx: the unregistrations
	// at shutdown still resolve, and the requests in flight still fail
	// over.
	resolveCtx, stopResolve := context.WithCancel(context.Background())
	var resolving sync.WaitGroup
	resolving.Go(func() { p.targets.r.Run(resolveCtx) })
	resolving.Go(func() { p.followResolutions(resolveCtx) })
	p.targets.watch(p.rt.Load().upstreams)
	defer func() {
		stopResolve()
		resolving.Wait()
	}()
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
	serving.Go(func() { _ = srv.ServeTLS(tlsConn) }) // the TLS connections authproxy makes to upstreams
	if tcpConn != nil {
		serving.Go(func() { _ = srv.ServeTCP(tcpConn) }) // the TCP ones, with capture on
	}
	for _, l := range bound {
		serving.Add(1)
		go func() {
			defer serving.Done()
			var err error
			switch {
			case l.sock != nil:
				err = srv.ServeUDP(l.sock)
			case l.transport == "TLS":
				err = srv.ServeTLS(l.tcp)
			case l.transport == "WS":
				err = srv.ServeWS(l.tcp)
			case l.transport == "WSS":
				err = srv.ServeWSS(l.tcp)
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
	storeCtx, stopStore := context.WithCancel(context.Background())
	var storing sync.WaitGroup
	storing.Go(func() { p.store.run(storeCtx, p.member) })
	storing.Go(func() { p.runSharedRate(storeCtx) })
	defer func() {
		stopStore()
		storing.Wait()
	}()
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

	// Stop: refuse new requests from now on (before the trunk
	// registrations unregister, which may take their 2 s), let those in
	// flight finish (their upstream responses still arrive on the
	// listeners, so those stay open), then close the sockets and the UA.
	p.flight.close()
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
	_ = tlsConn.Close()
	if tcpConn != nil {
		_ = tcpConn.Close()
	}
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
