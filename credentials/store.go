package credentials

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Entry is one configured credential: the auth username and its secret, and
// the three optional filters that scope it. An empty filter matches anything.
type Entry struct {
	// Username is the digest auth username (not the SIP URI user).
	Username string
	// Password is the plain password. Either Password or at least one HA1
	// is set.
	Password Secret
	// HA1 holds precomputed H(username:realm:password) values keyed by
	// algorithm (MD5, SHA256, SHA512256). An HA1 only answers challenges of
	// its algorithm (and its -sess form) and of the realm it was made for.
	HA1 map[string]Secret

	// Server scopes the entry to one upstream: "host" or "host:port". The
	// host compares case-insensitively; the port only when given here.
	// An IPv6 literal with a port is written "[::1]:5060"; a bare "::1" or
	// "[::1]" names the host only. IPv6 literals compare as addresses
	// ("[2001:DB8:0::1]" is "[2001:db8::1]").
	Server string
	// Realm scopes the entry to one digest realm (exact match).
	Realm string
	// User scopes the entry to one SIP URI user (exact match): the To user
	// for REGISTER, the From user otherwise.
	User string
}

// Credential is the answer of a Lookup: what to put in an Authorization
// header. Its String and LogValue never show the secret.
type Credential struct {
	// Username is the digest auth username to send; "anonymous" when
	// Anonymous is set.
	Username string
	// Password is the plain password; zero when only HA1s are configured
	// and for the anonymous credential.
	Password Secret
	// HA1 is shared with the Store that returned it and with every other
	// Credential returned for the same entry: it is read-only, callers must
	// not modify it. Use HA1For to pick the HA1 for a challenge algorithm.
	HA1 map[string]Secret
	// Server, Realm and User are the filters of the entry that matched ("" =
	// any), for logs: they tell which rung of the order answered. Server is
	// in normalised form: lowercase host, IPv6 canonical and in brackets,
	// port only if the entry named one.
	Server, Realm, User string
	// Anonymous is true when nothing matched and the RFC 3261 §22.1
	// anonymous credential was returned.
	Anonymous bool
}

// String shows the username and the scope of the entry that matched, never
// the secret, e.g. "alice (server=pbx-a realm=asterisk user=*)".
func (c Credential) String() string {
	if c.Anonymous {
		return c.Username + " (anonymous: no credential matched)"
	}
	return c.Username + " (server=" + orAny(c.Server) + " realm=" + orAny(c.Realm) + " user=" + orAny(c.User) + ")"
}

// LogValue shows the username and the scope in slog output, never the
// secret.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("username", c.Username),
		slog.String("server", orAny(c.Server)),
		slog.String("realm", orAny(c.Realm)),
		slog.String("user", orAny(c.User)),
		slog.Bool("anonymous", c.Anonymous),
	)
}

// HA1For returns the HA1 that answers a challenge with the given algorithm
// token ("MD5", "SHA-256-sess", ...; case-insensitive, the "-sess" suffix
// is ignored because the session variants use the same H(A1) base).
// It reports false when the credential holds no HA1 for that algorithm;
// the caller then falls back to Password, if set.
func (c Credential) HA1For(algorithm string) (Secret, bool) {
	if len(c.HA1) == 0 {
		return Secret{}, false
	}
	if len(algorithm) > len("-sess") && strings.EqualFold(algorithm[len(algorithm)-len("-sess"):], "-sess") {
		algorithm = algorithm[:len(algorithm)-len("-sess")]
	}
	if algorithm == "" {
		algorithm = MD5 // RFC 7616 §3.3: an absent algorithm means MD5.
	}
	for _, a := range [...]string{MD5, SHA256, SHA512256} {
		if strings.EqualFold(algorithm, a) {
			h, ok := c.HA1[a]
			return h, ok
		}
	}
	return Secret{}, false
}

func orAny(s string) string {
	if s == "" {
		return "*"
	}
	return s
}

// ErrDuplicate is wrapped by NewStore when two entries share all three
// filters: that is a configuration mistake, never a silent overwrite.
var ErrDuplicate = errors.New("duplicate credential scope")

// ErrNoSecret is wrapped by NewStore when an entry has neither a password
// nor an HA1.
var ErrNoSecret = errors.New("credential has no password or ha1")

// ErrBadUsername is wrapped by NewStore when an entry's Username is empty or
// holds control characters: it goes into an Authorization header verbatim.
var ErrBadUsername = errors.New("invalid username")

// ErrBadServer is wrapped by NewStore when an entry's Server is not "host",
// "host:port", "[ipv6]:port" or a bare IPv6 literal, its host is not
// ASCII (write internationalised names in punycode) or has a ':' without
// being an IPv6 address, or its port is not in 1..65535.
var ErrBadServer = errors.New("invalid server")

// ErrBadHA1 is wrapped by NewStore when an HA1 key is not one of MD5,
// SHA256 or SHA512256, or its value is not the hex digest of that
// algorithm.
var ErrBadHA1 = errors.New("invalid ha1")

// Store answers "which credential for this upstream, realm and user". It is
// built once by NewStore, never modified afterwards, and safe for concurrent
// Lookup from any number of goroutines. A nil *Store is an empty store.
type Store struct {
	// byScope indexes creds by scope. int32 values keep the map's slots
	// small; the Credentials sit in one slice.
	byScope map[scopeKey]int32
	creds   []Credential
	// present has bit i set when some entry sits on rung i, so Lookup
	// skips map probes for rungs nobody configured.
	present uint16
}

// scopeKey is an entry's scope, normalised; "" (and port 0) mean "any".
// It is comparable so it keys the index without building strings.
type scopeKey struct {
	host  string // lowercase ASCII, no brackets
	port  uint16 // 0: the entry names no port
	realm string
	user  string
}

// Server filter specificity, most specific first.
const (
	serverHostPort = iota // entry names host and port
	serverHost            // entry names the host only
	serverAny             // entry names no server
)

// rungs is the lookup order: server outranks realm, which outranks user.
// An entry naming host:port and one naming the host alone both set the
// server filter; the port only breaks a tie between two entries of the
// same rung. Index i is bit i of Store.present.
var rungs = [...]struct {
	server      int
	realm, user bool
}{
	{serverHostPort, true, true}, {serverHost, true, true},
	{serverHostPort, true, false}, {serverHost, true, false},
	{serverHostPort, false, true}, {serverHost, false, true},
	{serverHostPort, false, false}, {serverHost, false, false},
	{serverAny, true, true}, {serverAny, true, false}, {serverAny, false, true}, {serverAny, false, false},
}

// rungOf returns the index in rungs of the class k belongs to.
func rungOf(k scopeKey) int {
	j := 0 // position among the four realm/user combinations
	if k.realm == "" {
		j += 2
	}
	if k.user == "" {
		j++
	}
	switch {
	case k.host == "":
		return 8 + j
	case k.port == 0:
		return 2*j + 1
	}
	return 2 * j
}

// NewStore validates entries and builds an immutable Store from them.
//
// Every entry needs a Username, and a Password or at least one HA1 (keyed
// by MD5, SHA256 or SHA512256, hex of the right length). Its Server, if
// set, must parse as "host", "host:port", "[ipv6]:port" or a bare IPv6
// literal, with an ASCII host (a host containing ':' must be a valid IPv6
// address) and a port in 1..65535. Two entries with the same scope (Server
// after normalisation: lowercase host, canonical IPv6, port kept if given;
// Realm; User) are an error, not an override.
//
// All problems are reported at once, joined with errors.Join; each says
// "entry N: ..." with N the index in entries (from 0) and wraps one of
// ErrNoSecret, ErrBadUsername, ErrBadServer, ErrBadHA1 or ErrDuplicate.
// Errors name usernames, scopes and algorithms, never a secret.
//
// The Store copies what it keeps (HA1 maps included): later changes to
// entries do not affect it.
func NewStore(entries []Entry) (*Store, error) {
	s := &Store{
		byScope: make(map[scopeKey]int32, len(entries)),
		creds:   make([]Credential, 0, len(entries)),
	}
	firstIndex := make([]int, 0, len(entries)) // creds[i] is entries[firstIndex[i]]
	var errs []error
	for i, e := range entries {
		fail := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("entry %d: "+format, append([]any{i}, args...)...))
		}
		if e.Username == "" || hasControl(e.Username) {
			fail("username %q: %w", e.Username, ErrBadUsername)
		}
		if e.Password.IsZero() && len(e.HA1) == 0 {
			fail("username %q: %w", e.Username, ErrNoSecret)
		}
		ha1 := validHA1(e.HA1, fail)
		k := scopeKey{realm: e.Realm, user: e.User}
		if e.Server != "" {
			host, port, valid := parseEntryServer(e.Server)
			if !valid {
				fail("server %q: %w", e.Server, ErrBadServer)
				continue // no usable scope: no duplicate check possible
			}
			k.host, k.port = host, port
		}
		if j, dup := s.byScope[k]; dup {
			fail("scope %s already used by entry %d: %w", scopeString(k), firstIndex[j], ErrDuplicate)
			continue
		}
		s.byScope[k] = int32(len(s.creds))
		firstIndex = append(firstIndex, i)
		s.creds = append(s.creds, Credential{
			Username: e.Username,
			Password: e.Password,
			HA1:      ha1,
			Server:   serverString(k),
			Realm:    e.Realm,
			User:     e.User,
		})
		s.present |= 1 << rungOf(k)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// validHA1 copies an entry's HA1 map, lowercasing the hex, and calls fail
// for each bad key or value (in key order, so errors are deterministic).
func validHA1(in map[string]Secret, fail func(string, ...any)) map[string]Secret {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string]Secret, len(in))
	for _, alg := range slices.Sorted(maps.Keys(in)) {
		h := in[alg]
		var size int
		switch alg {
		case MD5:
			size = 32
		case SHA256, SHA512256:
			size = 64
		default:
			fail("ha1 algorithm %q is not %s, %s or %s (no -sess suffix): %w", alg, MD5, SHA256, SHA512256, ErrBadHA1)
			continue
		}
		v := h.Reveal()
		if len(v) != size || !isHex(v) {
			fail("ha1 for %s is not %d hex digits: %w", alg, size, ErrBadHA1)
			continue
		}
		out[alg] = NewSecret(strings.ToLower(v))
	}
	return out
}

// Lookup returns the credential that answers a challenge from server for
// realm, on behalf of SIP user user.
//
// server is the upstream the request was sent to, "host:port" or "host"
// ("[v6]:port", "[v6]" or a bare IPv6 literal also work). Pass the port the
// request actually went to: an entry that names a port never matches an
// asked server without one.
//
// The rule: an entry matches when each filter it sets equals the asked
// value; a filter it leaves empty matches anything. The server filter
// compares the host case-insensitively (ASCII; IPv6 literals as
// addresses) and the port only if the entry names one; realm and user
// compare exactly (RFC 7616 realms and SIP userinfo are case-sensitive).
// Among the matches the most specific wins, server outranking realm
// outranking user (S = server, R = realm, U = user, * = unset):
//
//	(S,R,U) > (S,R,*) > (S,*,U) > (S,*,*) > (*,R,U) > (*,R,*) > (*,*,U) > (*,*,*)
//
// where an entry naming host:port and one naming only the host both count
// as S; within one rung the host:port entry wins. NewStore forbids two entries with one scope, so the
// winner is unique.
//
// A server that does not parse matches only entries without a server
// filter. When nothing matches, or the store is nil, Lookup returns the
// RFC 3261 §22.1 anonymous credential: Username "anonymous", empty
// Password, Anonymous true.
//
// Lookup costs at most twelve map probes whatever the store size, and does
// not allocate when the host of server is already lowercase (and, for an
// IPv6 literal, in canonical form).
func (s *Store) Lookup(server, realm, user string) Credential {
	if s == nil || s.present == 0 {
		return anonymous()
	}
	host, port, serverOK := parseAskedServer(server)
	for i, r := range rungs {
		if s.present&(1<<i) == 0 ||
			(r.realm && realm == "") || (r.user && user == "") { // same probe as the rung below
			continue
		}
		var k scopeKey
		if r.server != serverAny {
			if !serverOK || (r.server == serverHostPort && port == 0) {
				continue
			}
			k.host = host
			if r.server == serverHostPort {
				k.port = port
			}
		}
		if r.realm {
			k.realm = realm
		}
		if r.user {
			k.user = user
		}
		if idx, ok := s.byScope[k]; ok {
			return s.creds[idx]
		}
	}
	return anonymous()
}

// Len returns the number of entries in the store; 0 for a nil store.
func (s *Store) Len() int {
	if s == nil {
		return 0
	}
	return len(s.creds)
}

// String describes the store without its contents, so printing a Store
// never prints secrets.
func (s *Store) String() string {
	return "credentials.Store(" + strconv.Itoa(s.Len()) + " entries)"
}

// anonymous is the RFC 3261 §22.1 credential used when nothing matches.
func anonymous() Credential {
	return Credential{Username: "anonymous", Anonymous: true}
}

// parseAskedServer splits an asked server into lowercase host and port
// (0 = none given); an IPv6 host is put in canonical form. ok is false when
// server is empty or malformed. It does not allocate when the host is
// already lowercase (and, for IPv6, canonical).
func parseAskedServer(server string) (host string, port uint16, ok bool) {
	h, p, ok := splitServer(server)
	if !ok {
		return "", 0, false
	}
	if p != "" {
		if port, ok = parsePort(p); !ok {
			return "", 0, false
		}
	}
	host = lowerASCII(h)
	if strings.IndexByte(host, ':') >= 0 {
		// An IPv6 literal: compare addresses, not spellings.
		if host, ok = canonicalIPv6(host); !ok {
			return "", 0, false
		}
	}
	return host, port, true
}

// canonicalIPv6 returns the RFC 5952 form of an IPv6 literal (with its
// zone, if any), or false if host is not one. It returns host itself, not
// a copy, when host is already canonical.
func canonicalIPv6(host string) (string, bool) {
	addr, err := netip.ParseAddr(host)
	if err != nil || !addr.Is6() {
		return "", false
	}
	var buf [64]byte
	if b := addr.AppendTo(buf[:0]); string(b) != host {
		return string(b), true
	}
	return host, true
}

// parseEntryServer is parseAskedServer plus the stricter checks a
// configured value gets: ASCII host without spaces, slashes, '@' or
// brackets.
func parseEntryServer(server string) (host string, port uint16, ok bool) {
	host, port, ok = parseAskedServer(server)
	if !ok {
		return "", 0, false
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c >= 0x7f || strings.IndexByte("/@[]\\\"", c) >= 0 {
			return "", 0, false
		}
	}
	return host, port, true
}

// splitServer splits "host", "host:port", "[host]", "[host]:port" or a bare
// IPv6 literal (two or more colons, no brackets) into host and port text.
func splitServer(s string) (host, port string, ok bool) {
	switch {
	case s == "":
		return "", "", false
	case s[0] == '[' && s[len(s)-1] == ']':
		host = s[1 : len(s)-1]
	case s[0] == '[' || strings.Count(s, ":") == 1:
		var err error
		if host, port, err = net.SplitHostPort(s); err != nil || port == "" {
			return "", "", false
		}
	case strings.IndexByte(s, ':') < 0:
		host = s
	default: // bare IPv6 literal: all colons belong to the address
		host = s
	}
	if host == "" || strings.ContainsAny(host, "[]") {
		return "", "", false
	}
	return host, port, true
}

// parsePort parses a decimal port in 1..65535 without allocating.
func parsePort(p string) (uint16, bool) {
	if p == "" || len(p) > 5 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// lowerASCII lowercases ASCII letters only, returning s itself (no
// allocation) when it has no uppercase ASCII letter. Unicode case folding
// is deliberately not applied: hosts are ASCII, and folding "İ" to "i"
// would let one host match another's entry.
func lowerASCII(s string) string {
	i := 0
	for ; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			break
		}
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if c := b[i]; 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// serverString renders a scope's server filter in normalised form.
func serverString(k scopeKey) string {
	if k.port == 0 {
		if strings.IndexByte(k.host, ':') >= 0 {
			return "[" + k.host + "]" // unambiguous: a bare "::1" reads as host:port
		}
		return k.host
	}
	return net.JoinHostPort(k.host, strconv.Itoa(int(k.port)))
}

// scopeString renders a scope for error messages.
func scopeString(k scopeKey) string {
	return fmt.Sprintf("server=%q realm=%q user=%q", serverString(k), k.realm, k.user)
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == 0x7f {
			return true
		}
	}
	return false
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
