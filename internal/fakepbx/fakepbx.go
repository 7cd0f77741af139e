// Package fakepbx is an in-process fake SIP upstream for tests: a sipgo
// server that challenges like Asterisk.
//
// Start binds UDP and TCP on the same free port of a loopback address (and
// TLS on another, with Config.TLS) and serves every method. A request
// without valid digest credentials for every configured realm gets a 401
// (REGISTER) or 407 (everything else) with one challenge header per realm
// and algorithm, each with its own fresh nonce and opaque. A request with
// valid credentials gets Config.FinalCode. Credentials are verified with the
// fake's own digest implementation (DigestResponse), not with
// github.com/icholy/digest, so the fake cross-checks the proxy.
//
// Config.Strict makes the fake as strict as real servers (strict.go): 401
// for every method (Asterisk's PJSIP), only the first credential for a
// realm judged, nonces that expire on the fake's clock (stale=true),
// registrar bounds (423 with Min-Expires, capped expiry, every binding
// listed), Request-URI and route set checks in dialogs, and RFC 7616
// quoting (400 otherwise). Each mode is also a knob of its own.
//
// Like a strict registrar or UA, the fake also refuses (500 "CSeq out of
// order") any request whose CSeq is not higher than the last one it saw for
// the same Call-ID (for a request within one of the UA's dialogs: the last
// one of that dialog, the INVITE's to begin with), which catches a proxy
// that forgets its CSeq offset after an authenticated retry. ACK and CANCEL
// are exempt.
//
// The fake reads its sockets through a tap that keeps every request's bytes
// and arrival order: Request.Raw and the digest uri check use the wire text
// (not sipgo's re-rendering), and Requests() and the CSeq check follow wire
// order although sipgo handles each message in its own goroutine. A request
// whose bytes the tap does not have fails the test. Final
// responses are remembered per transaction, so a retransmission reaching the
// handler after sipgo dropped its transaction is answered again instead of
// failing the CSeq check. Responses that sipgo refuses to send over UDP
// (over sip.UDPMTUSize-200 bytes, e.g. many challenge headers) are written to
// the socket directly, as a PBX would.
//
// An authenticated INVITE is answered by a callee user agent (ua.go, see
// CallConfig): 180 (or a reliable 183), then the final response, with
// dialogs that are kept and checked (ACK, CSeq, route set), requests in
// them answered, and requests sent into them (HangUp, ReInvite, Notify).
// Requests carrying a To tag that matches none of the UA's dialogs are
// refused with 481 and listed by Strays (see strayRequest for which ones).
package fakepbx

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// Config describes one fake PBX.
type Config struct {
	// Name identifies the fake in log messages and in its Server header.
	Name string
	// Host is the loopback address to serve on, e.g. "127.0.0.2" or "::1"
	// (default "127.0.0.1"). UDP and TCP are served on the same free port.
	Host string
	// Realm is the primary realm (default "asterisk").
	Realm string
	// Accounts maps auth username to password. "anonymous" with "" may be
	// listed to accept anonymous credentials.
	Accounts map[string]string
	// Algorithms lists the offered algorithms, one challenge header per
	// entry and in this order (default ["MD5"]). Supported, matched
	// case-insensitively and written into the challenge as spelled here:
	// MD5, MD5-sess, SHA-256, SHA-256-sess, SHA-512-256, SHA-512-256-sess.
	Algorithms []string
	// QOP is the qop offered: "auth" (default), "auth-int",
	// "auth,auth-int", or "none" (no qop parameter, RFC 2069 style).
	QOP string
	// ExtraRealms are challenged in the same 401/407 as Realm, one header
	// per realm and algorithm. A request must carry a valid answer for every
	// realm. Accounts are shared by all realms.
	ExtraRealms []string
	// ChallengeCode returns the challenge status for a method, 401 (with
	// WWW-Authenticate, answered in Authorization) or 407 (with
	// Proxy-Authenticate, answered in Proxy-Authorization); any other value
	// is treated as 407. Credentials in the other header are ignored.
	// Default: REGISTER -> 401, everything else -> 407.
	ChallengeCode func(method string) int
	// StaleOnce refuses the first correctly computed answer for each nonce
	// with a fresh challenge carrying stale=true. Nonces issued by such a
	// stale challenge are exempt, so the retry that uses them succeeds.
	StaleOnce bool
	// StaleAlways refuses every correctly computed answer with a fresh
	// challenge carrying stale=true, as a server whose nonces expire at
	// once: only the client's own bound on challenge rounds ends the loop.
	StaleAlways bool
	// NCAnyOrder accepts a nonce count in any order, refusing only one
	// accepted before for the same nonce (RFC 7616 §3.3 leaves the replay
	// check to the server; Asterisk's PJSIP keeps none). Without it a count
	// must be higher than every one accepted before, as Kamailio checks.
	NCAnyOrder bool
	// BeforeChallenge, when set, is called with the record of an
	// out-of-dialog request just before its challenge is sent, on the
	// goroutine handling it: a test blocks there to hold that request at
	// the fake until it says so. It must return once the test ends.
	BeforeChallenge func(Request)
	// Silent records requests but never answers anything (not even the
	// automatic 100 Trying to INVITE), for Timer B/F and 408 tests.
	Silent bool
	// FinalCode is the status sent once authentication succeeds (default
	// 200). It is also the INVITE's final status unless Call.FinalCode is
	// set.
	FinalCode int
	// Call configures the callee UA that answers authenticated INVITEs.
	// Its zero value rings once (180) and answers 200 with SDP at once.
	Call CallConfig
	// TLS, when set, also serves SIP over TLS with this configuration, on
	// a port of its own (TLSAddr), judged like UDP and TCP. The UA's own
	// requests into dialogs (HangUp...) do not go over TLS.
	TLS *tls.Config

	// Strict makes the fake judge requests as real servers do (strict.go):
	// it turns on FirstCredentialOnly, StrictQuoting, ListAllBindings and
	// CheckDialogTarget, and fills NonceLifetime (StrictNonceLifetime),
	// MinExpires and MaxExpires (StrictMinExpires, StrictMaxExpires) and
	// ChallengeCode (401 for every method, as Asterisk's PJSIP) when they
	// are unset.
	Strict bool
	// FirstCredentialOnly judges, for each realm, only the first
	// credential for that realm in the expected header, as Asterisk and
	// Kamailio do; without it any correct one of several is accepted.
	FirstCredentialOnly bool
	// StrictQuoting refuses with 400 a request whose credentials in the
	// expected header do not parse or break RFC 7616 §3.4's quoting
	// (username, realm, nonce, uri, response, cnonce, opaque quoted;
	// algorithm, qop, nc not), as Kamailio does.
	StrictQuoting bool
	// NonceLifetime is how long a nonce is accepted, measured on Clock:
	// a correct answer with an older one gets a fresh challenge with
	// stale=true (0: nonces never expire; see also ExpireNonces).
	NonceLifetime time.Duration
	// Clock is the fake's time, for NonceLifetime (default time.Now).
	Clock func() time.Time
	// MinExpires and MaxExpires bound the registrar (0: no bound): a
	// REGISTER asking for less than MinExpires (but not 0) gets 423
	// Interval Too Brief with Min-Expires (RFC 3261 §10.3 step 7); more
	// than MaxExpires is granted MaxExpires.
	MinExpires, MaxExpires int
	// ListAllBindings makes the 200 to a REGISTER list every current
	// binding of the AOR (the To user), as RFC 3261 §10.3 step 8 wants and
	// real registrars do, not only the request's Contacts.
	ListAllBindings bool
	// CheckDialogTarget makes the UA refuse (404) a request in one of its
	// dialogs whose Request-URI is not the Contact the UA gave the dialog
	// (RFC 3261 §12.2.1.1), that carries a Route not naming the fake, or
	// that did not come from the adjacent hop of the dialog's route set;
	// such an ACK is recorded as an error of the dialog, and so is a CANCEL
	// whose Request-URI is not its INVITE's (RFC 3261 §9.1).
	CheckDialogTarget bool
}

// Request is one request as received by the fake.
type Request struct {
	At         time.Time // when the fake received it
	Method     string
	CallID     string
	Transport  string // "UDP", "TCP" or "TLS"
	Source     string // remote "ip:port" the request came from
	RequestURI string // exactly as on the request line
	CSeq       uint32
	Branch     string // branch parameter of the top Via
	FromTag    string
	ToTag      string
	// Authorization holds the raw values of every Authorization and
	// Proxy-Authorization header, in the order received, whatever the case
	// of the header name.
	Authorization []string
	Body          []byte
	Raw           string // the whole message as received
	// Authenticated is true when the request carried valid answers for all
	// challenged realms (always false for ACK, CANCEL, silent fakes,
	// requests refused for their CSeq, strays, and requests within a dialog
	// unless Call.ChallengeInDialog).
	Authenticated bool
	// AuthUsername is the username of the credentials the fake evaluated
	// for the primary realm (or the first parsable credentials in the
	// expected header), whether they were accepted or not. Empty when the
	// request carried none.
	AuthUsername string
}

// Server is a running fake PBX. Its methods are safe for concurrent use.
type Server struct {
	t    testing.TB
	cfg  Config
	name string

	ua     *sipgo.UserAgent
	client *sipgo.Client // sends the UA's requests into its dialogs

	ctx    context.Context
	cancel context.CancelFunc

	pc    net.PacketConn
	ln    *tapListener
	tlsLn *tapListener // nil without Config.TLS
	port  int
	raws  rawStore

	serveWG   sync.WaitGroup
	handlerWG sync.WaitGroup

	algorithms []digestAlgorithm // parsed Config.Algorithms
	algNames   []string          // Config.Algorithms as spelled
	qops       []string          // offered qop values; empty for "none"
	realms     []string          // Realm followed by ExtraRealms

	mu         sync.Mutex
	closed     bool
	requests   []Request
	usernames  []string
	challenges int
	seqs       []uint64 // arrival number of each entry of requests
	nonces     map[string]*nonceState
	changed    chan struct{}            // closed and replaced whenever requests changes
	sent       map[string]*sip.Response // final response per request key, for retransmissions
	sentOrder  []string

	// The callee UA (ua.go).
	calls         []*callState          // every dialog, in creation order
	callIndex     map[string]*callState // by callKey(Call-ID, local tag)
	invites       map[string]*inviteTx  // INVITE transactions being handled, by top Via branch
	inviteCallIDs map[string]struct{}   // Call-IDs of every INVITE received
	strays        []Request
	straySeqs     []uint64
}

// nonceState is what the fake remembers about a nonce it issued.
type nonceState struct {
	realm     string
	algorithm digestAlgorithm
	opaque    string
	lastNC    uint32          // highest nc accepted so far
	ncs       map[uint32]bool // every nc accepted, with NCAnyOrder
	used      bool            // a correct answer has been seen
	stale     bool            // refused as stale: never accepted again
	exempt    bool            // issued by a stale challenge: StaleOnce does not apply
	issued    time.Time       // on the fake's clock, for NonceLifetime
}

// Start starts a fake PBX serving UDP and TCP on the same free port of
// cfg.Host. Everything it started is stopped by t.Cleanup.
func Start(t testing.TB, cfg Config) *Server {
	t.Helper()
	s := &Server{
		t: t, cfg: cfg, nonces: map[string]*nonceState{},
		changed: make(chan struct{}), sent: map[string]*sip.Response{},
		callIndex: map[string]*callState{}, invites: map[string]*inviteTx{},
		inviteCallIDs: map[string]struct{}{},
	}
	s.cfg.applyStrict()
	s.name = cfg.Name
	if s.name == "" {
		s.name = "fakepbx"
	}
	if s.cfg.Host == "" {
		s.cfg.Host = "127.0.0.1"
	}
	if ip := net.ParseIP(s.cfg.Host); ip == nil || !ip.IsLoopback() {
		t.Fatalf("fakepbx %s: Host %q is not a loopback address (127.0.0.0/8 or ::1)", s.name, s.cfg.Host)
	}
	if s.cfg.Realm == "" {
		s.cfg.Realm = "asterisk"
	}
	s.realms = append([]string{s.cfg.Realm}, s.cfg.ExtraRealms...)
	s.algNames = s.cfg.Algorithms
	if len(s.algNames) == 0 {
		s.algNames = []string{"MD5"}
	}
	for _, a := range s.algNames {
		alg, ok := lookupAlgorithm(a)
		if !ok || a == "" {
			t.Fatalf("fakepbx %s: unsupported algorithm %q", s.name, a)
		}
		s.algorithms = append(s.algorithms, alg)
	}
	switch q := strings.ReplaceAll(s.cfg.QOP, " ", ""); q {
	case "", "auth":
		s.qops = []string{"auth"}
	case "auth-int":
		s.qops = []string{"auth-int"}
	case "auth,auth-int", "auth-int,auth":
		s.qops = strings.Split(q, ",")
	case "none":
		s.qops = nil
	default:
		t.Fatalf("fakepbx %s: unsupported QOP %q", s.name, s.cfg.QOP)
	}
	if s.cfg.FinalCode == 0 {
		s.cfg.FinalCode = 200
	}
	if s.cfg.FinalCode < 200 || s.cfg.FinalCode > 699 {
		t.Fatalf("fakepbx %s: FinalCode %d is not a final status", s.name, s.cfg.FinalCode)
	}
	if err := s.cfg.validateStrict(); err != nil {
		t.Fatalf("fakepbx %s: %v", s.name, err)
	}
	if err := s.cfg.Call.validate(); err != nil {
		t.Fatalf("fakepbx %s: %v", s.name, err)
	}

	pc, ln, err := listenUDPAndTCP(s.cfg.Host)
	if err != nil {
		t.Fatalf("fakepbx %s: %v", s.name, err)
	}
	s.raws.onCancel = s.onTapCancel
	s.pc = &tapPacketConn{PacketConn: pc, raws: &s.raws}
	s.ln = &tapListener{Listener: ln, raws: &s.raws, transport: "TCP"}
	s.port = pc.LocalAddr().(*net.UDPAddr).Port
	if s.cfg.TLS != nil {
		tl, err := tls.Listen("tcp4", net.JoinHostPort(s.cfg.Host, "0"), s.cfg.TLS)
		if err != nil {
			pc.Close()
			ln.Close()
			t.Fatalf("fakepbx %s: listen tls: %v", s.name, err)
		}
		s.tlsLn = &tapListener{Listener: tl, raws: &s.raws, transport: "TLS"}
	}

	ua, err := sipgo.NewUA(sipgo.WithUserAgent(s.serverHeader()))
	if err != nil {
		pc.Close()
		ln.Close()
		s.closeTLSListener()
		t.Fatalf("fakepbx %s: new UA: %v", s.name, err)
	}
	srv, err := sipgo.NewServer(ua)
	if err == nil {
		s.client, err = sipgo.NewClient(ua, sipgo.WithClientHostname(s.cfg.Host), sipgo.WithClientPort(s.port))
	}
	if err != nil {
		ua.Close()
		pc.Close()
		ln.Close()
		s.closeTLSListener()
		t.Fatalf("fakepbx %s: new server: %v", s.name, err)
	}
	s.ua = ua
	s.ctx, s.cancel = context.WithCancel(context.Background())

	for _, m := range []sip.RequestMethod{
		sip.INVITE, sip.ACK, sip.CANCEL, sip.BYE, sip.REGISTER, sip.OPTIONS,
		sip.SUBSCRIBE, sip.NOTIFY, sip.PUBLISH, sip.REFER, sip.INFO,
		sip.MESSAGE, sip.PRACK, sip.UPDATE,
	} {
		srv.OnRequest(m, s.handle)
	}
	srv.OnNoRoute(s.handle)

	s.serveWG.Add(2)
	go func() {
		defer s.serveWG.Done()
		_ = srv.ServeUDP(s.pc) // returns when pc is closed
	}()
	go func() {
		defer s.serveWG.Done()
		_ = srv.ServeTCP(s.ln) // returns when ln is closed
	}()
	if s.tlsLn != nil {
		s.serveWG.Add(1)
		go func() {
			defer s.serveWG.Done()
			_ = srv.ServeTLS(s.tlsLn) // returns when tlsLn is closed
		}()
	}
	t.Cleanup(s.close)
	return s
}

// listenUDPAndTCP binds UDP on host:0, then TCP on the same port, retrying
// with another port if TCP's is taken.
func listenUDPAndTCP(host string) (net.PacketConn, net.Listener, error) {
	udp, tcp := "udp4", "tcp4"
	if net.ParseIP(host).To4() == nil {
		udp, tcp = "udp6", "tcp6"
	}
	var lastErr error
	for range 50 {
		pc, err := net.ListenPacket(udp, net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp: %w", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen(tcp, net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no port free for both UDP and TCP: %w", lastErr)
}

// close stops the fake: it runs from t.Cleanup.
func (s *Server) close() {
	s.cancel() // releases handlers waiting for an ACK
	s.pc.Close()
	s.ln.Close()
	s.closeTLSListener()
	s.serveWG.Wait() // no more reads from the sockets

	s.mu.Lock()
	s.closed = true // handlers that start from now on do nothing
	s.mu.Unlock()
	s.handlerWG.Wait()

	// Closing accepted TCP connections before the UA lets sipgo's readers
	// release them normally (ua.Close first makes its refcounts go negative
	// and log warnings).
	s.ln.closeConns()
	if s.tlsLn != nil {
		s.tlsLn.closeConns()
	}
	s.ua.Close()
}

func (s *Server) closeTLSListener() {
	if s.tlsLn != nil {
		s.tlsLn.Close()
	}
}

// TLSAddr returns the "host:port" the fake serves TLS on ("" without
// Config.TLS).
func (s *Server) TLSAddr() string {
	if s.tlsLn == nil {
		return ""
	}
	return s.tlsLn.Addr().String()
}

// Addr returns the "host:port" the fake serves UDP and TCP on.
func (s *Server) Addr() string {
	return net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.port))
}

// Port returns the port the fake serves UDP and TCP on.
func (s *Server) Port() int { return s.port }

// Requests returns a copy of every request received, in order, ACKs
// included. Retransmissions absorbed by a transaction (or answered again
// from the fake's own response cache) are not recorded, except on a Silent
// fake, which records every copy it receives. Requests are recorded before
// they are answered; an ACK is recorded whenever it arrives, so wait for it
// with WaitFor.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneRequests(s.requests)
}

// AuthUsernames returns the username of every parsable Authorization and
// Proxy-Authorization header of every recorded request (ACKs included),
// accepted or not, in order.
func (s *Server) AuthUsernames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.usernames)
}

// ExpireNonces marks every nonce issued so far stale: a later answer with
// one of them, however correct, gets a fresh challenge with stale=true (as
// a PBX does when a nonce outlived its lifetime).
func (s *Server) ExpireNonces() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.nonces {
		n.stale = true
	}
}

// SetAccount sets user's password (adding the account if new): answers
// judged from now on are verified with it, so that a test can make the
// fake accept exactly one password at a time.
func (s *Server) SetAccount(user, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	accounts := make(map[string]string, len(s.cfg.Accounts)+1)
	for k, v := range s.cfg.Accounts {
		accounts[k] = v
	}
	accounts[user] = password
	s.cfg.Accounts = accounts
}

// ForgetNonces forgets every nonce issued so far: a later answer with one of
// them gets a fresh challenge without stale=true (as after a PBX restart).
func (s *Server) ForgetNonces() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.nonces)
}

// Challenges returns how many 401/407 responses the fake has sent.
func (s *Server) Challenges() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.challenges
}

// WaitFor waits until cond, called with a copy of Requests() after every
// change, returns true, and returns that copy. It fails the test after
// timeout.
func (s *Server) WaitFor(t testing.TB, timeout time.Duration, cond func([]Request) bool) []Request {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		reqs := cloneRequests(s.requests)
		changed := s.changed
		s.mu.Unlock()
		if cond(reqs) {
			return reqs
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("fakepbx %s: condition not met within %v; %d requests received", s.name, timeout, len(reqs))
			return reqs
		}
	}
}

func cloneRequests(in []Request) []Request {
	out := make([]Request, len(in))
	for i, r := range in {
		r.Authorization = slices.Clone(r.Authorization)
		r.Body = slices.Clone(r.Body)
		out[i] = r
	}
	return out
}

func (s *Server) serverHeader() string { return "FakePBX " + s.name }

// handle is the sipgo handler for every method.
func (s *Server) handle(req *sip.Request, tx sip.ServerTransaction) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.handlerWG.Add(1)
	s.mu.Unlock()
	defer s.handlerWG.Done()

	in := s.newIncoming(req, nil)

	if s.cfg.Silent {
		// Dropping the transaction at once stops sipgo's 100 Trying timer
		// (200ms) for INVITE. UDP retransmissions therefore reach this
		// handler again and are recorded too.
		tx.Terminate()
		s.record(in)
		return
	}

	if req.IsAck() {
		// An ACK to a 2xx (new branch), or one arriving after the INVITE
		// transaction ended (TCP): checked against the UA's dialogs and
		// recorded, never answered.
		s.handleAck(in)
		return
	}
	if res := s.answered(in.key); res != nil {
		// A retransmission that sipgo's transaction layer did not absorb
		// (its transaction is gone): answer it again, as the transaction
		// would have, without recording or re-checking it.
		s.respond(req, tx, in.key, res)
		return
	}
	if req.IsCancel() {
		// A CANCEL matching a pending INVITE is answered by sipgo itself;
		// only unmatched ones get here. CANCEL is never challenged.
		s.record(in)
		s.respond(req, tx, in.key, s.newResponse(req, 481, ""))
		return
	}
	if in.rec.ToTag != "" {
		if c := s.findCall(in.rec.CallID, in.rec.ToTag, in.rec.FromTag); c != nil {
			s.handleInDialog(req, tx, in, c)
			return
		}
		if s.strayRequest(in) {
			s.respond(req, tx, in.key, s.newResponse(req, 481, ""))
			return
		}
	}

	var it *inviteTx
	if req.IsInvite() {
		// From now on CANCELs of this INVITE are recorded (and, once the
		// UA rings, acted upon) by onTapCancel.
		it = s.registerInvite(req, tx, in)
		defer s.unregisterInvite(it)
	}
	var res *sip.Response
	if !in.cseqOK {
		s.t.Logf("fakepbx %s: %s CSeq %d for Call-ID %s is not above an earlier one: 500", s.name, req.Method, in.rec.CSeq, in.rec.CallID)
		res = s.newResponse(req, 500, "CSeq out of order")
	} else if res = s.authenticate(req, in); res == nil {
		if req.IsInvite() {
			s.record(in)
			s.runInvite(req, tx, in, it)
			return
		}
		res = s.finalResponse(req)
	} else if s.cfg.BeforeChallenge != nil && (res.StatusCode == 401 || res.StatusCode == 407) {
		s.cfg.BeforeChallenge(in.rec)
	}
	s.record(in)
	if s.respond(req, tx, in.key, res) == nil {
		s.awaitAck(req, tx)
	}
}

// incoming is a received request being handled.
type incoming struct {
	req    *sip.Request
	rec    Request
	key    string       // identifies its transaction, and retransmissions of it
	seq    uint64       // arrival order
	cseqOK bool         // CSeq above every earlier one of the Call-ID (or dialog), by arrival
	creds  []credential // every parsable Authorization and Proxy-Authorization
	// malformed describes every unparsable credential in the header that
	// answers the method's challenge.
	malformed []string
	// auth holds every Authorization and Proxy-Authorization in a
	// comparable form (header name and parameters), see normCredential.
	auth []string
}

// credential is one parsed Authorization or Proxy-Authorization header.
type credential struct {
	header string // lowercased header name
	params map[string]string
	quoted map[string]bool // the parameters whose value was a quoted-string
}

// newIncoming builds the record for req, with its raw bytes (taken from the
// tap unless given), and parses its credentials.
func (s *Server) newIncoming(req *sip.Request, raw *rawRequest) *incoming {
	r := Request{
		At:         time.Now(),
		Method:     req.Method.String(),
		Transport:  strings.ToUpper(req.Transport()),
		Source:     req.Source(),
		RequestURI: req.Recipient.String(),
		Body:       slices.Clone(req.Body()),
		Raw:        req.String(),
	}
	if h := req.CallID(); h != nil {
		r.CallID = h.Value()
	}
	r.Branch = branchOf(req)
	if h := req.From(); h != nil {
		r.FromTag, _ = h.Params.Get("tag")
	}
	if h := req.To(); h != nil {
		r.ToTag, _ = h.Params.Get("tag")
	}
	var cseqMethod string
	if h := req.CSeq(); h != nil {
		r.CSeq = h.SeqNo
		cseqMethod = h.MethodName.String()
	}
	key := rawKey(r.Transport, r.Source, r.Branch, uint64(r.CSeq), cseqMethod)
	if raw == nil {
		if rr, ok := s.raws.take(key); ok {
			raw = &rr
		}
	}
	in := &incoming{req: req, key: key}
	if raw != nil {
		r.Raw, r.RequestURI = raw.raw, raw.ruri
		in.seq, in.cseqOK = raw.seq, raw.cseqOK
	} else {
		// Without the wire bytes neither the CSeq order nor the digest
		// uri can be judged: that is the fake failing, never a pass.
		s.t.Errorf("fakepbx %s: %s (CSeq %d, Call-ID %s) from %s: the tap has no raw bytes for it; refused with 500",
			s.name, r.Method, r.CSeq, r.CallID, r.Source)
		in.seq, in.cseqOK = s.raws.nextSeq(), false
	}
	expected := s.credentialHeader(r.Method)
	for _, h := range req.Headers() {
		name := strings.ToLower(h.Name())
		if name != "authorization" && name != "proxy-authorization" {
			continue
		}
		r.Authorization = append(r.Authorization, h.Value())
		in.auth = append(in.auth, normCredential(name, h.Value()))
		p, quoted, err := parseDigestParamsQuoting(h.Value())
		if err != nil {
			s.t.Logf("fakepbx %s: %s: unparsable %s: %v", s.name, r.Method, h.Name(), err)
			if name == expected {
				in.malformed = append(in.malformed, fmt.Sprintf("%s: %v", h.Name(), err))
			}
			continue
		}
		in.creds = append(in.creds, credential{header: name, params: p, quoted: quoted})
		if name == expected && r.AuthUsername == "" {
			r.AuthUsername = p["username"]
		}
	}
	in.rec = r
	return in
}

// record appends in to Requests() and its usernames to AuthUsernames(),
// and to the Requests of each of calls.
func (s *Server) record(in *incoming, calls ...*callState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recordLocked(in, calls...)
}

// recordLocked is record with s.mu held.
func (s *Server) recordLocked(in *incoming, calls ...*callState) {
	insertBySeq(&s.requests, &s.seqs, in.rec, in.seq)
	for _, c := range calls {
		insertBySeq(&c.Requests, &c.seqs, in.rec, in.seq)
	}
	for _, c := range in.creds {
		if u, ok := c.params["username"]; ok {
			s.usernames = append(s.usernames, u)
		}
	}
	s.bumpLocked()
}

// insertBySeq inserts r into reqs, keeping arrival order (handlers run
// concurrently); seqs holds the arrival number of each entry.
func insertBySeq(reqs *[]Request, seqs *[]uint64, r Request, seq uint64) {
	i := len(*seqs)
	for i > 0 && (*seqs)[i-1] > seq {
		i--
	}
	*reqs = slices.Insert(*reqs, i, r)
	*seqs = slices.Insert(*seqs, i, seq)
}

// bumpLocked wakes WaitFor and WaitCall. s.mu must be held.
func (s *Server) bumpLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// branchOf returns the branch of req's top Via (parameter name matched
// case-insensitively, as the tap does).
func branchOf(req *sip.Request) string {
	via := req.Via()
	if via == nil {
		return ""
	}
	for _, kv := range via.Params {
		if strings.EqualFold(kv.K, "branch") {
			return kv.V
		}
	}
	return ""
}

// finalResponse builds the answer to an authenticated request.
func (s *Server) finalResponse(req *sip.Request) *sip.Response {
	code := s.cfg.FinalCode
	res := s.newResponse(req, code, "")
	if code >= 300 {
		return res
	}
	switch req.Method {
	case sip.REGISTER:
		d := s.decideExpires(req)
		if d.tooBrief != 0 {
			return s.intervalTooBrief(req)
		}
		if s.cfg.ListAllBindings && req.To() != nil {
			// RFC 3261 §10.3 step 8: every binding of the AOR.
			for _, b := range s.applyRegister(s.Bindings(req.To().Address.User), req) {
				c := &sip.ContactHeader{Address: *b.Contact.Clone(), Params: sip.NewParams()}
				c.Params.Add("expires", strconv.Itoa(b.Expires))
				res.AppendHeader(c)
			}
			break
		}
		for i, h := range req.GetHeaders("Contact") {
			c, ok := h.(*sip.ContactHeader)
			if !ok || c.Address.Wildcard || d.granted[i] == 0 {
				continue // removed binding: not listed, as a registrar does
			}
			c = c.Clone()
			c.Params.Add("expires", strconv.Itoa(d.granted[i]))
			res.AppendHeader(c)
		}
	case sip.SUBSCRIBE:
		expires := "3600"
		if h := req.GetHeader("Expires"); h != nil {
			expires = strings.TrimSpace(h.Value())
		}
		res.AppendHeader(sip.NewHeader("Expires", expires))
		res.AppendHeader(s.contact(req.Transport()))
	case sip.INVITE:
		res.AppendHeader(s.contact(req.Transport()))
	}
	return res
}

// contact is the fake's own Contact, for transport, in dialog-creating
// responses and in its own INVITEs.
func (s *Server) contact(transport string) *sip.ContactHeader {
	c := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "fakepbx", Host: s.cfg.Host, Port: s.port}}
	c.Address.UriParams = sip.NewParams()
	c.Address.UriParams.Add("transport", strings.ToLower(transport))
	return c
}

// newResponse builds a response with the fake's Server header; an empty
// reason uses the standard phrase.
func (s *Server) newResponse(req *sip.Request, code int, reason string) *sip.Response {
	if reason == "" {
		reason = reasonPhrase(code)
	}
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	res.AppendHeader(sip.NewHeader("Server", s.serverHeader()))
	return res
}

// answered returns the final response already sent for the request key.
func (s *Server) answered(key string) *sip.Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent[key]
}

const sentMax = 1024

// remember keeps res as the final response to the request with key, for
// retransmissions.
func (s *Server) remember(key string, res *sip.Response) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sent[key]; !ok {
		if len(s.sentOrder) >= sentMax {
			delete(s.sent, s.sentOrder[0])
			s.sentOrder = s.sentOrder[1:]
		}
		s.sentOrder = append(s.sentOrder, key)
	}
	s.sent[key] = res
}

// errSentDirectly is respond's answer when the response went to the socket
// directly (oversized for sipgo over UDP): the transaction is gone.
var errSentDirectly = errors.New("sent on the socket directly; transaction terminated")

// respond sends the final response res to req through tx and remembers it
// for retransmissions. A nil error means tx is still alive (so an ACK may
// come through it); errSentDirectly follows the oversized UDP fallback;
// sip.ErrTransactionCanceled means sipgo answered a CANCEL with 487 first
// and res was not sent.
func (s *Server) respond(req *sip.Request, tx sip.ServerTransaction, key string, res *sip.Response) error {
	s.remember(key, res)
	err := tx.Respond(res)
	if errors.Is(err, sip.ErrUDPMTUCongestion) {
		// sipgo refuses UDP messages over sip.UDPMTUSize-200 bytes, even
		// responses (which cannot change transport). A PBX sends such a
		// datagram anyway (e.g. many challenge headers): do that on the
		// socket directly. sipgo already terminated the transaction.
		tx.Terminate()
		addr, rerr := net.ResolveUDPAddr("udp", res.Destination())
		if rerr == nil {
			_, rerr = s.pc.WriteTo([]byte(res.String()), addr)
		}
		if rerr != nil && s.ctx.Err() == nil {
			s.t.Logf("fakepbx %s: sending oversized %d to %s: %v", s.name, res.StatusCode, res.Destination(), rerr)
		}
		return errSentDirectly
	}
	if err != nil && s.ctx.Err() == nil && !errors.Is(err, sip.ErrTransactionCanceled) {
		s.t.Logf("fakepbx %s: sending %d for %s: %v", s.name, res.StatusCode, req.Method, err)
	}
	return err
}

// awaitAck keeps an INVITE transaction's handler alive until its ACK (for a
// non-2xx final, or a same-branch ACK for a 2xx) arrives through the
// transaction, and records it (also in calls). Without this, such ACKs are
// absorbed by sipgo's transaction and never seen (on UDP). A CANCEL
// arriving meanwhile is answered by sipgo itself (200) and recorded by
// onTapCancel.
func (s *Server) awaitAck(req *sip.Request, tx sip.ServerTransaction, calls ...*callState) {
	if !req.IsInvite() {
		return
	}
	var cseq uint32
	if h := req.CSeq(); h != nil {
		cseq = h.SeqNo
	}
	transport, source, branch := strings.ToUpper(req.Transport()), req.Source(), branchOf(req)
	for {
		select {
		case ack := <-tx.Acks():
			s.record(s.newIncoming(ack, nil), calls...)
			return
		case <-tx.Done():
			// On TCP, Timer I is 0: the transaction ends as soon as the
			// ACK confirms it, and sipgo may drop the ACK instead of
			// handing it over. The tap saw it, though.
			if in := s.incomingFromTap(rawKey(transport, source, branch, uint64(cseq), "ACK"), transport, source); in != nil {
				s.record(in, calls...)
			}
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// incomingFromTap builds the incoming request with key from the raw bytes
// the tap kept, if they are still there (nobody else handled it).
func (s *Server) incomingFromTap(key, transport, source string) *incoming {
	raw, ok := s.raws.take(key)
	if !ok {
		return nil
	}
	return s.incomingFromRaw(raw, transport, source)
}

// incomingFromRaw parses raw bytes the tap kept into an incoming request.
func (s *Server) incomingFromRaw(raw rawRequest, transport, source string) *incoming {
	msg, err := sip.ParseMessage([]byte(raw.raw))
	r, isReq := msg.(*sip.Request)
	if err != nil || !isReq {
		s.t.Logf("fakepbx %s: cannot parse %q: %v", s.name, raw.raw, err)
		return nil
	}
	r.SetTransport(transport)
	r.SetSource(source)
	return s.newIncoming(r, &raw)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(errors.Join(errors.New("fakepbx: crypto/rand"), err))
	}
	return hex.EncodeToString(b)
}

func reasonPhrase(code int) string {
	switch code {
	case 200:
		return "OK"
	case 180:
		return "Ringing"
	case 183:
		return "Session Progress"
	case 202:
		return "Accepted"
	case 400:
		return "Bad Request"
	case 401:
		return "Unauthorized"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 407:
		return "Proxy Authentication Required"
	case 408:
		return "Request Timeout"
	case 480:
		return "Temporarily Unavailable"
	case 481:
		return "Call/Transaction Does Not Exist"
	case 486:
		return "Busy Here"
	case 487:
		return "Request Terminated"
	case 488:
		return "Not Acceptable Here"
	case 491:
		return "Request Pending"
	case 500:
		return "Server Internal Error"
	case 503:
		return "Service Unavailable"
	case 603:
		return "Decline"
	}
	switch code / 100 {
	case 2:
		return "OK"
	case 3:
		return "Redirect"
	case 4:
		return "Client Error"
	case 5:
		return "Server Error"
	}
	return "Global Failure"
}
