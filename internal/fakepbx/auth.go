package fakepbx

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

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
	if method == string(sip.REGISTER) {
		return 401
	}
	return 407
}

// credentialHeader is the lowercased header that answers method's challenge.
func (s *Server) credentialHeader(method string) string {
	if s.challengeCode(method) == 401 {
		return "authorization"
	}
	return "proxy-authorization"
}

// authenticate checks the credentials of req. It fills the auth fields of
// in.rec and returns the challenge to send, or nil when req is authenticated.
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
	verdicts := make([]authVerdict, len(s.realms))
	anyStale, allOK := false, true
	for i, realm := range s.realms {
		for _, c := range in.creds {
			if c.header != credHeader || c.params["realm"] != realm {
				continue
			}
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
			nonce := strconv.FormatInt(time.Now().Unix(), 10) + "/" + randomHex(16)
			opaque := randomHex(16)
			s.nonces[nonce] = &nonceState{realm: realm, algorithm: alg, opaque: opaque, exempt: anyStale}
			res.AppendHeader(sip.NewHeader(authHeader, s.challengeValue(realm, s.algNames[j], nonce, opaque, verdicts[i] == verdictStale)))
		}
	}
	s.challenges++
	return res
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
	case s.cfg.StaleOnce && !n.exempt && !n.used:
		n.used, n.stale = true, true
		return verdictStale, "correct, but refused once as stale (StaleOnce)"
	}
	n.used = true
	return verdictOK, ""
}
