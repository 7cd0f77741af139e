package credentials_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/authproxy/authproxy/credentials"
)

// pw is a password used by entries whose secret does not matter.
var pw = credentials.NewSecret("pw")

// entry builds a password entry with the given username and filters.
func entry(username, server, realm, user string) credentials.Entry {
	return credentials.Entry{Username: username, Password: pw, Server: server, Realm: realm, User: user}
}

func mustStore(t testing.TB, entries ...credentials.Entry) *credentials.Store {
	t.Helper()
	s, err := credentials.NewStore(entries)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	return s
}

// ask is one Lookup call.
type ask struct{ server, realm, user string }

func (a ask) String() string { return fmt.Sprintf("%s/%s/%s", a.server, a.realm, a.user) }

const anon = "<anonymous>"

// checkLookup asserts that Lookup(a) answers with the entry whose Username
// is want, or the anonymous credential when want is anon.
func checkLookup(t *testing.T, s *credentials.Store, a ask, want string) {
	t.Helper()
	got := s.Lookup(a.server, a.realm, a.user)
	if want == anon {
		if !got.Anonymous || got.Username != "anonymous" || !got.Password.IsZero() || got.HA1 != nil {
			t.Errorf("Lookup(%v) = %v, want the anonymous credential", a, got)
		}
		return
	}
	if got.Anonymous || got.Username != want {
		t.Errorf("Lookup(%v) = %v, want %s", a, got, want)
	}
}

// ladder is every rung of the lookup order, most specific first, each an
// entry matching the asked (pbx.example.com:5060, asterisk, alice).
var ladder = []credentials.Entry{
	entry("rung-hostport-realm-user", "pbx.example.com:5060", "asterisk", "alice"),
	entry("rung-host-realm-user", "pbx.example.com", "asterisk", "alice"),
	entry("rung-hostport-realm", "pbx.example.com:5060", "asterisk", ""),
	entry("rung-host-realm", "pbx.example.com", "asterisk", ""),
	entry("rung-hostport-user", "pbx.example.com:5060", "", "alice"),
	entry("rung-host-user", "pbx.example.com", "", "alice"),
	entry("rung-hostport", "pbx.example.com:5060", "", ""),
	entry("rung-host", "pbx.example.com", "", ""),
	entry("rung-realm-user", "", "asterisk", "alice"),
	entry("rung-realm", "", "asterisk", ""),
	entry("rung-user", "", "", "alice"),
	entry("rung-catchall", "", "", ""),
}

var ladderAsk = ask{"pbx.example.com:5060", "asterisk", "alice"}

// decoys sit on the most specific rungs but each has one filter that does
// not match ladderAsk: they must never answer it.
var decoys = []credentials.Entry{
	entry("decoy-other-port", "pbx.example.com:5070", "asterisk", "alice"),
	entry("decoy-other-host", "pbx2.example.com:5060", "asterisk", "alice"),
	entry("decoy-other-host-noport", "pbx2.example.com", "asterisk", "alice"),
	entry("decoy-realm-case", "pbx.example.com:5060", "Asterisk", "alice"),
	entry("decoy-user-case", "pbx.example.com:5060", "asterisk", "Alice"),
	entry("decoy-other-user", "", "asterisk", "bob"),
	entry("decoy-other-realm", "", "freeswitch", ""),
}

func TestLookupOrder(t *testing.T) {
	for i := range ladder {
		// The store holds rung i and every rung below it, plus decoys:
		// rung i must win over all of them.
		t.Run(fmt.Sprintf("%02d %s beats every rung below", i+1, ladder[i].Username), func(t *testing.T) {
			s := mustStore(t, append(append([]credentials.Entry{}, decoys...), ladder[i:]...)...)
			checkLookup(t, s, ladderAsk, ladder[i].Username)
		})
		if i+1 < len(ladder) {
			// Pairwise, with the weaker entry first in the input: input
			// order must not matter.
			t.Run(fmt.Sprintf("%02d %s beats %s whatever the input order", i+1, ladder[i].Username, ladder[i+1].Username), func(t *testing.T) {
				s := mustStore(t, ladder[i+1], ladder[i])
				checkLookup(t, s, ladderAsk, ladder[i].Username)
			})
		}
	}
	t.Run("13 no match is anonymous", func(t *testing.T) {
		checkLookup(t, mustStore(t, decoys...), ladderAsk, anon)
	})
	t.Run("empty store is anonymous", func(t *testing.T) {
		checkLookup(t, mustStore(t), ladderAsk, anon)
	})
	t.Run("nil store is anonymous", func(t *testing.T) {
		var s *credentials.Store
		checkLookup(t, s, ladderAsk, anon)
		if s.Len() != 0 {
			t.Errorf("nil Len() = %d", s.Len())
		}
	})
	t.Run("matched credential carries the entry's filters", func(t *testing.T) {
		s := mustStore(t, entry("alice", "PBX.Example.com:05060", "asterisk", ""))
		got := s.Lookup("pbx.example.com:5060", "asterisk", "alice")
		if got.Server != "pbx.example.com:5060" || got.Realm != "asterisk" || got.User != "" || got.Anonymous {
			t.Errorf("got %+v, want server=pbx.example.com:5060 realm=asterisk user=*", got)
		}
		if got.Password.Reveal() != "pw" {
			t.Errorf("password not carried")
		}
	})
	t.Run("matched ipv6 credential shows a reparsable server", func(t *testing.T) {
		s := mustStore(t, entry("a", "2001:DB8::0:1", "", ""), entry("b", "[2001:db8::2]:5060", "", ""))
		if got := s.Lookup("[2001:db8::1]:5060", "r", "u").Server; got != "[2001:db8::1]" {
			t.Errorf("Server = %q, want [2001:db8::1]", got)
		}
		if got := s.Lookup("[2001:db8::2]:5060", "r", "u").Server; got != "[2001:db8::2]:5060" {
			t.Errorf("Server = %q, want [2001:db8::2]:5060", got)
		}
	})
	t.Run("empty asked realm and user only match unset filters", func(t *testing.T) {
		s := mustStore(t, entry("scoped", "", "asterisk", "alice"), entry("wild", "", "", ""))
		checkLookup(t, s, ask{"pbx", "", ""}, "wild")
	})
}

func TestLookupTwoAsterisksSameRealm(t *testing.T) {
	both := []credentials.Entry{
		entry("ast2", "127.0.0.2:5060", "asterisk", ""),
		entry("ast3", "127.0.0.3:5060", "asterisk", ""),
	}
	withFallback := append(append([]credentials.Entry{}, both...), entry("fallback", "", "asterisk", ""))
	tests := []struct {
		name    string
		entries []credentials.Entry
		ask     ask
		want    string
	}{
		{"127.0.0.2 gets its own", both, ask{"127.0.0.2:5060", "asterisk", "alice"}, "ast2"},
		{"127.0.0.3 gets its own", both, ask{"127.0.0.3:5060", "asterisk", "alice"}, "ast3"},
		{"127.0.0.2 on another port gets neither", both, ask{"127.0.0.2:5070", "asterisk", "alice"}, anon},
		{"127.0.0.2 without port gets neither", both, ask{"127.0.0.2", "asterisk", "alice"}, anon},
		{"third server gets neither", both, ask{"127.0.0.4:5060", "asterisk", "alice"}, anon},
		{"127.0.0.2 gets its own over the realm fallback", withFallback, ask{"127.0.0.2:5060", "asterisk", "alice"}, "ast2"},
		{"127.0.0.3 gets its own over the realm fallback", withFallback, ask{"127.0.0.3:5060", "asterisk", "alice"}, "ast3"},
		{"third server gets the realm fallback", withFallback, ask{"127.0.0.4:5060", "asterisk", "alice"}, "fallback"},
		{"other realm on 127.0.0.2 gets nothing", withFallback, ask{"127.0.0.2:5060", "other", "alice"}, anon},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLookup(t, mustStore(t, tt.entries...), tt.ask, tt.want)
		})
	}
}

func TestLookupServerMatching(t *testing.T) {
	tests := []struct {
		name    string
		entries []credentials.Entry
		ask     ask
		want    string
	}{
		// Host case.
		{"lowercase entry matches mixed-case asked host with port", []credentials.Entry{entry("a", "pbx.example.com", "", "")}, ask{"PBX.example.com:5070", "r", "u"}, "a"},
		{"uppercase entry matches lowercase asked host", []credentials.Entry{entry("a", "PBX.EXAMPLE.COM:5060", "", "")}, ask{"pbx.example.com:5060", "r", "u"}, "a"},
		{"mixed-case asked host without port", []credentials.Entry{entry("a", "pbx.example.com", "", "")}, ask{"Pbx.Example.Com", "r", "u"}, "a"},
		{"host is not a prefix match", []credentials.Entry{entry("a", "pbx.example.com", "", "")}, ask{"pbx.example.com.evil:5060", "r", "u"}, anon},
		{"no unicode folding of asked host", []credentials.Entry{entry("a", "i.example.com", "", "")}, ask{"\u0130.example.com", "r", "u"}, anon},
		{"no kelvin-sign folding of asked host", []credentials.Entry{entry("a", "k.example.com", "", "")}, ask{"\u212a.example.com", "r", "u"}, anon},

		// Port only when named.
		{"entry without port matches any asked port", []credentials.Entry{entry("a", "127.0.0.2", "", "")}, ask{"127.0.0.2:5070", "r", "u"}, "a"},
		{"entry without port matches asked without port", []credentials.Entry{entry("a", "127.0.0.2", "", "")}, ask{"127.0.0.2", "r", "u"}, "a"},
		{"entry port differs from asked port", []credentials.Entry{entry("a", "127.0.0.2:5060", "", "")}, ask{"127.0.0.2:5070", "r", "u"}, anon},
		{"entry port and asked without port", []credentials.Entry{entry("a", "127.0.0.2:5060", "", "")}, ask{"127.0.0.2", "r", "u"}, anon},
		{"leading zeros in asked port", []credentials.Entry{entry("a", "127.0.0.2:5060", "", "")}, ask{"127.0.0.2:05060", "r", "u"}, "a"},
		{"host:port beats host", []credentials.Entry{entry("host", "pbx", "", ""), entry("hostport", "pbx:5060", "", "")}, ask{"pbx:5060", "r", "u"}, "hostport"},
		{"host with realm beats host:port without (both name the server)", []credentials.Entry{entry("host-realm", "pbx", "r", "u"), entry("hostport", "pbx:5060", "", "")}, ask{"pbx:5060", "r", "u"}, "host-realm"},
		{"host:port beats host on the same rung", []credentials.Entry{entry("host", "pbx", "r", ""), entry("hostport", "pbx:5060", "r", "")}, ask{"pbx:5060", "r", "u"}, "hostport"},
		{"host answers when host:port names another port", []credentials.Entry{entry("host", "pbx", "", ""), entry("hostport", "pbx:5060", "", "")}, ask{"pbx:5080", "r", "u"}, "host"},

		// IPv6.
		{"ipv6 with port", []credentials.Entry{entry("a", "[::1]:5060", "", "")}, ask{"[::1]:5060", "r", "u"}, "a"},
		{"ipv6 other port", []credentials.Entry{entry("a", "[::1]:5060", "", "")}, ask{"[::1]:5070", "r", "u"}, anon},
		{"bare ipv6 entry matches bracketed asked with port", []credentials.Entry{entry("a", "::1", "", "")}, ask{"[::1]:5070", "r", "u"}, "a"},
		{"bare ipv6 entry matches bare asked", []credentials.Entry{entry("a", "::1", "", "")}, ask{"::1", "r", "u"}, "a"},
		{"bracketed ipv6 entry without port matches asked with port", []credentials.Entry{entry("a", "[::1]", "", "")}, ask{"[::1]:5060", "r", "u"}, "a"},
		{"bracketed asked without port", []credentials.Entry{entry("a", "::1", "", "")}, ask{"[::1]", "r", "u"}, "a"},
		{"ipv6 hex case", []credentials.Entry{entry("a", "[2001:DB8::1]:5060", "", "")}, ask{"[2001:db8::1]:5060", "r", "u"}, "a"},
		{"other ipv6 host", []credentials.Entry{entry("a", "[::1]:5060", "", "")}, ask{"[::2]:5060", "r", "u"}, anon},
		{"ipv6 spelled differently", []credentials.Entry{entry("a", "[2001:DB8:0:0::1]:5060", "", "")}, ask{"[2001:db8::0:1]:5060", "r", "u"}, "a"},
		{"ipv6 zone", []credentials.Entry{entry("a", "[fe80::1%eth0]", "", "")}, ask{"[fe80::1%eth0]:5060", "r", "u"}, "a"},
		{"ipv6 other zone", []credentials.Entry{entry("a", "[fe80::1%eth0]", "", "")}, ask{"[fe80::1%eth1]:5060", "r", "u"}, anon},
		{"ipv4-mapped ipv6 is not the ipv4 host", []credentials.Entry{entry("a", "127.0.0.2", "", "")}, ask{"[::ffff:127.0.0.2]:5060", "r", "u"}, anon},
		{"asked host with colons that is not ipv6", []credentials.Entry{entry("a", "::1", "", ""), entry("wild", "", "", "")}, ask{"[:]:5060", "r", "u"}, "wild"},

		// Malformed asked servers only reach server-less entries.
		{"malformed asked port", []credentials.Entry{entry("a", "pbx", "", ""), entry("wild", "", "", "")}, ask{"pbx:abc", "r", "u"}, "wild"},
		{"asked port zero", []credentials.Entry{entry("a", "pbx", "", "")}, ask{"pbx:0", "r", "u"}, anon},
		{"unclosed bracket", []credentials.Entry{entry("a", "::1", "", "")}, ask{"[::1", "r", "u"}, anon},
		{"empty asked server", []credentials.Entry{entry("a", "pbx", "", ""), entry("wild", "", "", "")}, ask{"", "r", "u"}, "wild"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLookup(t, mustStore(t, tt.entries...), tt.ask, tt.want)
		})
	}
}

func TestLookupRealmAndUserAreCaseSensitive(t *testing.T) {
	s := mustStore(t, entry("exact", "", "Asterisk", "Alice"))
	tests := []struct {
		name string
		ask  ask
		want string
	}{
		{"exact realm and user", ask{"pbx", "Asterisk", "Alice"}, "exact"},
		{"realm differs in case", ask{"pbx", "asterisk", "Alice"}, anon},
		{"user differs in case", ask{"pbx", "Asterisk", "alice"}, anon},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkLookup(t, s, tt.ask, tt.want) })
	}
}

const (
	md5HA1    = "0123456789abcdef0123456789abcdef"
	sha256HA1 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func TestNewStoreErrors(t *testing.T) {
	ha1 := func(alg, v string) map[string]credentials.Secret {
		return map[string]credentials.Secret{alg: credentials.NewSecret(v)}
	}
	tests := []struct {
		name    string
		entries []credentials.Entry
		want    []error // one per joined error, in order
		indexes []int   // the entry index each error names
	}{
		{"no password and no ha1", []credentials.Entry{{Username: "a"}}, []error{credentials.ErrNoSecret}, []int{0}},
		{"empty ha1 map is no secret", []credentials.Entry{{Username: "a", HA1: map[string]credentials.Secret{}}}, []error{credentials.ErrNoSecret}, []int{0}},
		{"empty username", []credentials.Entry{{Password: pw}}, []error{credentials.ErrBadUsername}, []int{0}},
		{"username with CRLF", []credentials.Entry{{Username: "a\r\nX-Evil: 1", Password: pw}}, []error{credentials.ErrBadUsername}, []int{0}},
		{"lowercase algorithm key", []credentials.Entry{{Username: "a", HA1: ha1("md5", md5HA1)}}, []error{credentials.ErrBadHA1}, []int{0}},
		{"sess algorithm key", []credentials.Entry{{Username: "a", HA1: ha1("MD5-sess", md5HA1)}}, []error{credentials.ErrBadHA1}, []int{0}},
		{"unknown algorithm key", []credentials.Entry{{Username: "a", HA1: ha1("SHA1", md5HA1)}}, []error{credentials.ErrBadHA1}, []int{0}},
		{"md5 ha1 of sha256 length", []credentials.Entry{{Username: "a", HA1: ha1(credentials.MD5, sha256HA1)}}, []error{credentials.ErrBadHA1}, []int{0}},
		{"sha256 ha1 not hex", []credentials.Entry{{Username: "a", HA1: ha1(credentials.SHA256, strings.Repeat("z", 64))}}, []error{credentials.ErrBadHA1}, []int{0}},
		{"empty ha1 value", []credentials.Entry{{Username: "a", HA1: ha1(credentials.SHA512256, "")}}, []error{credentials.ErrBadHA1}, []int{0}},
		{"several bad ha1 in key order", []credentials.Entry{{Username: "a", HA1: map[string]credentials.Secret{
			"z": credentials.NewSecret(md5HA1), credentials.MD5: credentials.NewSecret("x"), "a": credentials.NewSecret(md5HA1),
		}}}, []error{credentials.ErrBadHA1, credentials.ErrBadHA1, credentials.ErrBadHA1}, []int{0, 0, 0}},
		{"server port only", []credentials.Entry{entry("a", ":5060", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server port zero", []credentials.Entry{entry("a", "pbx:0", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server port six digits", []credentials.Entry{entry("a", "pbx:100000", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server port too big", []credentials.Entry{entry("a", "pbx:65536", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server port not numeric", []credentials.Entry{entry("a", "pbx:sip", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server empty port", []credentials.Entry{entry("a", "pbx:", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server with space", []credentials.Entry{entry("a", "pbx example", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server with scheme", []credentials.Entry{entry("a", "sip:pbx@x", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server unclosed bracket", []credentials.Entry{entry("a", "[::1", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server not ascii", []credentials.Entry{entry("a", "bücher.example", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server colon host not ipv6", []credentials.Entry{entry("a", "[:]", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server bare colons not ipv6", []credentials.Entry{entry("a", "a:b:c", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"server bracketed ipv4", []credentials.Entry{entry("a", "[1.2.3.4:5060]", "", "")}, []error{credentials.ErrBadServer}, []int{0}},
		{"duplicate scope", []credentials.Entry{entry("a", "pbx", "r", "u"), entry("b", "pbx", "r", "u")}, []error{credentials.ErrDuplicate}, []int{1}},
		{"duplicate after host case normalisation", []credentials.Entry{entry("a", "PBX:5060", "", ""), entry("b", "pbx:5060", "", "")}, []error{credentials.ErrDuplicate}, []int{1}},
		{"duplicate after port normalisation", []credentials.Entry{entry("a", "pbx:5060", "", ""), entry("b", "pbx:05060", "", "")}, []error{credentials.ErrDuplicate}, []int{1}},
		{"duplicate ipv6 written two ways", []credentials.Entry{entry("a", "::1", "", ""), entry("b", "[::1]", "", "")}, []error{credentials.ErrDuplicate}, []int{1}},
		{"duplicate ipv6 spelled two ways", []credentials.Entry{entry("a", "[2001:db8::1]:5060", "", ""), entry("b", "[2001:DB8:0::1]:5060", "", "")}, []error{credentials.ErrDuplicate}, []int{1}},
		{"duplicate catch-all", []credentials.Entry{entry("a", "", "", ""), entry("b", "", "", "")}, []error{credentials.ErrDuplicate}, []int{1}},
		{"two duplicate pairs yield two errors", []credentials.Entry{
			entry("a", "pbx", "", ""), entry("b", "", "r", ""), entry("c", "PBX", "", ""), entry("d", "", "r", ""),
		}, []error{credentials.ErrDuplicate, credentials.ErrDuplicate}, []int{2, 3}},
		{"three of a scope yield two errors", []credentials.Entry{entry("a", "", "", "u"), entry("b", "", "", "u"), entry("c", "", "", "u")},
			[]error{credentials.ErrDuplicate, credentials.ErrDuplicate}, []int{1, 2}},
		{"every problem reported at once", []credentials.Entry{
			entry("ok", "pbx", "", ""),
			{Username: "nosecret"},
			entry("badserver", "pbx:x", "", ""),
			entry("dup", "PBX", "", ""),
			{Username: "", HA1: ha1("md4", md5HA1), Realm: "r4"},
		}, []error{credentials.ErrNoSecret, credentials.ErrBadServer, credentials.ErrDuplicate, credentials.ErrBadUsername, credentials.ErrBadHA1}, []int{1, 2, 3, 4, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := credentials.NewStore(tt.entries)
			if err == nil {
				t.Fatalf("NewStore succeeded with %d entries, want an error", s.Len())
			}
			if s != nil {
				t.Errorf("NewStore returned a store along with an error")
			}
			joined, ok := err.(interface{ Unwrap() []error })
			if !ok {
				t.Fatalf("error %v is not joined", err)
			}
			errs := joined.Unwrap()
			if len(errs) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tt.want), err)
			}
			for i, e := range errs {
				if !errors.Is(e, tt.want[i]) {
					t.Errorf("error %d = %q, want it to wrap %q", i, e, tt.want[i])
				}
				if prefix := fmt.Sprintf("entry %d: ", tt.indexes[i]); !strings.HasPrefix(e.Error(), prefix) {
					t.Errorf("error %d = %q, want prefix %q", i, e, prefix)
				}
				if !errors.Is(err, tt.want[i]) {
					t.Errorf("joined error does not wrap %q", tt.want[i])
				}
			}
		})
	}
}

func TestNewStoreAccepts(t *testing.T) {
	tests := []struct {
		name    string
		entries []credentials.Entry
	}{
		{"no entries", nil},
		{"password only", []credentials.Entry{entry("a", "", "", "")}},
		{"ha1 only, every algorithm", []credentials.Entry{{Username: "a", HA1: map[string]credentials.Secret{
			credentials.MD5:       credentials.NewSecret(md5HA1),
			credentials.SHA256:    credentials.NewSecret(sha256HA1),
			credentials.SHA512256: credentials.NewSecret(strings.ToUpper(sha256HA1)),
		}}}},
		{"same server and realm, different users", []credentials.Entry{entry("a", "pbx", "r", "alice"), entry("b", "pbx", "r", "bob")}},
		{"realms differing only in case are distinct", []credentials.Entry{entry("a", "", "Asterisk", ""), entry("b", "", "asterisk", "")}},
		{"same host, with and without port", []credentials.Entry{entry("a", "pbx", "", ""), entry("b", "pbx:5060", "", "")}},
		{"ipv6 with zone", []credentials.Entry{entry("a", "[fe80::1%eth0]:5060", "", "")}},
		{"hostname with port", []credentials.Entry{entry("a", "pbx.example.com:65535", "", "")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustStore(t, tt.entries...)
			if s.Len() != len(tt.entries) {
				t.Errorf("Len() = %d, want %d", s.Len(), len(tt.entries))
			}
		})
	}
}

func TestNewStoreErrorsNeverContainSecrets(t *testing.T) {
	const password = "Pa55w0rd-ZZ-Top-7f3e" // distinctive, must never show
	const badHA1 = "HA1-NOT-HEX-Sekret-9d2c"
	sec := credentials.NewSecret(password)
	entries := []credentials.Entry{
		{Username: "", Password: sec},
		{Username: "a", Password: sec, Server: "pbx:bad"},
		{Username: "b", Password: sec, Server: "pbx", Realm: "r"},
		{Username: "c", Password: sec, Server: "PBX", Realm: "r"},
		{Username: "d", HA1: map[string]credentials.Secret{credentials.MD5: credentials.NewSecret(badHA1)}},
		{Username: "e", HA1: map[string]credentials.Secret{"md5": credentials.NewSecret(badHA1)}},
		{Username: "f\n", Password: sec},
	}
	_, err := credentials.NewStore(entries)
	if err == nil {
		t.Fatal("NewStore succeeded, want errors")
	}
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		msg := fmt.Sprintf(format, err)
		for _, secret := range []string{password, badHA1} {
			if strings.Contains(msg, secret) {
				t.Errorf("error printed with %s contains a secret: %s", format, msg)
			}
		}
	}
}

func TestStoreCopiesEntries(t *testing.T) {
	ha1 := map[string]credentials.Secret{credentials.MD5: credentials.NewSecret(strings.ToUpper(md5HA1))}
	entries := []credentials.Entry{{Username: "alice", HA1: ha1, Server: "pbx", Realm: "r"}}
	s := mustStore(t, entries...)

	// Mutating the caller's data after the build must not reach the store.
	ha1[credentials.MD5] = credentials.NewSecret("changed")
	ha1[credentials.SHA256] = credentials.NewSecret(sha256HA1)
	entries[0].Username = "mallory"
	entries[0].Server = "evil"

	got := s.Lookup("pbx:5060", "r", "x")
	if got.Username != "alice" {
		t.Fatalf("Lookup = %v, want alice", got)
	}
	if len(got.HA1) != 1 {
		t.Errorf("HA1 has %d entries, want 1 (store shares the caller's map)", len(got.HA1))
	}
	if h, ok := got.HA1For("md5-sess"); !ok || h.Reveal() != md5HA1 {
		t.Errorf("HA1For(md5-sess) = %v, want the lowercased configured HA1", ok)
	}
}

func TestCredentialHA1For(t *testing.T) {
	c := credentials.Credential{HA1: map[string]credentials.Secret{
		credentials.MD5:    credentials.NewSecret("m"),
		credentials.SHA256: credentials.NewSecret("s"),
	}}
	tests := []struct {
		alg  string
		want string // "" = not found
	}{
		{"MD5", "m"}, {"md5", "m"}, {"MD5-sess", "m"}, {"MD5-SESS", "m"}, {"", "m"},
		{"SHA-256", "s"}, {"sha-256-sess", "s"},
		{"SHA-512-256", ""}, {"SHA1", ""}, {"-sess", ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("algorithm %q", tt.alg), func(t *testing.T) {
			h, ok := c.HA1For(tt.alg)
			if ok != (tt.want != "") || h.Reveal() != tt.want {
				t.Errorf("HA1For(%q) = %q, %v; want %q", tt.alg, h.Reveal(), ok, tt.want)
			}
		})
	}
	t.Run("no ha1 at all", func(t *testing.T) {
		if _, ok := (credentials.Credential{}).HA1For("MD5"); ok {
			t.Error("found an HA1 in an empty credential")
		}
	})
}

func TestCredentialString(t *testing.T) {
	tests := []struct {
		name string
		c    credentials.Credential
		want string
	}{
		{"full scope", credentials.Credential{Username: "alice", Password: pw, Server: "pbx-a", Realm: "asterisk", User: "bob"}, "alice (server=pbx-a realm=asterisk user=bob)"},
		{"wildcards", credentials.Credential{Username: "alice", Password: pw, Server: "pbx-a", Realm: "asterisk"}, "alice (server=pbx-a realm=asterisk user=*)"},
		{"anonymous", (*credentials.Store)(nil).Lookup("pbx", "r", "u"), "anonymous (anonymous: no credential matched)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if got := fmt.Sprint(tt.c); got != tt.want {
				t.Errorf("Sprint = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestConcurrentLookup(t *testing.T) {
	entries := append(append([]credentials.Entry{}, ladder[1:]...), decoys...)
	for i := range 200 {
		entries = append(entries, entry(fmt.Sprintf("u%d", i), fmt.Sprintf("10.0.0.%d:5060", i), "asterisk", ""))
	}
	s := mustStore(t, entries...)
	cases := []struct {
		ask  ask
		want string
	}{
		{ladderAsk, "rung-host-realm-user"},
		{ask{"PBX.example.com:5060", "asterisk", "alice"}, "rung-host-realm-user"},
		{ask{"pbx.example.com:5080", "asterisk", "alice"}, "rung-host-realm-user"},
		{ask{"10.0.0.7:5060", "asterisk", "x"}, "u7"},
		{ask{"10.0.0.7:5061", "asterisk", "x"}, "rung-realm"},
		{ask{"elsewhere", "other", "alice"}, "rung-user"},
		{ask{"elsewhere", "other", "x"}, "rung-catchall"},
	}
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 2000 {
				c := cases[(g+i)%len(cases)]
				if got := s.Lookup(c.ask.server, c.ask.realm, c.ask.user); got.Username != c.want {
					t.Errorf("goroutine %d: Lookup(%v) = %v, want %s", g, c.ask, got, c.want)
					return
				}
			}
		})
	}
	wg.Wait()
}
