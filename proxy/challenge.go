package proxy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/icholy/digest"
)

// parseChallenge parses one WWW-Authenticate / Proxy-Authenticate value into
// a digest.Challenge.
//
// icholy/digest's own ParseChallenge is too strict for SIP peers: parameter
// names are matched case-sensitively (Realm= is silently dropped), unquoted
// values may only hold [A-Za-z0-9-] (realm=asterisk.local is an error) and a
// TAB after a comma is an error. This parser follows the auth-param grammar
// of RFC 7235 §2.1 (token or quoted-string values, case-insensitive names,
// any linear whitespace) and fills the library's Challenge type, which the
// library then uses to compute the response.
func parseChallenge(value string) (*digest.Challenge, error) {
	params, err := parseAuthParams(value)
	if err != nil {
		return nil, err
	}
	c := &digest.Challenge{
		Realm:     params["realm"],
		Nonce:     params["nonce"],
		Opaque:    params["opaque"],
		Algorithm: params["algorithm"], // echoed as received (RFC 7616 §3.4)
		Stale:     strings.EqualFold(params["stale"], "true"),
		Charset:   params["charset"],
		Userhash:  strings.EqualFold(params["userhash"], "true"),
	}
	if d, ok := params["domain"]; ok {
		c.Domain = strings.Fields(d)
	}
	for _, q := range strings.Split(params["qop"], ",") {
		if q = strings.ToLower(strings.TrimSpace(q)); q != "" {
			c.QOP = append(c.QOP, q)
		}
	}
	if _, ok := params["realm"]; !ok {
		return nil, errors.New("challenge has no realm")
	}
	if c.Nonce == "" {
		return nil, errors.New("challenge has no nonce")
	}
	return c, nil
}

// parseAuthParams parses `Digest name=value, ...` into its parameters,
// names lowercased, quoted values unquoted. A repeated name is an error.
func parseAuthParams(value string) (map[string]string, error) {
	s := strings.TrimLeft(value, " \t")
	if len(s) < 6 || !strings.EqualFold(s[:6], "Digest") {
		return nil, errors.New("not a Digest challenge")
	}
	s = s[6:]
	if s != "" && s[0] != ' ' && s[0] != '\t' {
		return nil, errors.New("not a Digest challenge")
	}
	params := map[string]string{}
	for {
		s = strings.TrimLeft(s, " \t\r\n,")
		if s == "" {
			break
		}
		i := 0
		for i < len(s) && isTokenChar(s[i]) {
			i++
		}
		if i == 0 {
			return nil, fmt.Errorf("bad character %q in parameter name", s[0])
		}
		name := strings.ToLower(s[:i])
		s = strings.TrimLeft(s[i:], " \t")
		if s == "" || s[0] != '=' {
			return nil, fmt.Errorf("parameter %q has no value", name)
		}
		s = strings.TrimLeft(s[1:], " \t")
		var val string
		if s != "" && s[0] == '"' {
			var b strings.Builder
			j := 1
			closed := false
			for j < len(s) {
				ch := s[j]
				if ch == '\\' && j+1 < len(s) {
					b.WriteByte(s[j+1])
					j += 2
					continue
				}
				if ch == '"' {
					closed = true
					j++
					break
				}
				b.WriteByte(ch)
				j++
			}
			if !closed {
				return nil, fmt.Errorf("parameter %q: unterminated quoted string", name)
			}
			val = b.String()
			s = s[j:]
		} else {
			j := 0
			for j < len(s) && isTokenChar(s[j]) {
				j++
			}
			val = s[:j]
			s = s[j:]
		}
		s = strings.TrimLeft(s, " \t")
		if s != "" && s[0] != ',' {
			return nil, fmt.Errorf("parameter %q: unexpected %q after value", name, s[0])
		}
		if _, dup := params[name]; dup {
			return nil, fmt.Errorf("parameter %q repeated", name)
		}
		params[name] = val
	}
	return params, nil
}

// isTokenChar reports whether b may appear in an RFC 7230 token.
func isTokenChar(b byte) bool {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}
