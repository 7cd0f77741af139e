package fakepbx

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// Authentication: the challenges the fake sends and how it judges the
// answers (Config.Realm, ExtraRealms, Algorithms, QOP, ChallengeCode,
// StaleOnce and the strict modes).

// authVerdict is the outcome of checking the answers for one realm.
type authVerdict int

const (
	verdictMissing authVerdict = iota
	verdictInvalid
	verdictStale
	verdictOK
)

func (s *Server) challengeCode(method string) int {
	if s.cfg.ChallengeCode != nil {
		if s.cfg.ChallengeCode(method) == 401 {
			return 401
		}
		return 407
	}
	return DefaultChallengeCode(method)
}

// credentialHeader is the lowercased header that answers method's challenge.
func (s *Server) credentialHeader(method string) string {
	if s.challengeCode(method) == 401 {
		return "authorization"
	}
	return "proxy-authorization"
}

// authenticate checks the credentials of req. It fills the auth fields of
// in.rec and returns the response to send instead of going on: the
// challenge, or with StrictQuoting a 400 for malformed credentials; nil
// when req is authenticated.
func (s *Server) authenticate(req *sip.Request, in *incoming) *sip.Response {
	rec := &in.rec
	code := s.challengeCode(rec.Method)
	credHeader := s.credentialHeader(rec.Method)
	s.mu.Lock()
	defer s.mu.Unlock()

	for _, c := range in.creds {
		if c.header != credHeader {
			s.t.Logf("fakepbx %s: %s: %s of user %q ignored: a %d is answered in %s",
				s.name, rec.Method, c.header, c.params["username"], code, credHeader)
		}
	}
	if s.cfg.StrictQuoting {
		if res := s.malformedCredentials(req, in, credHeader); res != nil {
			return res
		}
	}
	verdicts := make([]authVerdict, len(s.realms))
	anyStale, allOK := false, true
	for i, realm := range s.realms {
		for _, c := range s.judged(in.creds, credHeader, realm) {
			v, why := s.verify(c.params, realm, req.Method.String(), rec.RequestURI, req.Body())
			if v == verdictOK && i == 0 {
				rec.AuthUsername = c.params["username"]
			}
			if why != "" {
				s.t.Logf("fakepbx %s: %s realm %q user %q: %s", s.name, req.Method, realm, c.params["username"], why)
			}
			verdicts[i] = max(verdicts[i], v)
		}
		anyStale = anyStale || verdicts[i] == verdictStale
		allOK = allOK && verdicts[i] == verdictOK
	}
	if allOK {
		rec.Authenticated = true
		return nil
	}

	reason := "Proxy Authentication Required"
	authHeader := "Proxy-Authenticate"
	if code == 401 {
		reason, authHeader = "Unauthorized", "WWW-Authenticate"
	}
	res := s.newResponse(req, code, reason)
	for i, realm := range s.realms {
		for j, alg := range s.algorithms {
			issued := s.now()
			nonce := strconv.FormatInt(issued.Unix(), 10) + "/" + randomHex(16)
			opaque := randomHex(16)
			s.nonces[nonce] = &nonceState{realm: realm, algorithm: alg, opaque: opaque, exempt: anyStale, issued: issued}
			res.AppendHeader(sip.NewHeader(authHeader, s.challengeValue(realm, s.algNames[j], nonce, opaque, verdicts[i] == verdictStale)))
		}
	}
	s.challenges++
	return res
}

// judged returns the credentials in header for realm that are verified:
// every one, or with FirstCredentialOnly only the first, as Asterisk and
// Kamailio judge the first one for their realm and ignore the rest.
func (s *Server) judged(creds []credential, header, realm string) []credential {
	var out []credential
	for _, c := range creds {
		if c.header != header || c.params["realm"] != realm {
			continue
		}
		out = append(out, c)
		if s.cfg.FirstCredentialOnly {
			break
		}
	}
	return out
}

// malformedCredentials returns a 400 when a credential in header does not
// parse or breaks RFC 7616 §3.4's quoting, as Kamailio answers (its auth
// module refuses credentials it cannot parse with 400); nil otherwise.
// s.mu must be held.
func (s *Server) malformedCredentials(req *sip.Request, in *incoming, header string) *sip.Response {
	problems := slices.Clone(in.malformed)
	for _, c := range in.creds {
		if c.header != header {
			continue
		}
		if why := quotingViolation(c); why != "" {
			problems = append(problems, fmt.Sprintf("user %q: %s (RFC 7616 §3.4)", c.params["username"], why))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	s.t.Logf("fakepbx %s: %s: malformed credentials: %s: 400", s.name, req.Method, strings.Join(problems, "; "))
	return s.newResponse(req, 400, "Bad Request (malformed credentials)")
}

// challengeValue formats one challenge like pjsip (Asterisk) does.
func (s *Server) challengeValue(realm, algorithm, nonce, opaque string, stale bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Digest realm=%s,nonce=%s,opaque=%s", quote(realm), quote(nonce), quote(opaque))
	if stale {
		b.WriteString(",stale=true")
	}
	b.WriteString(",algorithm=" + algorithm)
	if len(s.qops) > 0 {
		b.WriteString(",qop=" + quote(strings.Join(s.qops, ",")))
	}
	return b.String()
}

func quote(v string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
}

// verify checks one credential for realm. s.mu must be held. It returns a
// non-empty explanation for every verdict other than verdictOK.
func (s *Server) verify(p map[string]string, realm, method, ruri string, body []byte) (authVerdict, string) {
	user := p["username"]
	if _, ok := p["username"]; !ok {
		return verdictInvalid, "no username"
	}
	if strings.EqualFold(p["userhash"], "true") {
		return verdictInvalid, "userhash is not supported"
	}
	password, ok := s.cfg.Accounts[user]
	if !ok {
		return verdictInvalid, "unknown user"
	}
	n := s.nonces[p["nonce"]]
	if n == nil {
		return verdictInvalid, fmt.Sprintf("nonce %q was not issued by this server", p["nonce"])
	}
	if n.realm != realm {
		return verdictInvalid, fmt.Sprintf("nonce was issued for realm %q", n.realm)
	}
	alg, ok := lookupAlgorithm(p["algorithm"])
	if !ok || alg.name != n.algorithm.name {
		return verdictInvalid, fmt.Sprintf("algorithm %q does not match the nonce's %s", p["algorithm"], n.algorithm.name)
	}
	if p["opaque"] != n.opaque {
		return verdictInvalid, fmt.Sprintf("opaque %q does not match the challenge's %q", p["opaque"], n.opaque)
	}
	if p["uri"] != ruri {
		return verdictInvalid, fmt.Sprintf("uri %q is not the Request-URI %q", p["uri"], ruri)
	}
	qop, cnonce := p["qop"], p["cnonce"]
	var nc uint32
	if len(s.qops) == 0 {
		if qop != "" {
			return verdictInvalid, fmt.Sprintf("qop %q answered but none offered", qop)
		}
	} else {
		if !slices.Contains(s.qops, qop) {
			return verdictInvalid, fmt.Sprintf("qop %q is not one offered (%s)", qop, strings.Join(s.qops, ","))
		}
		ncs := p["nc"]
		v, err := strconv.ParseUint(ncs, 16, 32)
		if len(ncs) != 8 || err != nil {
			return verdictInvalid, fmt.Sprintf("nc %q is not 8 hex digits", ncs)
		}
		nc = uint32(v)
		if cnonce == "" {
			return verdictInvalid, "qop without cnonce"
		}
		if nc <= n.lastNC {
			return verdictInvalid, fmt.Sprintf("nc %08x replayed (last accepted %08x)", nc, n.lastNC)
		}
	}
	if alg.sess && cnonce == "" {
		return verdictInvalid, "-sess algorithm without cnonce"
	}
	want, err := DigestResponse(DigestInput{
		Algorithm: alg.name, Username: user, Realm: realm, Password: password,
		Method: method, URI: ruri, Nonce: p["nonce"], Cnonce: cnonce, NC: nc, QOP: qop, Body: body,
	})
	if err != nil {
		return verdictInvalid, err.Error()
	}
	if p["response"] != want {
		return verdictInvalid, "wrong response (wrong password, method, body or hash input)"
	}
	if qop != "" {
		n.lastNC = nc
	}
	switch {
	case n.stale:
		return verdictStale, "nonce is stale"
	case s.cfg.NonceLifetime > 0 && s.now().Sub(n.issued) > s.cfg.NonceLifetime:
		n.stale = true
		return verdictStale, fmt.Sprintf("nonce is older than its lifetime %v", s.cfg.NonceLifetime)
	case s.cfg.StaleOnce && !n.exempt && !n.used:
		n.used, n.stale = true, true
		return verdictStale, "correct, but refused once as stale (StaleOnce)"
	}
	n.used = true
	return verdictOK, ""
}
