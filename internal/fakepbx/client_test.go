package fakepbx

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// The digest client of the fake's tests: it reads the fake's challenges
// and writes answers computed with DigestResponse, whose results the
// table tests in digest_test.go pin to published and independently
// computed values.

// testChallenge is one WWW-Authenticate or Proxy-Authenticate value.
type testChallenge struct {
	Realm, Nonce, Opaque, Algorithm string
	QOP                             []string
	Stale                           bool
}

// supportsQOP reports whether the challenge offers qop q.
func (c *testChallenge) supportsQOP(q string) bool {
	for _, v := range c.QOP {
		if v == q {
			return true
		}
	}
	return false
}

// parseTestChallenge parses a challenge value (the auth-param grammar of
// credentials and challenges is the same).
func parseTestChallenge(value string) (*testChallenge, error) {
	p, err := ParseDigestParams(value)
	if err != nil {
		return nil, err
	}
	c := &testChallenge{Realm: p["realm"], Nonce: p["nonce"], Opaque: p["opaque"], Algorithm: p["algorithm"],
		Stale: strings.EqualFold(p["stale"], "true")}
	for _, q := range strings.Split(p["qop"], ",") {
		if q = strings.TrimSpace(q); q != "" {
			c.QOP = append(c.QOP, q)
		}
	}
	return c, nil
}

// testCredentials is one Authorization or Proxy-Authorization value.
type testCredentials struct {
	Username, Realm, Nonce, URI, Response, Algorithm, Cnonce, Opaque, QOP string
	Nc                                                                    int
}

// String formats the credentials as RFC 7616 §3.4 wants them quoted.
func (c *testCredentials) String() string {
	q := func(v string) string { return quote(v) }
	parts := []string{"username=" + q(c.Username), "realm=" + q(c.Realm), "nonce=" + q(c.Nonce), "uri=" + q(c.URI)}
	if c.Algorithm != "" {
		parts = append(parts, "algorithm="+c.Algorithm)
	}
	if c.QOP != "" {
		parts = append(parts, "cnonce="+q(c.Cnonce))
	}
	if c.Opaque != "" {
		parts = append(parts, "opaque="+q(c.Opaque))
	}
	if c.QOP != "" {
		parts = append(parts, "qop="+c.QOP, fmt.Sprintf("nc=%08x", c.Nc))
	}
	parts = append(parts, "response="+q(c.Response))
	return "Digest " + strings.Join(parts, ", ")
}

// testCnonce is the cnonce of every test answer.
const testCnonce = "0a4f113b"

// digestAnswer answers ch for a request with method, uri and body: qop
// auth when offered, else auth-int, else none (RFC 2069).
func digestAnswer(t testing.TB, ch *testChallenge, method, uri string, body []byte, user, pass string, nc int) *testCredentials {
	t.Helper()
	qop := ""
	switch {
	case ch.supportsQOP("auth"):
		qop = "auth"
	case ch.supportsQOP("auth-int"):
		qop = "auth-int"
	}
	return digestAnswerQOP(t, ch, qop, method, uri, body, user, pass, nc)
}

// digestAnswerQOP is digestAnswer with the qop chosen by the caller.
func digestAnswerQOP(t testing.TB, ch *testChallenge, qop, method, uri string, body []byte, user, pass string, nc int) *testCredentials {
	t.Helper()
	c := &testCredentials{Username: user, Realm: ch.Realm, Nonce: ch.Nonce, URI: uri, Algorithm: ch.Algorithm, Opaque: ch.Opaque, QOP: qop}
	in := DigestInput{Algorithm: ch.Algorithm, Username: user, Realm: ch.Realm, Password: pass, Method: method, URI: uri, Nonce: ch.Nonce, QOP: qop, Body: body}
	if qop != "" || strings.HasSuffix(strings.ToLower(ch.Algorithm), "-sess") {
		c.Cnonce, c.Nc = testCnonce, nc
		in.Cnonce, in.NC = testCnonce, uint32(nc)
	}
	var err error
	if c.Response, err = DigestResponse(in); err != nil {
		t.Fatal(err)
	}
	return c
}

// authHeaderFor is the header answering a challenge of status code.
func authHeaderFor(code int) string {
	if code == 401 {
		return "Authorization"
	}
	return "Proxy-Authorization"
}

// answerHeader is the header carrying c in answer to a code challenge.
func answerHeader(code int, c *testCredentials) sip.Header {
	return sip.NewHeader(authHeaderFor(code), c.String())
}
