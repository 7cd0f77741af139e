package proxy

import (
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"
	"testing"
	"time"

	"github.com/icholy/digest"

	"github.com/authproxy/authproxy/credentials"
)

// RFC 7616 §3.9.1 example (HTTP, but the arithmetic is the same for SIP).
const (
	rfcUser   = "Mufasa"
	rfcPass   = "Circle of Life"
	rfcRealm  = "http-auth@example.org"
	rfcNonce  = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
	rfcOpaque = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
	rfcCnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
	rfcURI    = "/dir/index.html"
)

func TestComputeAuthorization_RFC7616Vectors(t *testing.T) {
	for _, tc := range []struct {
		alg, want string
	}{
		{"MD5", "8ca523f5e9506fed4657c9700eebdbec"},
		{"SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			ch := challenge{Challenge: &digest.Challenge{Realm: rfcRealm, Nonce: rfcNonce, Opaque: rfcOpaque, Algorithm: tc.alg, QOP: []string{"auth", "auth-int"}}}
			cred := credentials.Credential{Username: rfcUser, Password: credentials.NewSecret(rfcPass)}
			got, err := computeAuthorization(ch, cred, "GET", rfcURI, nil, 1, rfcCnonce)
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := digest.ParseCredentials(got)
			if err != nil {
				t.Fatalf("parse %q: %v", got, err)
			}
			if parsed.Response != tc.want {
				t.Fatalf("response = %s, want %s", parsed.Response, tc.want)
			}
			if parsed.QOP != "auth" || parsed.Nc != 1 || parsed.Cnonce != rfcCnonce || parsed.Opaque != rfcOpaque {
				t.Fatalf("parameters wrong: %+v", parsed)
			}
		})
	}
}

// reference computes a digest response straight from RFC 7616 §3.4.1-3.4.3,
// independently of icholy/digest, so that -sess, auth-int and HA1 inputs
// are checked against the formulas and not against the code under test.
func reference(alg, user, realm, pass, method, uri, nonce, cnonce, qop string, nc int, body []byte) string {
	base := strings.TrimSuffix(strings.ToUpper(alg), "-SESS")
	h := func() hash.Hash {
		switch base {
		case "SHA-256":
			return sha256.New()
		case "SHA-512-256":
			return sha512.New512_256()
		}
		return md5.New()
	}
	H := func(s string) string { x := h(); x.Write([]byte(s)); return hex.EncodeToString(x.Sum(nil)) }
	ha1 := H(user + ":" + realm + ":" + pass)
	if strings.HasSuffix(strings.ToUpper(alg), "-SESS") {
		ha1 = H(ha1 + ":" + nonce + ":" + cnonce)
	}
	a2 := method + ":" + uri
	if qop == "auth-int" {
		a2 += ":" + H(string(body))
	}
	if qop == "" {
		return H(ha1 + ":" + nonce + ":" + H(a2))
	}
	return H(fmt.Sprintf("%s:%s:%08x:%s:%s:%s", ha1, nonce, nc, cnonce, qop, H(a2)))
}

func TestComputeAuthorization_Algorithms(t *testing.T) {
	const (
		user, pass, realm = "alice", "s3cret-pw", "asterisk"
		method, uri       = "MESSAGE", "sip:1002@pbx-a.example.com;transport=udp"
		nonce, cnonce     = "abc123nonce", "0123456789abcdef"
	)
	body := []byte("hello, world\r\n")
	h := func(alg, s string) string {
		var x hash.Hash
		switch alg {
		case "SHA-256":
			x = sha256.New()
		case "SHA-512-256":
			x = sha512.New512_256()
		default:
			x = md5.New()
		}
		x.Write([]byte(s))
		return hex.EncodeToString(x.Sum(nil))
	}
	for _, alg := range []string{"", "MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess", "md5", "sha-256-SESS"} {
		for _, qops := range [][]string{{"auth"}, {"auth-int"}, {"auth-int", "auth"}, nil} {
			for _, useHA1 := range []bool{false, true} {
				name := fmt.Sprintf("%s/%v/ha1=%v", alg, qops, useHA1)
				t.Run(name, func(t *testing.T) {
					base, sess, _ := splitAlgorithm(alg)
					ch := challenge{Challenge: &digest.Challenge{Realm: realm, Nonce: nonce, Algorithm: strings.ToUpper(alg), QOP: qops}, proxy: true}
					cred := credentials.Credential{Username: user, Password: credentials.NewSecret(pass)}
					if useHA1 {
						cred = credentials.Credential{Username: user, HA1: map[string]credentials.Secret{
							base: credentials.NewSecret(h(base, user+":"+realm+":"+pass)),
						}}
					}
					if sess && len(qops) == 0 {
						if canAnswer(ch, cred) {
							t.Fatal("canAnswer accepted -sess without qop")
						}
						return
					}
					if !canAnswer(ch, cred) {
						t.Fatal("canAnswer refused a supported challenge")
					}
					got, err := computeAuthorization(ch, cred, method, uri, body, 3, cnonce)
					if err != nil {
						t.Fatal(err)
					}
					p, err := digest.ParseCredentials(got)
					if err != nil {
						t.Fatalf("parse %q: %v", got, err)
					}
					qop := ""
					if len(qops) > 0 {
						qop = "auth"
						if len(qops) == 1 && qops[0] == "auth-int" {
							qop = "auth-int"
						}
					}
					want := reference(alg, user, realm, pass, method, uri, nonce, cnonce, qop, 3, body)
					if p.Response != want {
						t.Fatalf("response %s, want %s (header %s)", p.Response, want, got)
					}
					if p.URI != uri || p.Username != user || p.Realm != realm || p.QOP != qop {
						t.Fatalf("parameters wrong: %+v", p)
					}
					if !strings.EqualFold(p.Algorithm, alg) {
						t.Fatalf("algorithm echoed as %q, want %q", p.Algorithm, alg)
					}
					if strings.Contains(got, pass) {
						t.Fatal("header contains the password")
					}
				})
			}
		}
	}
}

func TestCanAnswer(t *testing.T) {
	pw := credentials.Credential{Username: "u", Password: credentials.NewSecret("p")}
	md5only := credentials.Credential{Username: "u", HA1: map[string]credentials.Secret{"MD5": credentials.NewSecret("00")}}
	anon := credentials.Credential{Username: "anonymous", Anonymous: true}
	for _, tc := range []struct {
		name string
		alg  string
		qop  []string
		cred credentials.Credential
		want bool
	}{
		{"md5 password", "MD5", []string{"auth"}, pw, true},
		{"unknown algorithm", "SHA-1", []string{"auth"}, pw, false},
		{"sha-512 (not SIP)", "SHA-512", []string{"auth"}, pw, false},
		{"unknown qop only", "MD5", []string{"auth-conf"}, pw, false},
		{"ha1 for other algorithm", "SHA-256", []string{"auth"}, md5only, false},
		{"ha1 for md5-sess", "MD5-sess", []string{"auth"}, md5only, true},
		{"anonymous", "MD5", []string{"auth"}, anon, true},
		{"no secret", "MD5", nil, credentials.Credential{Username: "u"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := challenge{Challenge: &digest.Challenge{Realm: "r", Nonce: "n", Algorithm: tc.alg, QOP: tc.qop}}
			if got := canAnswer(ch, tc.cred); got != tc.want {
				t.Fatalf("canAnswer = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNonceCounter(t *testing.T) {
	nc := newNonceCounter()
	now := time.Now()
	for want := 1; want <= 3; want++ {
		if got := nc.next("a:5060", "asterisk", "n1", now); got != want {
			t.Fatalf("nc = %d, want %d", got, want)
		}
	}
	if got := nc.next("b:5060", "asterisk", "n1", now); got != 1 {
		t.Fatalf("same nonce on another server: nc = %d, want 1", got)
	}
	nc.sweep(now.Add(nonceTTL + time.Second))
	if got := nc.next("a:5060", "asterisk", "n1", now); got != 1 {
		t.Fatalf("after expiry nc = %d, want 1", got)
	}
}

// TestAppendQuoted: a quoted-string (RFC 3261 §25.1) unquotes to the
// same bytes: '"', '\\' and control characters as quoted-pairs, bytes
// that are not UTF-8 as they are (not Go's \xde).
func TestAppendQuoted(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"sip:1002@pbx", `"sip:1002@pbx"`},
		{`q"uote\`, `"q\"uote\\"`},
		{"pbx-a.example\xdecom", "\"pbx-a.example\xdecom\""},
		{"r\u00e9alm", "\"r\u00e9alm\""},
		{"a\tb\x01c\x7f", "\"a\tb\\\x01c\\\x7f\""},
	} {
		if got := string(appendQuoted(nil, tc.in)); got != tc.want {
			t.Errorf("appendQuoted(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestFormatCredentials: for printable values, the one-buffer formatter
// writes what the library's String does.
func TestFormatCredentials(t *testing.T) {
	for _, c := range []digest.Credentials{
		{Username: "alice", Realm: "asterisk", Nonce: "n0", URI: "sip:1002@pbx", Response: "abc", Algorithm: "MD5", Cnonce: "c0", Opaque: "op", QOP: "auth", Nc: 0x1a},
		{Username: `q"uote\`, Realm: "r\u00e9alm", Nonce: "n", URI: "sip:x", Response: "r", Userhash: true},
		{Username: "u", Realm: "", Nonce: "n", URI: "sip:x", Response: "r", Algorithm: "SHA-256", QOP: "auth-int", Nc: 0xffffffff},
	} {
		if got, want := formatCredentials(&c), c.String(); got != want {
			t.Errorf("formatCredentials = %s\nwant %s", got, want)
		}
	}
}

// FuzzFastDigestMatchesLibrary checks the hot-path digest computation
// against icholy/digest for any challenge and credential it can answer.
func FuzzFastDigestMatchesLibrary(f *testing.F) {
	f.Add("MD5", "auth", false, "alice", "pa:ss\"w", "asterisk", "n0nce", "op", "MESSAGE", "sip:bob@pbx", 1, "0a1b2c3d4e5f6a7b")
	f.Add("SHA-256-sess", "auth", true, "bob", "x", "realm with space", "abc", "", "INVITE", "sip:1002@10.0.0.5;transport=udp", 7, "cn")
	f.Add("", "", false, "anonymous", "", "r", "n", "", "REGISTER", "sip:pbx.example", 1, "")
	f.Add("sha-512-256", "auth", false, "u", "p", "R", "N", "O", "OPTIONS", "sip:x", 4096, "c")
	f.Fuzz(func(t *testing.T, alg, qop string, useHA1 bool, user, pass, realm, nonce, opaque, method, uri string, nc int, cnonce string) {
		if qop != "" && qop != "auth" {
			qop = "auth"
		}
		var qops []string
		if qop != "" {
			qops = []string{qop}
		}
		base, _, ok := splitAlgorithm(alg)
		if !ok || nc < 1 {
			return // authproxy counts from 1
		}
		if cnonce == "" {
			cnonce = "c" // authproxy always sends newCnonce(); the library makes one up for ""
		}
		ch := challenge{Challenge: &digest.Challenge{Realm: realm, Nonce: nonce, Opaque: opaque, Algorithm: alg, QOP: qops}, proxy: true}
		cred := credentials.Credential{Username: user, Password: credentials.NewSecret(pass)}
		if pass == "" {
			cred = credentials.Credential{Username: "anonymous", Anonymous: true}
		}
		if useHA1 {
			cred = credentials.Credential{Username: user, HA1: map[string]credentials.Secret{
				base: credentials.NewSecret(strings.ToUpper(hashJoin(newHash(base), user, realm, pass))),
			}}
		}
		if !canAnswer(ch, cred) {
			return
		}
		fast, err := computeAuthorization(ch, cred, method, uri, nil, nc, cnonce)
		if err != nil {
			t.Fatal(err)
		}
		lib, err := libAuthorization(ch, cred, method, uri, nil, nc, cnonce)
		if err != nil {
			return // the library refuses some inputs the fast path answers
		}
		if fast != lib {
			t.Fatalf("fast path\n%s\nlibrary\n%s", fast, lib)
		}
	})
}
