package proxy

import (
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestParseChallenge(t *testing.T) {
	for _, tc := range []struct {
		name, in  string
		realm     string
		nonce     string
		alg       string
		qop       []string
		stale     bool
		opaque    string
		wantError bool
	}{
		{name: "asterisk", in: `Digest realm="asterisk",nonce="1700000000/abc",opaque="5b7d",algorithm=MD5,qop="auth"`,
			realm: "asterisk", nonce: "1700000000/abc", alg: "MD5", qop: []string{"auth"}, opaque: "5b7d"},
		{name: "kamailio", in: `Digest realm="asterisk", nonce="Z1x2c3", qop="auth,auth-int", algorithm=SHA-256`,
			realm: "asterisk", nonce: "Z1x2c3", alg: "SHA-256", qop: []string{"auth", "auth-int"}},
		{name: "qop with spaces", in: `Digest realm="r", nonce="n", qop="auth-int, auth"`,
			realm: "r", nonce: "n", qop: []string{"auth-int", "auth"}},
		{name: "case-insensitive names", in: `digest Realm="r", NONCE="n", Algorithm=md5-sess, Stale=TRUE`,
			realm: "r", nonce: "n", alg: "md5-sess", stale: true},
		{name: "unquoted dotted realm", in: `Digest realm=asterisk.local, nonce=abc`,
			realm: "asterisk.local", nonce: "abc"},
		{name: "tabs", in: "Digest\trealm=\"r\",\tnonce=\"n\"", realm: "r", nonce: "n"},
		{name: "escaped quote", in: `Digest realm="a\"b", nonce="n"`, realm: `a"b`, nonce: "n"},
		{name: "stale quoted", in: `Digest realm="r", nonce="n", stale="true"`, realm: "r", nonce: "n", stale: true},
		{name: "basic", in: `Basic realm="r"`, wantError: true},
		{name: "no nonce", in: `Digest realm="r"`, wantError: true},
		{name: "empty nonce", in: `Digest realm="r", nonce=""`, wantError: true},
		{name: "no realm", in: `Digest nonce="n"`, wantError: true},
		{name: "unterminated", in: `Digest realm="r, nonce="n`, wantError: true},
		{name: "repeated", in: `Digest realm="r", realm="s", nonce="n"`, wantError: true},
		{name: "garbage after value", in: `Digest realm="r" x, nonce="n"`, wantError: true},
		{name: "DigestX", in: `DigestX realm="r", nonce="n"`, wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseChallenge(tc.in)
			if tc.wantError {
				if err == nil {
					t.Fatalf("want an error, got %+v", c)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Realm != tc.realm || c.Nonce != tc.nonce || c.Algorithm != tc.alg || c.Stale != tc.stale || c.Opaque != tc.opaque {
				t.Fatalf("got %+v", c)
			}
			if !reflect.DeepEqual(c.QOP, tc.qop) {
				t.Fatalf("qop = %q, want %q", c.QOP, tc.qop)
			}
		})
	}
}

// FuzzParseChallenge: challenges are untrusted input from upstreams (and
// anyone who can answer on their address). The parser must never panic,
// and what it accepts must be a Digest challenge carrying a realm
// parameter and a non-empty nonce, whose values come from the input.
func FuzzParseChallenge(f *testing.F) {
	for _, s := range []string{
		`Digest realm="asterisk",nonce="1700000000/abc",opaque="5b7d",algorithm=MD5,qop="auth"`,
		`Digest realm="asterisk", nonce="Z1x2c3", qop="auth,auth-int", algorithm=SHA-256`,
		`Digest realm="sip.example.com", nonce="ea9c8e88df84f1cec4341ae6cbe5a359", opaque="", stale=FALSE, algorithm=MD5`,
		`Digest realm="atlanta.example.com", domain="sip:ss1.example.com", qop="auth", nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=FALSE, algorithm=MD5`,
		`Digest realm="r", nonce="n", algorithm=SHA-512-256-sess, qop="auth-int", userhash=true, charset=UTF-8`,
		"Digest\trealm=\"r\",\tnonce=\"n\"",
		`Digest realm="a\"b", nonce="n"`,
		`Digest`, `Digest ,,,`, `Digest realm=`, `Digest realm="`,
		`Digest nonce="n", algorithm=MD5`, `Digest xrealm="r", nonce="n"`, `Digest opaque="realm=x", nonce="n"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseChallenge(s)
		if err != nil {
			return
		}
		if c.Nonce == "" {
			t.Fatalf("accepted a challenge without nonce: %q", s)
		}
		if !strings.HasPrefix(strings.ToLower(strings.TrimLeft(s, " \t")), "digest") {
			t.Fatalf("accepted a non-Digest challenge: %q", s)
		}
		if !realmParam.MatchString(s) {
			t.Fatalf("accepted a challenge without realm: %q", s)
		}
		for name, v := range map[string]string{"realm": c.Realm, "nonce": c.Nonce} {
			// Without escapes in the input, a value is a piece of it.
			if !strings.Contains(s, `\`) && !strings.Contains(s, v) {
				t.Fatalf("%s %q is not in the challenge %q", name, v, s)
			}
		}
	})
}

// realmParam finds a realm parameter in a challenge, independently of the
// parser: the name (any case) after the scheme or a separator, then "=".
var realmParam = regexp.MustCompile(`(?i)[\s,]realm[ \t]*=`)
