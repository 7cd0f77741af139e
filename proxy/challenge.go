package proxy

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/authproxy/authproxy/credentials"
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

// answer handles a 401/407. It returns the client transaction of the
// authenticated re-send, or nil when the response must be relayed instead
// (prepareAnswer says when).
func (f *forwarding) answer(res *sip.Response) (sip.ClientTransaction, error) {
	next, err := f.prepareAnswer(res, nil)
	if next == nil || err != nil {
		return nil, err
	}
	return f.send(next)
}

// prepareAnswer decides how to answer a 401/407 and builds the
// authenticated re-send (RFC 3261 §22.2), without our Via: a new
// transaction with CSeq+1 (§8.1.3.5), f.fwd from then on. It returns nil
// when the response must be relayed instead: no usable challenge,
// credentials just rejected (§22.1: never retry them unless the nonce was
// stale), or the challenge budget spent. The caller sends it: a client
// transaction of sipgo's (answer), or the fast lane's socket. The re-send
// is made from sent, the request as the upstream received it without our
// Via, the caller's to edit; nil means a clone of f.fwd.
func (f *forwarding) prepareAnswer(res *sip.Response, sent *sip.Request) (*sip.Request, error) {
	chs, perrs := collectChallenges(res)
	for _, e := range perrs {
		f.log.Debug("ignoring challenge", "error", e)
	}
	f.preemptiveChallenged(chs)
	if len(chs) == 0 {
		f.outcome = "no-challenge"
		return nil, nil
	}
	if f.rounds >= f.rt.maxChallenges {
		f.outcome = "challenge-limit"
		return nil, nil
	}
	if f.tries == nil {
		f.tries = map[string]bool{}
	}
	type chosen struct {
		ch   challenge
		cred credentials.Credential
	}
	var picks []chosen
	picked := map[string]bool{}
	for _, c := range chs {
		k := c.key()
		if picked[k] {
			continue // RFC 8760 §2.4: the topmost supported challenge per realm
		}
		cred := f.rt.creds.Lookup(f.up.Address, c.Realm, f.user)
		if !canAnswer(c, cred) {
			continue
		}
		if f.hop.transport != "TLS" && f.rt.scopedToTLS(cred.Server) {
			// A credential meant for a TLS upstream never crosses a plain
			// transport, even to the same host.
			f.log.Warn("not answering over a plain transport with a credential scoped to a tls upstream", logCredential, cred.String())
			continue
		}
		if f.tries[k] && !c.Stale {
			// We answered this realm and got challenged again without
			// stale=true: the credentials were rejected.
			f.outcome = "rejected"
			f.p.cfg.Observer.AuthRejected(f.up.Name)
			return nil, nil
		}
		picked[k] = true
		picks = append(picks, chosen{c, cred})
	}
	if len(picks) == 0 {
		f.outcome = "no-usable-challenge"
		return nil, nil
	}

	next := sent
	if next == nil {
		next = f.fwd.Clone()
		removeFirst(next, "Via") // ours; the sender puts a new one with a new branch
	}
	removeAll(next, "Authorization")
	removeAll(next, "Proxy-Authorization")
	// §22.1/§8.1.3.5: the re-send is a new transaction with CSeq+1.
	next.CSeq().SeqNo++
	now := time.Now()
	answers := make([]authAnswer, 0, len(f.auth)+len(picks))
	for _, old := range f.auth {
		if !picked[old.key] {
			answers = append(answers, old) // still valid for realms not re-challenged
		}
	}
	for _, pk := range picks {
		nc := f.p.nonces.next(f.nonceServer(), pk.ch.Realm, pk.ch.Nonce, now)
		val, err := computeAuthorization(pk.ch, pk.cred, next.Method.String(), next.Recipient.String(), next.Body(), nc, newCnonce())
		if err != nil {
			// canAnswer vetted the challenge; this is a bug, not an input.
			return nil, fmt.Errorf("compute digest for realm %q: %w", pk.ch.Realm, err)
		}
		answers = append(answers, authAnswer{key: pk.ch.key(), header: pk.ch.authHeaderName(), value: val})
		f.rememberChallenge(pk.ch, pk.cred.Username, next.Method.String(), nc, now)
		f.tries[pk.ch.key()] = true
		f.p.cfg.Observer.ChallengeAnswered(f.up.Name, pk.ch.Realm, pk.ch.Stale)
		f.realms = append(f.realms, pk.ch.Realm)
		f.credIDs = append(f.credIDs, pk.cred.String())
	}
	appendAuth(next, answers)
	f.auth = answers
	f.rounds++
	f.p.cfg.Observer.RequestResent(f.up.Name)
	f.p.cseq.add(f.key, 1, now, f.cseqTTL(nil))
	if f.req.Method == sip.REGISTER && !f.own {
		f.p.saveRegisterOffset(f.key, f.cseqTTL(nil))
	}
	f.fwd = next
	f.log.Debug("answering challenge", logStatus, res.StatusCode, logRealms, f.realms, logCredential, f.credIDs)
	return next, nil
}
