package fakepbx

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"hash"
	"io"
	"strings"
	"testing"

	"github.com/icholy/digest"
)

// RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
func TestDigestResponseRFC7616Vectors(t *testing.T) {
	base := DigestInput{
		Username: "Mufasa",
		Realm:    "http-auth@example.org",
		Password: "Circle of Life",
		Method:   "GET",
		URI:      "/dir/index.html",
		Nonce:    "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
		Cnonce:   "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
		NC:       1,
		QOP:      "auth",
	}
	for alg, want := range map[string]string{
		"MD5":     "8ca523f5e9506fed4657c9700eebdbec",
		"SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
	} {
		in := base
		in.Algorithm = alg
		got, err := DigestResponse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: got %s, want %s", alg, got, want)
		}
	}
}

// RFC 2617 §3.5 (MD5, qop=auth), and the same inputs without qop.
func TestDigestResponseRFC2617Vector(t *testing.T) {
	in := DigestInput{
		Username: "Mufasa",
		Realm:    "testrealm@host.com",
		Password: "Circle Of Life",
		Method:   "GET",
		URI:      "/dir/index.html",
		Nonce:    "dcd98b7102dd2f0e8b11d0f600bfb0c093",
		Cnonce:   "0a4f113b",
		NC:       1,
		QOP:      "auth",
	}
	got, err := DigestResponse(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := "6629fae49393a05397450978507c4ef1"; got != want {
		t.Errorf("qop=auth: got %s, want %s", got, want)
	}
	in.QOP, in.Cnonce, in.NC = "", "", 0
	got, err = DigestResponse(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := "670fd8c2df070c60b045671b8b24ff02"; got != want {
		t.Errorf("no qop: got %s, want %s", got, want)
	}
}

// The non-sess algorithms agree with icholy/digest for every qop.
func TestDigestResponseMatchesIcholy(t *testing.T) {
	body := []byte("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n")
	for _, alg := range []string{"MD5", "SHA-256", "SHA-512-256", "sha-256"} {
		for _, qop := range []string{"", "auth", "auth-int"} {
			chal := &digest.Challenge{Realm: "asterisk", Nonce: "1700000000/abc", Opaque: "op", Algorithm: alg}
			if qop != "" {
				chal.QOP = []string{qop}
			}
			cred, err := digest.Digest(chal, digest.Options{
				Method: "INVITE", URI: "sip:100@127.0.0.2:5060;transport=udp", Username: "alice", Password: "s3cret",
				Count: 7, Cnonce: "c0ffee",
				GetBody: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := DigestResponse(DigestInput{
				Algorithm: alg, Username: "alice", Realm: "asterisk", Password: "s3cret",
				Method: "INVITE", URI: "sip:100@127.0.0.2:5060;transport=udp",
				Nonce: "1700000000/abc", Cnonce: cred.Cnonce, NC: uint32(cred.Nc), QOP: cred.QOP, Body: body,
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != cred.Response {
				t.Errorf("%s qop=%q: got %s, icholy %s", alg, qop, got, cred.Response)
			}
		}
	}
}

// -sess (RFC 7616 §3.4.2) against a direct computation, and against
// icholy/digest fed with the session HA1 through Options.A1.
func TestDigestResponseSess(t *testing.T) {
	for alg, newHash := range map[string]func() hash.Hash{
		"MD5-sess":         md5.New,
		"SHA-256-sess":     sha256.New,
		"SHA-512-256-sess": sha512.New512_256,
	} {
		h := func(s string) string {
			x := newHash()
			x.Write([]byte(s))
			return hex.EncodeToString(x.Sum(nil))
		}
		nonce, cnonce := "1700000000/0123456789abcdef", "deadbeef"
		ha1 := h(h("bob:asterisk:pw") + ":" + nonce + ":" + cnonce)
		ha2 := h("REGISTER:sip:127.0.0.2")
		want := h(ha1 + ":" + nonce + ":00000002:" + cnonce + ":auth:" + ha2)

		got, err := DigestResponse(DigestInput{
			Algorithm: alg, Username: "bob", Realm: "asterisk", Password: "pw",
			Method: "REGISTER", URI: "sip:127.0.0.2", Nonce: nonce, Cnonce: cnonce, NC: 2, QOP: "auth",
		})
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: got %s, want %s", alg, got, want)
		}

		cred, err := digest.Digest(&digest.Challenge{
			Realm: "asterisk", Nonce: nonce, QOP: []string{"auth"},
			Algorithm: strings.TrimSuffix(alg, "-sess"),
		}, digest.Options{Method: "REGISTER", URI: "sip:127.0.0.2", Username: "bob", A1: ha1, Cnonce: cnonce, Count: 2})
		if err != nil {
			t.Fatal(err)
		}
		if got != cred.Response {
			t.Errorf("%s: got %s, icholy with A1 %s", alg, got, cred.Response)
		}

		if _, err := DigestResponse(DigestInput{Algorithm: alg, Nonce: nonce}); err == nil {
			t.Errorf("%s without cnonce: no error", alg)
		}
	}
}

func TestParseDigestParams(t *testing.T) {
	p, err := parseDigestParams("digest  Username=\"a\\\"b\",\tREALM=\"asterisk\" ,nonce=\"1/x\",nc=00000001, qop=auth,uri=\"sip:1@h;transport=tcp\"")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"username": `a"b`, "realm": "asterisk", "nonce": "1/x", "nc": "00000001", "qop": "auth", "uri": "sip:1@h;transport=tcp"}
	for k, v := range want {
		if p[k] != v {
			t.Errorf("%s = %q, want %q", k, p[k], v)
		}
	}
	if len(p) != len(want) {
		t.Errorf("got %d params, want %d: %v", len(p), len(want), p)
	}

	// What icholy/digest produces parses back.
	cred, err := digest.Digest(&digest.Challenge{Realm: "r", Nonce: "n", Opaque: "o", QOP: []string{"auth"}, Algorithm: "SHA-256"},
		digest.Options{Method: "OPTIONS", URI: "sip:x", Username: "u", Password: "p"})
	if err != nil {
		t.Fatal(err)
	}
	p, err = parseDigestParams(cred.String())
	if err != nil {
		t.Fatal(err)
	}
	if p["response"] != cred.Response || p["algorithm"] != "SHA-256" || p["nc"] != "00000001" || p["opaque"] != "o" {
		t.Errorf("icholy credentials parsed as %v", p)
	}

	for _, bad := range []string{
		"Basic dXNlcjpwYXNz",
		"Digestusername=\"a\"",
		"Digest username=\"a\", username=\"b\"",
		"Digest username=\"a",
		"Digest username",
		"Digest username=\"a\" realm=\"b\"",
	} {
		if _, err := parseDigestParams(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
