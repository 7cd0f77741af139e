package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Responses are believed only from where their request went. Every request
// authproxy sends with a Via of its own (a forwarded request, a challenge
// answer, a health ping, a trunk registration) is pinned when its branch is
// made: the branch, the transport and the address the request goes to. A
// response carrying a pinned branch is dropped, and counted, unless it came
// over that transport from that address: over UDP the datagram's source,
// over TCP or TLS the remote address of the connection it was read on
// (sipgo sends a request on the connection its pool holds for the
// destination's address, so that address names the connection). Without
// this, anyone who learnt a branch (another upstream, a host on the path)
// could answer for the upstream: a 407 with a nonce of its choosing, or a
// 200 with headers of its own (RFC 3261 §26.1.4 leaves source checks to
// the transport: authproxy is the transport's user here).
//
// Pins end with their transaction; a 2xx to an INVITE may be retransmitted
// for 64*T1 after the INVITE client transaction ended (handleStrayResponse
// relays it), so an INVITE's pin lingers that long.

// pin is where one request of ours went.
type pin struct {
	transport string           // "UDP", "TCP" or "TLS", as sipgo spells it
	addr      netip.AddrPort   // the destination, for a destination that is an IP address
	addrs     []netip.AddrPort // every address a destination host name resolved to
	expires   time.Time        // when the pin is dropped even if its transaction never said it ended
}

// sentTo reports whether a response that came over transport from from
// comes from where the request went.
func (pn *pin) sentTo(transport string, from netip.AddrPort) bool {
	if pn.transport != transport {
		return false
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if pn.addr == from {
		return true
	}
	for _, a := range pn.addrs {
		if a == from {
			return true
		}
	}
	return false
}

// pinVerdict is what the pins say of a response's branch and source.
type pinVerdict int

const (
	pinUnknown  pinVerdict = iota // no pinned request has this branch (not ours, or ended)
	pinMatch                      // ours, and the response came from where the request went
	pinMismatch                   // ours, and the response came from elsewhere: drop it
)

// pinShards spreads the pins over locks: the UDP read loop checks every
// response while request goroutines add and remove pins.
const pinShards = 16

// pinMax bounds the pins held (about 150 bytes each). Pins normally live
// as long as their transaction (milliseconds to Timer C's minutes) and
// INVITEs' 64*T1 beyond: a quarter million is far more than a proxy on
// two cores has in flight. When full, a new request fails (503) rather
// than go out with responses nobody checks.
const pinMax = 1 << 18

// pinLinger is how long an INVITE's pin outlives its client transaction:
// the callee retransmits its 2xx until the ACK arrives, for up to 64*T1
// (RFC 3261 §13.3.1.4).
var pinLinger = 64 * sip.T1

// errTooManyPins is returned when no pin can be added.
var errTooManyPins = errors.New("too many requests in flight to check their responses")

// pinTable maps our branches to where their requests went.
type pinTable struct {
	seed   maphash.Seed
	shards [pinShards]pinShard
}

type pinShard struct {
	mu sync.Mutex
	m  map[string]pin
}

func newPinTable() *pinTable {
	t := &pinTable{seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].m = map[string]pin{}
	}
	return t
}

func (t *pinTable) shard(branch []byte) *pinShard {
	return &t.shards[maphash.Bytes(t.seed, branch)%pinShards]
}

// add pins branch to pn, replacing an earlier pin of the same branch.
func (t *pinTable) add(branch string, pn pin, now time.Time) error {
	s := t.shard([]byte(branch))
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= pinMax/pinShards {
		s.sweepLocked(now)
		if len(s.m) >= pinMax/pinShards {
			return errTooManyPins
		}
	}
	s.m[branch] = pn
	return nil
}

// release ends branch's pin: at once, or after pinLinger when linger is
// set (an INVITE).
func (t *pinTable) release(branch string, linger bool, now time.Time) {
	s := t.shard([]byte(branch))
	s.mu.Lock()
	defer s.mu.Unlock()
	if !linger {
		delete(s.m, branch)
		return
	}
	if pn, ok := s.m[branch]; ok {
		pn.expires = now.Add(pinLinger)
		s.m[branch] = pn
	}
}

// check says whether a response carrying branch, received over transport
// from from, comes from where the request with that branch went. This is
// the one place that decides it.
func (t *pinTable) check(branch []byte, transport string, from netip.AddrPort) pinVerdict {
	s := t.shard(branch)
	s.mu.Lock()
	pn, ok := s.m[string(branch)]
	s.mu.Unlock()
	switch {
	case !ok:
		return pinUnknown
	case pn.sentTo(transport, from):
		return pinMatch
	}
	return pinMismatch
}

// sweep drops the pins whose time is up.
func (t *pinTable) sweep(now time.Time) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		s.sweepLocked(now)
		s.mu.Unlock()
	}
}

func (s *pinShard) sweepLocked(now time.Time) {
	for b, pn := range s.m {
		if now.After(pn.expires) {
			delete(s.m, b)
		}
	}
}

// len returns how many pins are held (tests).
func (t *pinTable) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// pinLifetime bounds how long a request of method may wait for responses:
// Timer C and then Timer B for an INVITE, Timer F (or UpstreamTimeout,
// if longer) for the rest, with room for a late final response.
func (p *Proxy) pinLifetime(method sip.RequestMethod) time.Duration {
	const slack = 10 * time.Second
	wait := max(p.cfg.UpstreamTimeout, 64*sip.T1)
	if method == sip.INVITE {
		wait += p.cfg.TimerC
	}
	return wait + slack
}

// pinRequest pins branch to where a request of method goes over transport
// to dest (host:port). A host name is resolved here (bounded by
// pinResolveTimeout) and every address it has is pinned: sipgo resolves it
// again when it sends, and may pick any of them.
func (p *Proxy) pinRequest(branch string, method sip.RequestMethod, transport, dest string) error {
	pn := pin{transport: transport}
	now := time.Now()
	pn.expires = now.Add(p.pinLifetime(method))
	host, portStr, err := net.SplitHostPort(dest)
	if err != nil {
		return fmt.Errorf("pin %s: %w", dest, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return fmt.Errorf("pin %s: port: %w", dest, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		pn.addr = netip.AddrPortFrom(ip.Unmap(), uint16(port))
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), pinResolveTimeout)
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		cancel()
		if err != nil {
			return fmt.Errorf("pin %s: %w", dest, err)
		}
		for _, ip := range ips {
			pn.addrs = append(pn.addrs, netip.AddrPortFrom(ip.Unmap(), uint16(port)))
		}
	}
	return p.pins.add(branch, pn, now)
}

// pinResolveTimeout bounds the lookup of an upstream named by host name.
const pinResolveTimeout = 5 * time.Second

// releaseWhenDone ends the pin of r's top Via branch (ours) when tx ends.
func (p *Proxy) releaseWhenDone(tx sip.ClientTransaction, r *sip.Request) {
	branch := topViaBranch(r)
	if branch == "" {
		return
	}
	invite := r.Method == sip.INVITE
	release := func(string, error) { p.pins.release(branch, invite, time.Now()) }
	if !tx.OnTerminate(release) {
		release("", nil)
	}
}

// topViaBranch returns the branch of m's top Via, "" if none.
func topViaBranch(m sip.Message) string {
	v := m.Via()
	if v == nil {
		return ""
	}
	b, _ := v.Params.Get("branch")
	return b
}

// request starts a client transaction for r with our Via on top (§16.6
// step 8), its branch pinned until the transaction ends.
func (p *Proxy) request(ctx context.Context, r *sip.Request, transport string) (sip.ClientTransaction, error) {
	tx, err := p.client.TransactionRequest(ctx, r, p.addVia(transport))
	if err != nil {
		if v := r.Via(); v != nil && p.isOwnVia(v) {
			p.pins.release(topViaBranch(r), false, time.Now())
		}
		return nil, err
	}
	p.releaseWhenDone(tx, r)
	return tx, nil
}

// branchCookie starts every RFC 3261 branch, ours included (§8.1.1.7).
var branchCookie = []byte(sip.RFC3261BranchMagicCookie)

// datagramFromWhereSent reports whether the response datagram data, read
// over UDP from from, may be handed on: every branch of ours in it
// (wherever it appears, so that no reading of the headers different from
// the parser's can hide one) must have gone to from. The UDP listener's
// socket (laneSocket) asks it of every datagram before anything parses it.
func (p *Proxy) datagramFromWhereSent(data []byte, from netip.AddrPort) bool {
	return p.fromWhereSent(data, "UDP", from)
}

// fromWhereSent reports whether the message data, read over transport
// from from (over TCP and TLS: the connection's remote address), may be
// handed on: every branch of ours in it must have gone there.
func (p *Proxy) fromWhereSent(data []byte, transport string, from netip.AddrPort) bool {
	return forEachBranch(data, func(branch []byte) bool {
		return p.pins.check(branch, transport, from) != pinMismatch
	})
}

// forEachBranch calls f with every RFC 3261 branch (the magic cookie and
// the token characters after it) in data, until f returns false, and
// reports whether none did.
func forEachBranch(data []byte, f func(branch []byte) bool) bool {
	for rest := data; ; {
		i := bytes.Index(rest, branchCookie)
		if i < 0 {
			return true
		}
		rest = rest[i:]
		n := len(branchCookie)
		for n < len(rest) && isBranchChar(rest[n]) {
			n++
		}
		if !f(rest[:n]) {
			return false
		}
		rest = rest[n:]
	}
}

// isBranchChar reports whether c may continue a branch (an RFC 3261
// token character).
func isBranchChar(c byte) bool {
	return isDigit(c) || isLetter(c) || bytes.IndexByte([]byte("-.!%*_+`'~"), c) >= 0
}

// misdirectedOnStream reports whether res, a response sipgo matched to one
// of authproxy's client transactions, came over TCP or TLS on another
// connection than its request went on, and counts it: it is then not
// relayed. Inbound connections were checked before sipgo read them
// (inspectStream); this catches the connections authproxy dialed, whose
// reads sipgo does itself. sipgo matches a response by branch and method
// alone, so it has already moved its transaction on: at worst the request
// times out, but nothing from elsewhere reaches the client.
func (p *Proxy) misdirectedOnStream(res *sip.Response) bool {
	if res.Transport() == "UDP" || p.responseVerdict(res) != pinMismatch {
		return false
	}
	from, _ := netip.ParseAddrPort(res.Source())
	p.discarded("response-source", "message dropped: carries the branch of a request authproxy sent elsewhere", from)
	return true
}

// responseVerdict is what the pins say of res, a parsed response: its top
// Via branch (the one sipgo matches transactions by), the transport it
// came over and its source (over TCP or TLS, the connection's remote
// address).
func (p *Proxy) responseVerdict(res *sip.Response) pinVerdict {
	from, _ := netip.ParseAddrPort(res.Source()) // zero if none: matches no pin
	return p.pins.check([]byte(topViaBranch(res)), res.Transport(), from)
}
