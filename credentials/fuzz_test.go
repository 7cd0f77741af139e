package credentials_test

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/credentials"
)

// refHost is the fuzz oracle's own idea of an address's host: what
// net.SplitHostPort gives, else the text without surrounding brackets.
func refHost(s string) string {
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	if len(s) >= 2 && s[0] == '[' && s[len(s)-1] == ']' {
		return s[1 : len(s)-1]
	}
	return s
}

// sameHost is the oracle's host equality: equal ignoring case, or the same
// IPv6 address however it is spelled.
func sameHost(a, b string) bool {
	a, b = refHost(a), refHost(b)
	if strings.EqualFold(a, b) {
		return true
	}
	x, errA := netip.ParseAddr(strings.ToLower(a))
	y, errB := netip.ParseAddr(strings.ToLower(b))
	return errA == nil && errB == nil && x.Is6() && x == y
}

// refPort is the port number in s, or -1 if s has no parsable port.
func refPort(s string) int {
	_, p, err := net.SplitHostPort(s)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return -1
	}
	return n
}

// FuzzLookupServerScope builds a store with an entry scoped to serverA
// (plus, per the bits of extra, wildcard entries and an entry for serverB)
// and asserts that a Lookup for serverB never returns the serverA entry
// unless the two hosts are equal case-insensitively; that whatever answers
// has filters matching what was asked; and that asking exactly for A's
// scope returns A.
func FuzzLookupServerScope(f *testing.F) {
	seeds := []struct {
		serverA, serverB, realm, user, askRealm, askUser string
		extra                                            uint8
	}{
		{"127.0.0.2:5060", "127.0.0.3:5060", "asterisk", "", "asterisk", "alice", 0xff},
		{"127.0.0.2:5060", "127.0.0.2:5060", "asterisk", "", "asterisk", "alice", 0xff},
		{"127.0.0.2", "127.0.0.20:5060", "", "", "r", "u", 1},
		{"pbx.example.com", "PBX.example.com:5070", "", "", "r", "u", 3},
		{"pbx.example.com", "pbx.example.co", "r", "u", "r", "u", 7},
		{"pbx.example.com", "pbx.example.com.evil", "", "", "", "", 7},
		{"[::1]:5060", "[::2]:5060", "", "alice", "r", "alice", 7},
		{"::1", "[::1]:5060", "", "", "r", "u", 7},
		{"[::1]", "::10", "", "", "r", "u", 7},
		{"i.example", "\u0130.example", "", "", "r", "u", 7},
		{"k", "\u212a", "", "", "r", "u", 7},
		{"pbx:5060", "pbx:abc", "", "", "r", "u", 7},
		{"pbx", "", "", "", "", "", 7},
		{"a", "b", "r", "u", "r", "u", 0},
		{"[fe80::1%eth0]:5060", "[fe80::1%ETH1]:5060", "", "", "r", "u", 7},
		{"[2001:DB8::1]", "[2001:db8:0::1]:5060", "", "", "r", "u", 15},
		{"::1", "[:]", "", "", "r", "u", 15},
	}
	for _, s := range seeds {
		f.Add(s.serverA, s.serverB, s.realm, s.user, s.askRealm, s.askUser, s.extra)
	}
	f.Fuzz(func(t *testing.T, serverA, serverB, realm, user, askRealm, askUser string, extra uint8) {
		if serverA == "" {
			return // an entry without a server is a wildcard, not scoped to A
		}
		entries := []credentials.Entry{{Username: "scoped-to-A", Password: pw, Server: serverA, Realm: realm, User: user}}
		if _, err := credentials.NewStore(entries); err != nil {
			return // A is not a valid configuration; nothing to check
		}
		optional := []credentials.Entry{
			{Username: "wild-any", Password: pw},
			{Username: "wild-realm", Password: pw, Realm: realm},
			{Username: "wild-realm-user", Password: pw, Realm: askRealm, User: askUser},
			{Username: "scoped-to-B", Password: pw, Server: serverB},
			{Username: "wild-user", Password: pw, User: user},
		}
		for i, e := range optional {
			if extra&(1<<i) == 0 {
				continue
			}
			// Keep an optional entry only if the store still builds (it
			// may duplicate A's scope or have an invalid server).
			if _, err := credentials.NewStore(append(entries, e)); err == nil {
				entries = append(entries, e)
			}
		}
		s, err := credentials.NewStore(entries)
		if err != nil {
			t.Fatalf("NewStore: %v", err)
		}

		got := s.Lookup(serverB, askRealm, askUser)

		if !sameHost(serverA, serverB) && got.Username == "scoped-to-A" {
			t.Fatalf("Lookup(%q, %q, %q) returned the entry scoped to %q: %v", serverB, askRealm, askUser, serverA, got)
		}
		if got.Anonymous {
			if got.Username != "anonymous" || !got.Password.IsZero() {
				t.Fatalf("bad anonymous credential %+v", got)
			}
		} else {
			if got.Realm != "" && got.Realm != askRealm || got.User != "" && got.User != askUser {
				t.Fatalf("Lookup(%q, %q, %q) = %v: filters do not match the ask", serverB, askRealm, askUser, got)
			}
			if got.Server != "" {
				if !sameHost(got.Server, serverB) {
					t.Fatalf("Lookup(%q, ...) = %v: server host does not match", serverB, got)
				}
				if p := refPort(got.Server); p >= 0 && p != refPort(serverB) {
					t.Fatalf("Lookup(%q, ...) = %v: server port does not match", serverB, got)
				}
			}
		}
		if serverA == serverB && askRealm == realm && askUser == user && got.Username != "scoped-to-A" {
			t.Fatalf("Lookup for exactly A's scope (%q, %q, %q) = %v, want scoped-to-A", serverB, askRealm, askUser, got)
		}
	})
}
