package fakepbx

import (
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// This file is the fake's own digest implementation. It deliberately does
// not use github.com/icholy/digest, so that the fake cross-checks the
// proxy's use of that library instead of agreeing with it by construction.

// DigestInput is everything needed to compute a digest "response" value
// (RFC 7616 §3.4.1, RFC 2617 §3.2.2).
type DigestInput struct {
	// Algorithm is MD5, MD5-sess, SHA-256, SHA-256-sess, SHA-512-256 or
	// SHA-512-256-sess, matched case-insensitively. Empty means MD5.
	Algorithm string
	Username  string
	Realm     string
	Password  string
	Method    string
	URI       string // the digest-uri, exactly as sent in the uri parameter
	Nonce     string
	Cnonce    string // required with a qop and with every -sess algorithm
	NC        uint32 // nonce count; written as 8 lowercase hex digits
	// QOP is "" (RFC 2069 style, no nc/cnonce in the hash), "auth" or
	// "auth-int".
	QOP  string
	Body []byte // the entity body, hashed for auth-int only
}

// digestAlgorithm describes one supported algorithm.
type digestAlgorithm struct {
	name    string // canonical spelling
	newHash func() hash.Hash
	sess    bool
}

// lookupAlgorithm resolves an algorithm name case-insensitively; "" is MD5.
func lookupAlgorithm(name string) (digestAlgorithm, bool) {
	switch strings.ToUpper(name) {
	case "", "MD5":
		return digestAlgorithm{"MD5", md5.New, false}, true
	case "MD5-SESS":
		return digestAlgorithm{"MD5-sess", md5.New, true}, true
	case "SHA-256":
		return digestAlgorithm{"SHA-256", sha256.New, false}, true
	case "SHA-256-SESS":
		return digestAlgorithm{"SHA-256-sess", sha256.New, true}, true
	case "SHA-512-256":
		return digestAlgorithm{"SHA-512-256", sha512.New512_256, false}, true
	case "SHA-512-256-SESS":
		return digestAlgorithm{"SHA-512-256-sess", sha512.New512_256, true}, true
	}
	return digestAlgorithm{}, false
}

// hexHash returns the lowercase hex digest of the parts joined by ':'.
func hexHash(newHash func() hash.Hash, parts ...string) string {
	h := newHash()
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{':'})
		}
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// DigestResponse computes the lowercase hex "response" parameter:
//
//	HA1 = H(username:realm:password)
//	HA1 = H(H(username:realm:password):nonce:cnonce)        for -sess (RFC 7616 §3.4.2)
//	HA2 = H(method:uri)                                      qop "" or auth
//	HA2 = H(method:uri:H(body))                              qop auth-int
//	response = H(HA1:nonce:nc:cnonce:qop:HA2)                with a qop
//	response = H(HA1:nonce:HA2)                              without (RFC 2069)
func DigestResponse(in DigestInput) (string, error) {
	alg, ok := lookupAlgorithm(in.Algorithm)
	if !ok {
		return "", fmt.Errorf("unsupported digest algorithm %q", in.Algorithm)
	}
	ha1 := hexHash(alg.newHash, in.Username, in.Realm, in.Password)
	if alg.sess {
		if in.Cnonce == "" {
			return "", errors.New("-sess algorithm without cnonce")
		}
		ha1 = hexHash(alg.newHash, ha1, in.Nonce, in.Cnonce)
	}
	var ha2 string
	switch in.QOP {
	case "", "auth":
		ha2 = hexHash(alg.newHash, in.Method, in.URI)
	case "auth-int":
		h := alg.newHash()
		h.Write(in.Body)
		ha2 = hexHash(alg.newHash, in.Method, in.URI, hex.EncodeToString(h.Sum(nil)))
	default:
		return "", fmt.Errorf("unsupported qop %q", in.QOP)
	}
	if in.QOP == "" {
		return hexHash(alg.newHash, ha1, in.Nonce, ha2), nil
	}
	if in.Cnonce == "" {
		return "", errors.New("qop without cnonce")
	}
	return hexHash(alg.newHash, ha1, in.Nonce, fmt.Sprintf("%08x", in.NC), in.Cnonce, in.QOP, ha2), nil
}

// ParseDigestParams parses a credentials value `Digest k=v, k="v", ...`
// byte for byte (a quoted value keeps bytes that are not UTF-8).
// Unlike icholy/digest's parser it matches parameter names
// case-insensitively (keys are returned lowercased), accepts any linear
// whitespace, token or quoted-string values (with backslash escapes) and
// rejects duplicated parameters.
func ParseDigestParams(value string) (map[string]string, error) {
	p, _, err := parseDigestParamsQuoting(value)
	return p, err
}

// parseDigestParamsQuoting is ParseDigestParams that also tells which
// parameters had a quoted-string value.
func parseDigestParamsQuoting(value string) (map[string]string, map[string]bool, error) {
	s := strings.TrimLeft(value, " \t\r\n")
	const scheme = "digest"
	if len(s) < len(scheme) || !strings.EqualFold(s[:len(scheme)], scheme) {
		return nil, nil, errors.New("not a Digest credential")
	}
	s = s[len(scheme):]
	if s == "" || !isLWS(s[0]) {
		return nil, nil, errors.New("not a Digest credential")
	}
	params, quoted := map[string]string{}, map[string]bool{}
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		if s == "" {
			break
		}
		i := 0
		for i < len(s) && isTokenChar(s[i]) {
			i++
		}
		if i == 0 {
			return nil, nil, fmt.Errorf("unexpected %q where a parameter name was expected", s[0])
		}
		name := strings.ToLower(s[:i])
		s = strings.TrimLeft(s[i:], " \t\r\n")
		if s == "" || s[0] != '=' {
			return nil, nil, fmt.Errorf("parameter %q has no value", name)
		}
		s = strings.TrimLeft(s[1:], " \t\r\n")
		var val string
		isQuoted := s != "" && s[0] == '"'
		if isQuoted {
			var b strings.Builder
			j, closed := 1, false
			for j < len(s) {
				c := s[j]
				if c == '\\' && j+1 < len(s) {
					b.WriteByte(s[j+1])
					j += 2
					continue
				}
				j++
				if c == '"' {
					closed = true
					break
				}
				b.WriteByte(c)
			}
			if !closed {
				return nil, nil, fmt.Errorf("parameter %q: unterminated quoted string", name)
			}
			val, s = b.String(), s[j:]
		} else {
			j := 0
			for j < len(s) && s[j] != ',' && !isLWS(s[j]) {
				j++
			}
			if j == 0 {
				return nil, nil, fmt.Errorf("parameter %q has an empty value", name)
			}
			val, s = s[:j], s[j:]
		}
		if _, dup := params[name]; dup {
			return nil, nil, fmt.Errorf("parameter %q repeated", name)
		}
		params[name] = val
		quoted[name] = isQuoted
		s = strings.TrimLeft(s, " \t\r\n")
		if s == "" {
			break
		}
		if s[0] != ',' {
			return nil, nil, fmt.Errorf("expected ',' after parameter %q", name)
		}
		s = s[1:]
	}
	return params, quoted, nil
}

func isLWS(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// isTokenChar reports whether c is a token character (RFC 3261 §25.1).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-.!%*_+`'~", c) >= 0
}
