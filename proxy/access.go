package proxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/authproxy/authproxy/credentials"
)

// ClientGroup is a set of clients admitted to the proxy and what they may
// reach. A request is admitted by the first group whose Networks contain
// its source address; with Users set, the client must also authenticate
// with authproxy's own digest challenge (its own realm and passwords, never
// a trunk password). Nothing matches → the request is refused and causes
// no upstream traffic: authproxy is closed by default.
type ClientGroup struct {
	// Name identifies the group in logs.
	Name string
	// Networks are the source prefixes admitted. Empty admits every source
	// (only sensible together with Users).
	Networks []netip.Prefix
	// Upstreams names the upstreams this group may use (and so whose
	// credentials may be injected for it). "*" allows every upstream.
	Upstreams []string
	// Users, when not empty, makes authproxy challenge the group's clients
	// itself (407, realm Realm) and admit only valid answers. The
	// credentials are removed before the request is forwarded.
	Users map[string]credentials.Secret
	// Realm is the realm of the local challenge. Default "authproxy".
	Realm string
	// Trusted keeps the identity headers the client sends
	// (P-Asserted-Identity, P-Preferred-Identity, Remote-Party-ID); they
	// are removed for untrusted groups.
	Trusted bool
}

func (g *ClientGroup) allows(upstreamName string) bool {
	return slices.Contains(g.Upstreams, "*") || slices.Contains(g.Upstreams, upstreamName)
}

func (g *ClientGroup) admitsSource(addr netip.Addr) bool {
	if len(g.Networks) == 0 {
		return true
	}
	for _, n := range g.Networks {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

// groupFor returns the first group admitting a request from src, or nil.
func (rt *routing) groupFor(src netip.Addr) *ClientGroup {
	for i := range rt.clients {
		if rt.clients[i].admitsSource(src) {
			return &rt.clients[i]
		}
	}
	return nil
}

// sourceAddr parses a "host:port" source.
func sourceAddr(s string) netip.Addr {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// identityHeaders are the headers that assert who the caller is; an
// untrusted client must not be able to set them on a trunk that believes
// them (RFC 3325 §5, Remote-Party-ID drafts).
var identityHeaders = []string{"P-Asserted-Identity", "P-Preferred-Identity", "Remote-Party-ID"}

// localAuth verifies clients' answers to authproxy's own challenges. Its
// nonces are self-validating (a timestamp, random bytes and an HMAC over
// them and the source address, so they need no table and cannot be moved to another
// source), expire after localNonceTTL, and each nonce count is accepted
// once (replay protection, RFC 7616 §3.3).
type localAuth struct {
	key []byte

	mu   sync.Mutex
	seen map[string]uint32 // nonce -> highest nc accepted
}

const (
	localNonceTTL = 5 * time.Minute
	localSeenMax  = 100000 // bound on remembered nonces; older ones expire anyway
)

func newLocalAuth() *localAuth {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return &localAuth{key: k, seen: map[string]uint32{}}
}

// localNonceLen is a nonce's size before base64: an 8-byte timestamp, 8
// random bytes, and 16 bytes of HMAC over both and the source address.
// The random part makes two challenges to one source within a second
// differ: phones behind one NAT address, challenged together, would
// otherwise get the same nonce, and the second one's answer (nc=1 again)
// would be refused as a replay.
const localNonceLen = 32

func (a *localAuth) nonce(src netip.Addr, now time.Time) string {
	var raw [localNonceLen]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(now.Unix()))
	_, _ = rand.Read(raw[8:16])
	m := hmac.New(sha256.New, a.key)
	m.Write(raw[:16])
	m.Write(src.AsSlice())
	copy(raw[16:], m.Sum(nil)[:16])
	return base64.RawURLEncoding.EncodeToString(raw[:])
}

// nonceValid reports whether n was issued to src and is still fresh.
func (a *localAuth) nonceValid(n string, src netip.Addr, now time.Time) bool {
	raw, err := base64.RawURLEncoding.DecodeString(n)
	if err != nil || len(raw) != localNonceLen {
		return false
	}
	m := hmac.New(sha256.New, a.key)
	m.Write(raw[:16])
	m.Write(src.AsSlice())
	if !hmac.Equal(raw[16:], m.Sum(nil)[:16]) {
		return false
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(raw[:8])), 0)
	return now.Sub(issued) <= localNonceTTL && !issued.After(now.Add(time.Minute))
}

// challenge returns a Proxy-Authenticate value for a new nonce.
func (a *localAuth) challenge(realm string, src netip.Addr, stale bool, now time.Time) string {
	c := digest.Challenge{Realm: realm, Nonce: a.nonce(src, now), Algorithm: "SHA-256", QOP: []string{"auth"}, Stale: stale}
	return c.String()
}

// authVerdict is the outcome of checking a client's local credentials.
type authVerdict int

const (
	authMissing authVerdict = iota // no answer for our realm: challenge
	authOK
	authStale // right password, expired nonce: challenge with stale=true
	authBad   // wrong answer: challenge again, and count a failure
)

// verify checks the Proxy-Authorization for realm in req against g's users.
func (a *localAuth) verify(req *sip.Request, g *ClientGroup, realm string, src netip.Addr, now time.Time) (authVerdict, string) {
	for _, h := range headersNamed(req, "Proxy-Authorization") {
		cr, err := parseCredentials(h.Value())
		if err != nil || cr.Realm != realm {
			continue
		}
		pw, ok := g.Users[cr.Username]
		if !ok {
			return authBad, cr.Username
		}
		if cr.URI != req.Recipient.String() && cr.URI != req.Recipient.Addr() {
			return authBad, cr.Username
		}
		alg := cr.Algorithm
		if alg == "" {
			alg = "MD5"
		}
		base, sess, ok := splitAlgorithm(alg)
		if !ok || sess || (cr.QOP != "auth" && cr.QOP != "") {
			return authBad, cr.Username
		}
		ch := &digest.Challenge{Realm: realm, Nonce: cr.Nonce, Algorithm: base}
		if cr.QOP != "" {
			ch.QOP = []string{cr.QOP}
		}
		want, err := digest.Digest(ch, digest.Options{
			Method: req.Method.String(), URI: cr.URI, Count: cr.Nc, Cnonce: cr.Cnonce,
			Username: cr.Username, Password: pw.Reveal(),
		})
		if err != nil || subtle.ConstantTimeCompare([]byte(want.Response), []byte(strings.ToLower(cr.Response))) != 1 {
			return authBad, cr.Username
		}
		if !a.nonceValid(cr.Nonce, src, now) {
			return authStale, cr.Username
		}
		if !a.acceptCount(cr.Nonce, uint32(cr.Nc), cr.QOP != "") {
			return authBad, cr.Username // a replay
		}
		return authOK, cr.Username
	}
	return authMissing, ""
}

// answeringUser returns the username of req's answer to authproxy's
// challenge for realm, "" when it has none.
func answeringUser(req *sip.Request, realm string) string {
	for _, h := range headersNamed(req, "Proxy-Authorization") {
		if cr, err := parseCredentials(h.Value()); err == nil && cr.Realm == realm {
			return cr.Username
		}
	}
	return ""
}

// acceptCount records nc for nonce and reports whether it was never seen
// (it must grow strictly; without qop a nonce is good once).
func (a *localAuth) acceptCount(nonce string, nc uint32, qop bool) bool {
	if !qop {
		nc = 1
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if last, ok := a.seen[nonce]; ok && nc <= last {
		return false
	}
	if len(a.seen) >= localSeenMax {
		clear(a.seen) // every nonce in it expires within localNonceTTL anyway
	}
	a.seen[nonce] = nc
	return true
}

// parseCredentials parses an Authorization/Proxy-Authorization value with
// the same tolerant auth-param grammar as challenges.
func parseCredentials(v string) (*digest.Credentials, error) {
	params, err := parseAuthParams(v)
	if err != nil {
		return nil, err
	}
	c := &digest.Credentials{
		Username: params["username"], Realm: params["realm"], Nonce: params["nonce"], URI: params["uri"],
		Response: params["response"], Algorithm: params["algorithm"], Cnonce: params["cnonce"],
		Opaque: params["opaque"], QOP: params["qop"],
	}
	if nc := params["nc"]; nc != "" {
		n, err := strconv.ParseUint(nc, 16, 32)
		if err != nil {
			return nil, fmt.Errorf("nc %q: %w", nc, err)
		}
		c.Nc = int(n)
	}
	if c.Username == "" || c.Nonce == "" || c.Response == "" {
		return nil, fmt.Errorf("credentials lack username, nonce or response")
	}
	return c, nil
}
