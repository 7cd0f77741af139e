package proxy

import (
	"fmt"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Preemptive says which requests to an upstream carry credentials before
// the upstream challenges them, computed from the last challenge it sent
// for the same realm and credential (RFC 7616 §3.4: a client may reuse a
// nonce with an incremented nc and a fresh cnonce; RFC 3261 §22.3 allows the
// same within a dialog). This saves the 401/407 round trip. When the
// upstream challenges anyway (stale or expired nonce, nonce-count policy)
// the normal exchange follows, transparently.
type Preemptive int

const (
	// PreemptiveOff, the zero value, never sends credentials unchallenged.
	PreemptiveOff Preemptive = iota
	// PreemptiveRegistrations sends them on REGISTER only.
	PreemptiveRegistrations
	// PreemptiveAll sends them on every request except ACK (which carries
	// its INVITE's answers anyway) and CANCEL (never challenged, §22.1).
	PreemptiveAll
)

// ParsePreemptive maps the configuration words "off", "registrations" and
// "all" to a Preemptive.
func ParsePreemptive(s string) (Preemptive, error) {
	switch s {
	case "off":
		return PreemptiveOff, nil
	case "registrations":
		return PreemptiveRegistrations, nil
	case "all":
		return PreemptiveAll, nil
	}
	return PreemptiveOff, fmt.Errorf("preemptive %q: want off, registrations or all", s)
}

func (m Preemptive) String() string {
	switch m {
	case PreemptiveRegistrations:
		return "registrations"
	case PreemptiveAll:
		return "all"
	}
	return "off"
}

func (m Preemptive) applies(method sip.RequestMethod) bool {
	switch m {
	case PreemptiveAll:
		return method != sip.ACK && method != sip.CANCEL
	case PreemptiveRegistrations:
		return method == sip.REGISTER
	}
	return false
}

const (
	// preemptiveTTL bounds how long a challenge is reused: below Kamailio's
	// default nonce lifetime (auth nonce_expire 300s), so that the last
	// reuses do not all meet a stale nonce, and below nonceTTL, so that the
	// nonce counter outlives the entry. Upstreams with shorter lifetimes
	// (Asterisk: 32s) answer stale=true and the normal exchange refreshes
	// the entry.
	preemptiveTTL = 4 * time.Minute
	// preemptiveMax bounds the entries: one per (upstream, realm,
	// credential username), so this holds 10,000 trunk accounts.
	preemptiveMax = 10000
	// preemptiveRealms bounds the realms remembered per (upstream, method):
	// an upstream uses one or two.
	preemptiveRealms = 4
)

// authCacheKey identifies one reusable challenge.
type authCacheKey struct {
	server   string // the upstream's address
	realmKey string // challenge.key(): "proxy:" or "www:" + realm
	username string // the credential's username
}

// cachedChallenge is a challenge authproxy answered, kept for reuse.
type cachedChallenge struct {
	ch     challenge // never modified after put
	stored time.Time
	lastNC int // the highest nc sent with this nonce
}

// realmRef names a protection domain an upstream challenged a method in.
type realmRef struct {
	proxy bool
	realm string
}

// key is challenge.key() of the realm's challenges.
func (r realmRef) key() string {
	if r.proxy {
		return "proxy:" + r.realm
	}
	return "www:" + r.realm
}

// authCache holds the challenges answered per (upstream, realm, credential
// username), and per (upstream, method) the realms challenged, so that a
// request of a method the upstream never challenged carries no answer it
// would relay onward. Safe for concurrent use.
type authCache struct {
	mu      sync.Mutex
	entries map[authCacheKey]*cachedChallenge
	// realmsMu guards realms, read on every request and written only when
	// a challenge is answered; its slices are never modified once stored
	// (replaced instead), so readers use them without copying.
	realmsMu sync.RWMutex
	realms   map[[2]string][]realmRef // {server, method} → most recent first
}

func newAuthCache() *authCache {
	return &authCache{entries: map[authCacheKey]*cachedChallenge{}, realms: map[[2]string][]realmRef{}}
}

// put remembers ch, answered with nc for a request of method by the
// credential username.
func (c *authCache) put(server, method string, ch challenge, username string, nc int, now time.Time) {
	cp := *ch.Challenge
	cp.Stale = false
	k := authCacheKey{server: server, realmKey: ch.key(), username: username}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[k]; !ok && len(c.entries) >= preemptiveMax {
		c.sweepLocked(now)
		for old := range c.entries {
			if len(c.entries) < preemptiveMax {
				break
			}
			delete(c.entries, old) // arbitrary victim: it costs one challenge round
		}
	}
	c.entries[k] = &cachedChallenge{ch: challenge{Challenge: &cp, proxy: ch.proxy}, stored: now, lastNC: nc}
	if !isForwardedMethod(method) {
		return // bounds the index by the methods registered
	}
	rk := [2]string{server, method}
	ref := realmRef{proxy: ch.proxy, realm: ch.Realm}
	c.realmsMu.Lock()
	defer c.realmsMu.Unlock()
	refs := c.realms[rk]
	if len(refs) > 0 && refs[0] == ref {
		return // the common case: nothing to reorder
	}
	next := make([]realmRef, 0, preemptiveRealms)
	next = append(next, ref)
	for _, r := range refs {
		if r != ref && len(next) < preemptiveRealms {
			next = append(next, r)
		}
	}
	c.realms[rk] = next
}

// realmsFor returns the realms server challenged method in, most recent
// first. The slice is shared: callers must not modify it.
func (c *authCache) realmsFor(server, method string) []realmRef {
	c.realmsMu.RLock()
	defer c.realmsMu.RUnlock()
	return c.realms[[2]string{server, method}]
}

// take returns the cached challenge for k with the nc to send, or false
// when there is none, it expired, or its count could repeat.
func (c *authCache) take(k authCacheKey, nonces *nonceCounter, now time.Time) (challenge, int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok {
		return challenge{}, 0, false
	}
	if now.Sub(e.stored) > preemptiveTTL {
		delete(c.entries, k)
		return challenge{}, 0, false
	}
	// The counter is shared with the normal exchange, so answers to a fresh
	// challenge with this nonce and preemptive ones never share an nc. It
	// may have dropped the nonce when full (and restart at 1): never send a
	// count twice (RFC 7616 §3.4), fall back to a challenge instead.
	nc := nonces.next(k.server, e.ch.Realm, e.ch.Nonce, now)
	if nc <= e.lastNC {
		delete(c.entries, k)
		return challenge{}, 0, false
	}
	e.lastNC = nc
	return e.ch, nc, true
}

// drop forgets k if it still holds nonce (a newer answer may have replaced
// it meanwhile).
func (c *authCache) drop(k authCacheKey, nonce string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[k]; ok && e.ch.Nonce == nonce {
		delete(c.entries, k)
	}
}

func (c *authCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

func (c *authCache) sweep(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked(now)
}

func (c *authCache) sweepLocked(now time.Time) {
	for k, e := range c.entries {
		if now.Sub(e.stored) > preemptiveTTL {
			delete(c.entries, k)
		}
	}
}

func isForwardedMethod(m string) bool {
	for _, fm := range forwardedMethods {
		if string(fm) == m {
			return true
		}
	}
	return false
}

// preemptState is what one forwarding sent preemptively.
type preemptState struct {
	added      bool // addPreemptive ran
	sent       []preemptSent
	challenged bool           // the upstream challenged one of them
	answered   []preemptSaved // challenges answered, kept once accepted
	done       bool           // a final response was relayed
}

// preemptSaved is a challenge answered, waiting for the upstream's verdict.
type preemptSaved struct {
	ch       challenge
	username string
	method   string
	nc       int
}

type preemptSent struct {
	key   authCacheKey
	nonce string
}

// addPreemptive adds to f.auth, once, before the request is first sent, the
// answers to the challenges the upstream last sent for the request's
// method, computed with the next nc of each nonce. The Request-URI and
// body it answers for are the client's: authproxy forwards them unchanged
// toward an upstream.
func (f *forwarding) addPreemptive() {
	req := f.req
	if f.pre.added || f.toClient || f.up == nil || !f.up.Preemptive.applies(req.Method) {
		return
	}
	f.pre.added = true
	server := f.nonceServer()
	refs := f.p.preempt.realmsFor(server, req.Method.String())
	if len(refs) == 0 {
		return
	}
	now := time.Now()
	for _, r := range refs {
		cred := f.rt.creds.Lookup(f.up.Address, r.realm, f.user)
		if cred.Username == "" && !cred.Anonymous {
			continue
		}
		if f.hop.transport != "TLS" && f.rt.scopedToTLS(cred.Server) {
			continue
		}
		k := authCacheKey{server: server, realmKey: r.key(), username: cred.Username}
		ch, nc, ok := f.p.preempt.take(k, f.p.nonces, now)
		if !ok || !canAnswer(ch, cred) {
			continue
		}
		val, err := computeAuthorization(ch, cred, req.Method.String(), req.Recipient.String(), req.Body(), nc, newCnonce())
		if err != nil {
			f.log.Debug("no preemptive answer", "realm", r.realm, "error", err)
			continue
		}
		f.auth = append(f.auth, authAnswer{key: k.realmKey, header: ch.authHeaderName(), value: val})
		f.pre.sent = append(f.pre.sent, preemptSent{key: k, nonce: ch.Nonce})
		f.credIDs = append(f.credIDs, cred.String())
	}
}

// nonceServer is the server a nonce belongs to, the key of the nonce
// counts and of the cached challenges: the upstream addressed by IP, or,
// for one addressed by name, the upstream and the target the request is
// sent to. Each target of a name issues its own nonces (RFC 7616 §3.3),
// and an answer computed for one target's nonce would be refused by
// another, which counts it as a failed authentication.
func (f *forwarding) nonceServer() string {
	if f.up.literal != nil {
		return f.up.Address
	}
	return f.up.Address + " " + f.hop.addr
}

// preemptiveChallenged is told of a 401/407: a preemptive answer for a
// challenged realm failed (stale, expired, or refused), so its nonce is
// dropped. The challenge itself is answered the normal way: the preemptive
// answer did not answer a challenge to this request, so it does not count
// as credentials just rejected.
func (f *forwarding) preemptiveChallenged(chs []challenge) {
	if len(f.pre.sent) == 0 {
		return
	}
	for _, c := range chs {
		for i, s := range f.pre.sent {
			if s.key.realmKey != c.key() || s.nonce == "" {
				continue
			}
			f.p.preempt.drop(s.key, s.nonce)
			f.pre.sent[i].nonce = "" // dropped once
			if !f.pre.challenged {
				f.pre.challenged = true
				f.p.cfg.Observer.PreemptiveAuth(f.up.Name, false)
			}
		}
	}
}

// rememberChallenge notes a challenge just answered, to be kept for reuse
// once the upstream accepted the answer (preemptiveDone), when the
// upstream's mode allows reuse at all. Kept earlier, concurrent requests
// could reuse the nonce with higher counts that reach the upstream before
// this answer's nc=1, which an upstream checking counts strictly would then
// refuse, and this request would relay a 407 for credentials that are
// right. A challenge without qop is not kept: without nc and cnonce a reuse
// would be a replay (RFC 7616 §5.5).
func (f *forwarding) rememberChallenge(ch challenge, username, method string, nc int, _ time.Time) {
	if f.toClient || f.up == nil || f.up.Preemptive == PreemptiveOff {
		return
	}
	if q, ok := chooseQOP(ch.Challenge); !ok || q == "" {
		return
	}
	// A later round for the same realm replaces the earlier one.
	for i, a := range f.pre.answered {
		if a.ch.key() == ch.key() {
			f.pre.answered[i] = preemptSaved{ch, username, method, nc}
			return
		}
	}
	f.pre.answered = append(f.pre.answered, preemptSaved{ch, username, method, nc})
}

// preemptiveDone runs before a final response from the upstream is relayed
// (before, so that the client's next request finds the challenge kept): it
// keeps the challenges whose answers the upstream accepted, and reports
// whether preemptive answers were accepted.
func (f *forwarding) preemptiveDone(status int) {
	if f.up == nil || f.toClient || status < 200 || f.pre.done {
		return
	}
	f.pre.done = true
	if !acceptedStatus(status) {
		return
	}
	if len(f.pre.answered) > 0 {
		now := time.Now()
		for _, a := range f.pre.answered {
			f.p.preempt.put(f.nonceServer(), a.method, a.ch, a.username, a.nc, now)
		}
	}
	if len(f.pre.sent) > 0 && !f.pre.challenged {
		f.p.cfg.Observer.PreemptiveAuth(f.up.Name, true)
	}
}

// acceptedStatus reports whether a final status relayed from the upstream
// means it accepted the credentials: anything but a challenge, a 403 (how
// Kamailio and Asterisk may refuse an answer), and the 408/503 authproxy
// itself answers when the upstream did not.
func acceptedStatus(code int) bool {
	switch code {
	case 0, sip.StatusUnauthorized, sip.StatusForbidden, sip.StatusProxyAuthRequired, sip.StatusRequestTimeout, sip.StatusServiceUnavailable:
		return false
	}
	return code >= 200
}
