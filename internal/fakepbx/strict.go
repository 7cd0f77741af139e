package fakepbx

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// The strict modes (Config.Strict and the knobs it turns on): what real
// servers refuse that a lenient fake would let through.

// Defaults of the strict modes under Config.Strict.
const (
	// StrictNonceLifetime is Asterisk's res_pjsip nonce_lifetime default
	// (Kamailio's auth module uses 300 s).
	StrictNonceLifetime = 32 * time.Second
	// StrictMinExpires is Asterisk's minimum_expiration default.
	StrictMinExpires = 60
	// StrictMaxExpires caps a registration at an hour, a common
	// maximum_expiration (Asterisk's default is 7200).
	StrictMaxExpires = 3600
	// defaultExpires is granted to a REGISTER that names none (Asterisk's
	// default_expiration; RFC 3261 §10.2.1.1 suggests it too).
	defaultExpires = 3600
)

// DefaultChallengeCode is the fake's challenge without Strict: 401 for
// REGISTER, 407 for every other method, as Kamailio challenges a
// registrar's requests (www_challenge) and a proxy's (proxy_challenge).
func DefaultChallengeCode(method string) int {
	if method == string(sip.REGISTER) {
		return 401
	}
	return 407
}

// Always401 is a Config.ChallengeCode challenging every method with 401
// and WWW-Authenticate, as Asterisk's PJSIP does (for INVITE too).
func Always401(string) int { return 401 }

// applyStrict fills c's strict knobs from Strict; knobs set explicitly are
// kept.
func (c *Config) applyStrict() {
	if !c.Strict {
		return
	}
	c.FirstCredentialOnly, c.StrictQuoting, c.CheckDialogTarget, c.ListAllBindings = true, true, true, true
	if c.NonceLifetime == 0 {
		c.NonceLifetime = StrictNonceLifetime
	}
	if c.MinExpires == 0 {
		c.MinExpires = StrictMinExpires
	}
	if c.MaxExpires == 0 {
		c.MaxExpires = StrictMaxExpires
	}
	if c.ChallengeCode == nil {
		c.ChallengeCode = Always401
	}
}

// validateStrict checks the strict knobs.
func (c *Config) validateStrict() error {
	switch {
	case c.NonceLifetime < 0:
		return fmt.Errorf("NonceLifetime %v is negative", c.NonceLifetime)
	case c.MinExpires < 0 || c.MaxExpires < 0:
		return fmt.Errorf("MinExpires %d / MaxExpires %d: negative", c.MinExpires, c.MaxExpires)
	case c.MaxExpires > 0 && c.MinExpires > c.MaxExpires:
		return fmt.Errorf("MinExpires %d is above MaxExpires %d", c.MinExpires, c.MaxExpires)
	}
	return nil
}

// ManualClock is a clock for Config.Clock that moves only when a test
// advances it, so that nonce expiry needs no waiting.
type ManualClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewManualClock returns a ManualClock reading start.
func NewManualClock(start time.Time) *ManualClock { return &ManualClock{now: start} }

// Now is the clock's time; pass it as Config.Clock.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// now is the fake's clock.
func (s *Server) now() time.Time {
	if s.cfg.Clock != nil {
		return s.cfg.Clock()
	}
	return time.Now()
}

// RFC 7616 §3.4: which credential parameters are quoted-strings and which
// are tokens. A parameter named in neither (e.g. userhash, an extension)
// may be either.
var (
	quotedParams   = []string{"username", "realm", "nonce", "uri", "response", "cnonce", "opaque"}
	unquotedParams = []string{"algorithm", "qop", "nc"}
)

// quotingViolation returns what is wrong with the quoting of c's
// parameters (RFC 7616 §3.4), "" when nothing is.
func quotingViolation(c credential) string {
	var bad []string
	for _, k := range quotedParams {
		if _, ok := c.params[k]; ok && !c.quoted[k] {
			bad = append(bad, k+" unquoted")
		}
	}
	for _, k := range unquotedParams {
		if _, ok := c.params[k]; ok && c.quoted[k] {
			bad = append(bad, k+" quoted")
		}
	}
	return strings.Join(bad, ", ")
}

// registerExpiry is the registrar's decision on one REGISTER's Contacts.
type registerExpiry struct {
	granted  []int // per Contact of the request (wildcard included), in order
	tooBrief int   // a non-zero requested expiry below MinExpires, 0 if none
}

// decideExpires applies the registrar's bounds to what req asks for each
// Contact: its expires parameter, else the Expires header, else
// defaultExpires (RFC 3261 §10.3 step 7). 0 removes and is never too
// brief.
func (s *Server) decideExpires(req *sip.Request) registerExpiry {
	requested := defaultExpires
	if h := req.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Value())); err == nil {
			requested = n
		}
	}
	var d registerExpiry
	for _, h := range req.GetHeaders("Contact") {
		exp := requested
		if c, ok := h.(*sip.ContactHeader); ok {
			if v, ok := c.Params.Get("expires"); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					exp = n
				}
			}
		}
		if exp > 0 && exp < s.cfg.MinExpires && d.tooBrief == 0 {
			d.tooBrief = exp
		}
		if s.cfg.MaxExpires > 0 && exp > s.cfg.MaxExpires {
			exp = s.cfg.MaxExpires
		}
		d.granted = append(d.granted, exp)
	}
	return d
}

// intervalTooBrief is the registrar's 423 (RFC 3261 §10.3 step 7).
func (s *Server) intervalTooBrief(req *sip.Request) *sip.Response {
	res := s.newResponse(req, 423, "Interval Too Brief")
	res.AppendHeader(sip.NewHeader("Min-Expires", strconv.Itoa(s.cfg.MinExpires)))
	return res
}

// dialogTargetProblem checks that a request in dialog c was sent where the
// dialog says (RFC 3261 §12.2.1.1): its Request-URI is the Contact the UA
// gave the dialog, no Route is left but one naming the fake (which a UAS
// removes, §16.4), and it came from the adjacent hop of the route set. It
// returns the problem, "" when there is none. s.mu must be held.
func (s *Server) dialogTargetProblemLocked(req *sip.Request, in *incoming, c *callState) string {
	r := in.rec
	var ruri sip.Uri
	if err := sip.ParseUri(r.RequestURI, &ruri); err != nil {
		return fmt.Sprintf("%s (CSeq %d) Request-URI %q does not parse: %v", r.Method, r.CSeq, r.RequestURI, err)
	}
	want := s.contact(c.transport).Address
	var hop *sip.Uri
	if len(c.routes) > 0 {
		hop = &c.routes[0]
	}
	if !sameURI(ruri, want) {
		return fmt.Sprintf("%s (CSeq %d) Request-URI %s is not the dialog's Contact %s", r.Method, r.CSeq, r.RequestURI, want.String())
	}
	routes := routeURIs(req)
	if len(routes) > 0 && s.namesFake(routes[0]) {
		routes = routes[1:]
	}
	if len(routes) > 0 {
		return fmt.Sprintf("%s (CSeq %d) carries Route %s: it should have been sent there", r.Method, r.CSeq, routes[0].String())
	}
	if hop != nil && net.ParseIP(strings.Trim(hop.Host, "[]")) != nil {
		host, _, _ := net.SplitHostPort(r.Source)
		if !strings.EqualFold(host, strings.Trim(hop.Host, "[]")) {
			return fmt.Sprintf("%s (CSeq %d) came from %s, not through the route set's adjacent hop %s", r.Method, r.CSeq, r.Source, hop.String())
		}
	}
	return ""
}

// routeURIs returns the URIs of every Route header value of req, in order.
func routeURIs(req *sip.Request) []sip.Uri {
	var out []sip.Uri
	for _, h := range req.GetHeaders("Route") {
		if rh, ok := h.(*sip.RouteHeader); ok {
			out = append(out, rh.Address)
			continue
		}
		for _, v := range strings.Split(h.Value(), ",") {
			var u sip.Uri
			if sip.ParseUri(strings.Trim(strings.TrimSpace(v), "<>"), &u) == nil {
				out = append(out, u)
			}
		}
	}
	return out
}

// namesFake reports whether u addresses the fake itself.
func (s *Server) namesFake(u sip.Uri) bool {
	port := u.Port
	if port == 0 {
		port = defaultSIPPort
	}
	return strings.Trim(u.Host, "[]") == s.cfg.Host && port == s.port
}

// sameURI compares two SIP URIs as RFC 3261 §19.1.4 does for what matters
// to a dialog's target: scheme, user (case-sensitive), host
// (case-insensitive), port (5060 when absent) and the transport parameter
// when both carry one.
func sameURI(a, b sip.Uri) bool {
	port := func(u sip.Uri) int {
		if u.Port == 0 {
			return defaultSIPPort
		}
		return u.Port
	}
	if !strings.EqualFold(a.Scheme, b.Scheme) || a.User != b.User ||
		!strings.EqualFold(strings.Trim(a.Host, "[]"), strings.Trim(b.Host, "[]")) || port(a) != port(b) {
		return false
	}
	ta, okA := uriParam(a, "transport")
	tb, okB := uriParam(b, "transport")
	return !okA || !okB || strings.EqualFold(ta, tb)
}
