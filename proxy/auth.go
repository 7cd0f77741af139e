package proxy

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/authproxy/authproxy/credentials"
)

// challenge is one parsed WWW-Authenticate or Proxy-Authenticate value.
type challenge struct {
	*digest.Challenge
	// proxy is true for Proxy-Authenticate, answered with
	// Proxy-Authorization; false for WWW-Authenticate, answered with
	// Authorization.
	proxy bool
}

// authHeaderName is the request header that answers c.
func (c challenge) authHeaderName() string {
	if c.proxy {
		return "Proxy-Authorization"
	}
	return "Authorization"
}

// key identifies the protection domain the challenge is for: RFC 3261 §22.3
// differentiates several answers in one request by realm, and a proxy realm
// and a server realm of the same name are still two answers.
func (c challenge) key() string {
	if c.proxy {
		return "proxy:" + c.Realm
	}
	return "www:" + c.Realm
}

// collectChallenges returns the digest challenges of a 401/407 in header
// order, WWW-Authenticate first. A forking proxy may aggregate both kinds in
// one response (RFC 3261 §16.7), so both are read whatever the status code.
// Values that do not parse are returned as errors for the log and otherwise
// ignored (RFC 8760 §2.4: ignore what you do not understand).
func collectChallenges(res *sip.Response) ([]challenge, []error) {
	var out []challenge
	var errs []error
	for _, hdr := range []struct {
		name  string
		proxy bool
	}{{"WWW-Authenticate", false}, {"Proxy-Authenticate", true}} {
		for _, h := range headersNamed(res, hdr.name) {
			ch, err := parseChallenge(h.Value())
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", hdr.name, err))
				continue
			}
			out = append(out, challenge{Challenge: ch, proxy: hdr.proxy})
		}
	}
	return out, errs
}

// splitAlgorithm maps a challenge algorithm to the hash it uses and whether
// it is a -sess variant (RFC 7616 §3.3). ok is false for algorithms authproxy
// does not answer.
func splitAlgorithm(alg string) (base string, sess bool, ok bool) {
	alg = strings.ToUpper(alg)
	if strings.HasSuffix(alg, "-SESS") {
		sess = true
		alg = strings.TrimSuffix(alg, "-SESS")
	}
	switch alg {
	case "", credentials.MD5:
		return credentials.MD5, sess, true
	case credentials.SHA256, credentials.SHA512256:
		return alg, sess, true
	}
	return "", false, false
}

func newHash(base string) hash.Hash {
	switch base {
	case credentials.SHA256:
		return sha256.New()
	case credentials.SHA512256:
		return sha512.New512_256()
	}
	return md5.New()
}

// chooseQOP returns the qop authproxy answers with: auth when offered (it
// does not depend on a body a later hop may change), else auth-int, else ""
// when the challenge offers no qop (RFC 2069 compatibility).
func chooseQOP(c *digest.Challenge) (string, bool) {
	if len(c.QOP) == 0 {
		return "", true
	}
	for _, q := range c.QOP {
		if q == "auth" {
			return q, true
		}
	}
	for _, q := range c.QOP {
		if q == "auth-int" {
			return q, true
		}
	}
	return "", false
}

// canAnswer reports whether c can be answered with cred: the algorithm and
// qop are supported and cred holds a usable secret for that algorithm.
func canAnswer(c challenge, cred credentials.Credential) bool {
	base, sess, ok := splitAlgorithm(c.Algorithm)
	if !ok {
		return false
	}
	qop, ok := chooseQOP(c.Challenge)
	if !ok || (sess && qop == "") {
		// -sess needs a cnonce, which only a qop exchange carries.
		return false
	}
	if _, ok := cred.HA1For(base); ok {
		return true
	}
	return !cred.Password.IsZero() || cred.Anonymous
}

var errNoSecret = errors.New("credential has no secret for this algorithm")

// computeAuthorization answers c for one request. uri must be the
// Request-URI exactly as sent upstream, body the exact body sent (hashed for
// auth-int), nc the nonce count for this nonce (1 for a fresh nonce), cnonce
// a fresh newCnonce().
//
// qop=auth and RFC 2069 answers (every answer on the hot path) are computed
// here (digestAuthorization), in a few allocations; icholy/digest, which
// takes about 40 for one answer, computes the auth-int ones and stays the
// reference the fast path is tested against (FuzzFastDigestMatchesLibrary).
func computeAuthorization(c challenge, cred credentials.Credential, method, uri string, body []byte, nc int, cnonce string) (string, error) {
	base, sess, ok := splitAlgorithm(c.Algorithm)
	if !ok {
		return "", fmt.Errorf("unsupported algorithm %q", c.Algorithm)
	}
	qop, ok := chooseQOP(c.Challenge)
	if !ok {
		return "", fmt.Errorf("unsupported qop %q", strings.Join(c.QOP, ","))
	}
	if qop == "auth-int" {
		return libAuthorization(c, cred, method, uri, body, nc, cnonce)
	}
	ha1 := ""
	if s, ok := cred.HA1For(base); ok {
		ha1 = s.Reveal()
	} else if cred.Password.IsZero() && !cred.Anonymous {
		return "", errNoSecret
	}
	return digestAuthorization(c, base, sess, qop, ha1, cred.Username, cred.Password.Reveal(), method, uri, nc, cnonce), nil
}

// digestAuthorization computes the Authorization value for qop "auth" or
// "" (RFC 7616 §3.4.1, RFC 2069): ha1 when the credential holds one for
// base, otherwise H(username:realm:password); -sess hashes it again with
// the nonce and cnonce (§3.4.2). Hash inputs are built in stack buffers.
func digestAuthorization(c challenge, base string, sess bool, qop, ha1, username, password, method, uri string, nc int, cnonce string) string {
	var in [512]byte
	var h1buf, a1buf, h2buf, respBuf [128]byte
	var h1 []byte
	if ha1 != "" {
		h1 = appendLowerASCII(h1buf[:0], ha1)
	} else {
		b := append(in[:0], username...)
		b = append(b, ':')
		b = append(b, c.Realm...)
		b = append(b, ':')
		b = append(b, password...)
		h1 = appendDigestHex(h1buf[:0], base, b)
	}
	if sess {
		b := append(in[:0], h1...)
		b = append(b, ':')
		b = append(b, c.Nonce...)
		b = append(b, ':')
		b = append(b, cnonce...)
		h1 = appendDigestHex(a1buf[:0], base, b)
	}
	b := append(in[:0], method...)
	b = append(b, ':')
	b = append(b, uri...)
	h2 := appendDigestHex(h2buf[:0], base, b)
	nc8 := ncHex(nc)
	b = append(in[:0], h1...)
	b = append(b, ':')
	b = append(b, c.Nonce...)
	b = append(b, ':')
	if qop != "" {
		b = append(b, nc8[:]...)
		b = append(b, ':')
		b = append(b, cnonce...)
		b = append(b, ':')
		b = append(b, qop...)
		b = append(b, ':')
	}
	b = append(b, h2...)
	resp := appendDigestHex(respBuf[:0], base, b)
	out := digest.Credentials{
		Username:  username,
		Realm:     c.Realm,
		Nonce:     c.Nonce,
		URI:       uri,
		Response:  string(resp),
		Algorithm: c.Algorithm,
		Opaque:    c.Opaque,
		QOP:       qop,
	}
	if qop != "" {
		out.Cnonce, out.Nc = cnonce, nc
	}
	return formatCredentials(&out)
}

// ncHex is nc as the 8 lowercase hex digits of the nc parameter (RFC 7616
// §3.4).
func ncHex(nc int) [8]byte {
	var out [8]byte
	const hexDigits = "0123456789abcdef"
	for i, n := 7, uint32(nc); i >= 0; i, n = i-1, n>>4 {
		out[i] = hexDigits[n&0xf]
	}
	return out
}

// appendDigestHex appends the lowercase hex digest of in under base.
func appendDigestHex(dst []byte, base string, in []byte) []byte {
	switch base {
	case credentials.SHA256:
		sum := sha256.Sum256(in)
		return hex.AppendEncode(dst, sum[:])
	case credentials.SHA512256:
		sum := sha512.Sum512_256(in)
		return hex.AppendEncode(dst, sum[:])
	}
	sum := md5.Sum(in)
	return hex.AppendEncode(dst, sum[:])
}

func appendLowerASCII(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// libAuthorization is computeAuthorization by icholy/digest: it computes
// MD5, SHA-256 and SHA-512-256 and accepts a precomputed A1; it lacks the
// -sess forms, which are computed here by passing A1 = H(HA1:nonce:cnonce)
// (RFC 7616 §3.4.2).
func libAuthorization(c challenge, cred credentials.Credential, method, uri string, body []byte, nc int, cnonce string) (string, error) {
	base, sess, ok := splitAlgorithm(c.Algorithm)
	if !ok {
		return "", fmt.Errorf("unsupported algorithm %q", c.Algorithm)
	}
	if _, ok := chooseQOP(c.Challenge); !ok {
		return "", fmt.Errorf("unsupported qop %q", strings.Join(c.QOP, ","))
	}
	ha1 := ""
	if s, ok := cred.HA1For(base); ok {
		ha1 = strings.ToLower(s.Reveal())
	} else if !cred.Password.IsZero() || cred.Anonymous {
		if sess {
			ha1 = hashJoin(newHash(base), cred.Username, c.Realm, cred.Password.Reveal())
		}
	} else {
		return "", errNoSecret
	}
	a1 := ha1
	if sess {
		a1 = hashJoin(newHash(base), ha1, c.Nonce, cnonce)
	}
	// The library must see only the qop we chose and the base algorithm.
	lib := *c.Challenge
	qop, _ := chooseQOP(c.Challenge)
	lib.QOP = nil
	if qop != "" {
		lib.QOP = []string{qop}
	}
	lib.Algorithm = base
	if c.Algorithm == "" {
		lib.Algorithm = ""
	}
	opts := digest.Options{
		Method:   method,
		URI:      uri,
		Count:    nc,
		Username: cred.Username,
		Password: cred.Password.Reveal(),
		A1:       a1,
		Cnonce:   cnonce,
		GetBody: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(body)), nil
		},
	}
	out, err := digest.Digest(&lib, opts)
	if err != nil {
		return "", err
	}
	out.Algorithm = c.Algorithm
	out.Userhash = false
	return formatCredentials(out), nil
}

// formatCredentials is (*digest.Credentials).String in one buffer
// (parameters in the library's order, response last), without a slice of
// parameters and a string per parameter: it was the largest allocation
// site of a forwarded request. Values are quoted as SIP says
// (appendQuoted), not as Go does: the library's strconv.Quote writes a
// byte that is not UTF-8 as the four characters `\xde`, which the server
// reads as "xde", so a digest over such a Request-URI could never match.
func formatCredentials(c *digest.Credentials) string {
	// The fixed text (parameter names, quotes, separators, nc) is under 160
	// bytes; quoting may add escapes, which then costs one regrowth.
	w := credWriter{b: make([]byte, 0, 160+len(c.Username)+len(c.Realm)+len(c.Nonce)+len(c.URI)+len(c.Algorithm)+len(c.Cnonce)+len(c.Opaque)+len(c.QOP)+len(c.Response))}
	w.b = append(w.b, digest.Prefix...)
	w.param("username", c.Username, true)
	w.param("realm", c.Realm, true)
	w.param("nonce", c.Nonce, true)
	w.param("uri", c.URI, true)
	if c.Algorithm != "" {
		w.param("algorithm", c.Algorithm, false)
	}
	if c.QOP != "" {
		w.param("cnonce", c.Cnonce, true)
	}
	if c.Opaque != "" {
		w.param("opaque", c.Opaque, true)
	}
	if c.QOP != "" {
		w.param("qop", c.QOP, false)
		nc := ncHex(c.Nc)
		w.sep()
		w.b = append(w.b, "nc="...)
		w.b = append(w.b, nc[:]...)
	}
	if c.Userhash {
		w.param("userhash", "true", false)
	}
	w.param("response", c.Response, true)
	return string(w.b)
}

type credWriter struct {
	b []byte
	n int
}

func (w *credWriter) sep() {
	if w.n > 0 {
		w.b = append(w.b, ", "...)
	}
	w.n++
}

func (w *credWriter) param(k, v string, quote bool) {
	w.sep()
	w.b = append(w.b, k...)
	w.b = append(w.b, '=')
	if quote {
		w.b = appendQuoted(w.b, v)
	} else {
		w.b = append(w.b, v...)
	}
}

// appendQuoted appends v as a quoted-string (RFC 3261 §25.1): between
// double quotes, '"', '\\' and control characters as quoted-pairs, every
// other byte as it is (qdtext takes UTF8-NONASCII), so that the server
// unquotes exactly the bytes the digest was computed over. CR and LF
// cannot be quoted; no value authproxy quotes has them (the request line
// and the challenge's parameters end at a line end).
func appendQuoted(b []byte, v string) []byte {
	b = append(b, '"')
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '"' || c == '\\' || (c < 0x20 && c != '\t') || c == 0x7f {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return append(b, '"')
}

func hashJoin(h hash.Hash, parts ...string) string {
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{':'})
		}
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// newCnonce returns 16 random hex characters (RFC 7616 §3.4: the cnonce
// must be unpredictable).
func newCnonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// nonceCounter hands out nc values per (upstream, realm, nonce) so that a
// nonce answered more than once never repeats a count (RFC 7616 §3.4).
// Entries expire after nonceTTL; the map is bounded by nonceMax, dropping
// everything when full (a new nonce then starts at 1 again, which upstreams
// accept for a nonce they issue afresh).
type nonceCounter struct {
	mu      sync.Mutex
	entries map[string]*nonceEntry
}

type nonceEntry struct {
	n    int
	seen time.Time
}

const (
	nonceTTL = 5 * time.Minute // longer than any peer's default nonce lifetime (Asterisk 32s, Kamailio 300s)
	nonceMax = 100000          // bounds memory if an upstream hands out a nonce per request
)

func newNonceCounter() *nonceCounter {
	return &nonceCounter{entries: map[string]*nonceEntry{}}
}

// next returns the next nc for the nonce, starting at 1.
func (nc *nonceCounter) next(server, realm, nonce string, now time.Time) int {
	key := server + "\x00" + realm + "\x00" + nonce
	nc.mu.Lock()
	defer nc.mu.Unlock()
	e, ok := nc.entries[key]
	if !ok {
		if len(nc.entries) >= nonceMax {
			nc.sweepLocked(now)
			if len(nc.entries) >= nonceMax {
				clear(nc.entries)
			}
		}
		e = &nonceEntry{}
		nc.entries[key] = e
	}
	e.n++
	e.seen = now
	return e.n
}

func (nc *nonceCounter) sweep(now time.Time) {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	nc.sweepLocked(now)
}

func (nc *nonceCounter) sweepLocked(now time.Time) {
	for k, e := range nc.entries {
		if now.Sub(e.seen) > nonceTTL {
			delete(nc.entries, k)
		}
	}
}
