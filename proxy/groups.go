package proxy

import (
	"fmt"
	"slices"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Upstream groups: a route to an ordered list of upstreams, say two
// carriers. A request routed to a group goes to its first upstream the
// client's group may use; when that one is unreachable (every target
// failed: no response, transport error, 503) or answers with a status of
// the group's FailoverOn list, the request is retried on the next one,
// with THAT upstream's credentials. Credentials never cross upstreams: the
// answers computed for the first are dropped before the next is tried,
// and the next one's challenges are answered with a credential looked up
// for its own server identity (failover.go, nextUpstream). An upstream
// the client's group may not use is skipped; one whose every target is
// marked down is tried last.

// UpstreamGroup routes requests to an ordered list of upstreams.
type UpstreamGroup struct {
	// Name identifies the group in logs.
	Name string
	// Upstreams are the names of the upstreams tried, in order.
	Upstreams []string
	// Domains are the Request-URI hosts routed to the group.
	Domains []string
	// Default makes the group take requests whose Request-URI matches no
	// upstream or group (at most one upstream or group is the default).
	Default bool
	// FailoverOn are the final statuses from an upstream that move the
	// request to the group's next upstream. nil means DefaultFailoverOn.
	FailoverOn []int
}

// DefaultFailoverOn are the statuses that move a request to a group's next
// upstream by default: the upstream timed out or failed (408, 500, 502,
// 503, 504: its trouble, not the call's). 4xx and 6xx are answers about
// the call (a 486 Busy, a 603 Decline) that another carrier would only
// repeat, or ring the callee a second time for; list them explicitly for
// carriers that misuse them.
var DefaultFailoverOn = []int{sip.StatusRequestTimeout, sip.StatusInternalServerError, sip.StatusBadGateway,
	sip.StatusServiceUnavailable, sip.StatusGatewayTimeout}

// upstreamGroup is an UpstreamGroup with its upstreams looked up.
type upstreamGroup struct {
	UpstreamGroup
	members []*upstream
	failOn  map[int]bool
}

// failsOverOn reports whether an upstream's final status code moves a
// request to g's next upstream; false for no group.
func (g *upstreamGroup) failsOverOn(code int) bool {
	return g != nil && g.failOn[code]
}

// buildGroups checks the groups against the upstreams and links them.
func buildGroups(gs []UpstreamGroup, ups []*upstream) ([]*upstreamGroup, error) {
	byName := make(map[string]*upstream, len(ups))
	for _, u := range ups {
		byName[u.Name] = u
	}
	out := make([]*upstreamGroup, 0, len(gs))
	for i, g := range gs {
		if len(g.Upstreams) == 0 {
			return nil, fmt.Errorf("upstream group %d (%s): no upstream", i, g.Name)
		}
		if _, clash := byName[g.Name]; clash {
			return nil, fmt.Errorf("upstream group %d (%s): an upstream has the same name", i, g.Name)
		}
		ug := &upstreamGroup{UpstreamGroup: g, failOn: map[int]bool{}}
		for _, name := range g.Upstreams {
			u := byName[name]
			if u == nil {
				return nil, fmt.Errorf("upstream group %d (%s): upstream %q is not configured", i, g.Name, name)
			}
			if slices.Contains(ug.members, u) {
				return nil, fmt.Errorf("upstream group %d (%s): upstream %q is listed twice", i, g.Name, name)
			}
			ug.members = append(ug.members, u)
		}
		codes := g.FailoverOn
		if codes == nil {
			codes = DefaultFailoverOn
		}
		for _, c := range codes {
			if c < 300 || c > 699 || c == sip.StatusUnauthorized || c == sip.StatusProxyAuthRequired {
				return nil, fmt.Errorf("upstream group %d (%s): failover status %d: want a final status 300-699 but 401/407", i, g.Name, c)
			}
			ug.failOn[c] = true
		}
		out = append(out, ug)
	}
	return out, nil
}

// chooseMembers picks, for a request routed to g from a client of group
// cg, the upstreams it tries in order: those cg may use, the ones whose
// every known target is marked down after the others. It returns nil when
// cg may use none.
func (p *Proxy) chooseMembers(g *upstreamGroup, cg *ClientGroup) []*upstream {
	var ok, down []*upstream
	for _, u := range g.members {
		if !cg.allows(u.Name) {
			continue
		}
		if p.upstreamDown(u) {
			down = append(down, u)
			continue
		}
		ok = append(ok, u)
	}
	return append(ok, down...)
}

// upstreamDown reports whether every known target of u is to be avoided
// (marked down, or failed recently); false when none is known.
func (p *Proxy) upstreamDown(u *upstream) bool {
	ts, ok := p.targets.cached(u)
	if !ok {
		return false
	}
	now := time.Now()
	for _, t := range ts {
		if !p.health.avoid(u, t, now) {
			return false
		}
	}
	return true
}
