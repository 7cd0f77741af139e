package proxy

import (
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// isOwnURI reports whether u addresses this proxy: its host is one of our
// bound or advertised hosts and its port (default 5060) one of our ports.
func (p *Proxy) isOwnURI(u sip.Uri) bool {
	host := strings.ToLower(strings.Trim(u.Host, "[]"))
	port := u.Port
	if port == 0 {
		port = 5060
	}
	for _, l := range p.listeners {
		if l.port != port {
			continue
		}
		if host == strings.ToLower(l.advertise) {
			return true
		}
		if ip := net.ParseIP(host); ip != nil && (ip.Equal(l.ip) || (l.ip.IsUnspecified() && ip.IsLoopback())) {
			return true
		}
	}
	return false
}

// isOwnVia reports whether v was put there by this proxy (RFC 3261 §16.3
// step 4 loop detection: our sent-by in a request we receive).
func (p *Proxy) isOwnVia(v *sip.ViaHeader) bool {
	port := v.Port
	if port == 0 {
		port = 5060
	}
	host := strings.ToLower(strings.Trim(v.Host, "[]"))
	for _, l := range p.listeners {
		if l.port == port && strings.EqualFold(l.transport, v.Transport) &&
			(host == strings.ToLower(l.advertise) || host == l.ip.String()) {
			return true
		}
	}
	return false
}

// routing is the part of the configuration a reload swaps as one: the
// upstreams and the credentials that answer them. A request reads it once
// when it starts and keeps it to the end, so a reload never changes the
// rules under a request in flight.
type routing struct {
	upstreams     []*upstream
	groups        []*upstreamGroup
	creds         Credentials
	maxChallenges int
	clients       []ClientGroup
	names         routeNames
	// sources finds the upstreams a request comes from (sources.go); it is
	// rebuilt whenever a watched name resolves to other addresses.
	sources atomic.Pointer[sourceIndex]
}

// matchUpstream returns the configured upstream u names, if any: by address
// host (and port, when u carries one and two upstreams share the host) or by
// one of its domains. Never an arbitrary host.
func (rt *routing) matchUpstream(u sip.Uri) *upstream {
	host := strings.ToLower(strings.Trim(u.Host, "[]"))
	for _, up := range rt.names.hosts[host] {
		if u.Port == 0 || u.Port == up.port {
			return up
		}
	}
	return rt.names.domains[host]
}

// defaultRoute returns the upstream or group marked default, if any.
func (rt *routing) defaultRoute() (*upstream, *upstreamGroup) {
	for _, up := range rt.upstreams {
		if up.Default {
			return up, nil
		}
	}
	for _, g := range rt.groups {
		if g.Default {
			return nil, g
		}
	}
	return nil, nil
}

// matchRoute returns the upstream u names (matchUpstream), else the group
// one of whose domains is u's host.
func (rt *routing) matchRoute(u sip.Uri) (*upstream, *upstreamGroup) {
	if up := rt.matchUpstream(u); up != nil {
		return up, nil
	}
	return nil, rt.names.groups[strings.ToLower(strings.Trim(u.Host, "[]"))]
}

// routeNames indexes the upstreams and groups by the host names requests
// address them by, so that routing costs the same with 2 upstreams as
// with 500. Where names repeat, the configuration's order decides: hosts
// keeps every upstream of a host in order (the port picks among them),
// domains and groups the first upstream or group that lists the domain.
type routeNames struct {
	hosts   map[string][]*upstream
	domains map[string]*upstream
	groups  map[string]*upstreamGroup
}

func indexRouteNames(ups []*upstream, groups []*upstreamGroup) routeNames {
	n := routeNames{hosts: map[string][]*upstream{}, domains: map[string]*upstream{}, groups: map[string]*upstreamGroup{}}
	for _, up := range ups {
		n.hosts[up.host] = append(n.hosts[up.host], up)
		for _, d := range up.Domains {
			if d := strings.ToLower(d); n.domains[d] == nil {
				n.domains[d] = up
			}
		}
	}
	for _, g := range groups {
		for _, d := range g.Domains {
			if d := strings.ToLower(d); n.groups[d] == nil {
				n.groups[d] = g
			}
		}
	}
	return n
}

// listenerFor picks the listener whose address we put in the Via (and
// Record-Route, Path, Contact) of a request sent over transport to dst:
// the first of that transport and of dst's address family (a listener on
// the IPv6 wildcard serves both), else the first of that transport; any
// family when dst is no address. For UDP its socket also sends the
// request, so the peer sees one stable address it can answer.
func (p *Proxy) listenerFor(transport string, dst netip.Addr) *boundListener {
	var first *boundListener
	for _, l := range p.listeners {
		if l.transport != transport {
			continue
		}
		if !dst.IsValid() || l.serves(dst) {
			return l
		}
		if first == nil {
			first = l
		}
	}
	return first
}

// serves reports whether l can exchange packets with a: same address
// family, or l is the IPv6 wildcard (dual stack).
func (l *boundListener) serves(a netip.Addr) bool {
	v4 := l.ip.To4() != nil
	return v4 == a.Unmap().Is4() || (!v4 && l.ip.IsUnspecified())
}

// hopAddr is the IP of an "ip:port" hop; invalid for anything else.
func hopAddr(addr string) netip.Addr {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// route decides where the request goes (§16.4, §16.5) and fills f.up (or
// f.att.group), f.dlg, f.toClient, f.user and f.key, and f.hop when it is
// known without resolving (toward a client, or a dialog's target). It
// answers the client itself and returns false when the request goes
// nowhere.
func (f *forwarding) route() bool {
	p, req := f.p, f.req
	fromTag, toTag := tags(req)
	f.key = cseqKey{callID: callID(req), fromTag: fromTag}
	now := time.Now()
	if toTag != "" {
		if d := p.dialogs.fromUpstream(f.key.callID, fromTag, toTag, now); d != nil {
			// The upstream sends into an established dialog (callee BYE,
			// re-INVITE, NOTIFY): to the client, where its INVITE came from.
			f.dlg, f.toClient = d, true
			f.hop = hop{transport: d.clientTransport, addr: d.clientAddr}
			f.log = f.log.With(logUpstream, d.up.Name, "direction", "to-client")
			return true
		}
		if req.Method == sip.ACK {
			// Also the dialog its BYE has just ended (dialogTable).
			f.dlg = p.dialogs.ackFromClient(f.key.callID, fromTag, toTag, now)
		} else {
			f.dlg = p.dialogs.fromClient(f.key.callID, fromTag, toTag, now)
		}
	} else if f.routeInbound() {
		// An upstream's request to a client registered through us (or
		// answered here when that client is out of reach).
		return !f.replied
	}
	if !f.routeUpstream() {
		return false
	}
	if f.att.group != nil {
		f.log = f.log.With("upstream_group", f.att.group.Name) // its upstream is chosen by admit
	} else {
		f.log = f.log.With(logUpstream, f.up.Name)
	}

	// The SIP user credentials are chosen for: the To user for REGISTER (the
	// AOR being registered), the From user otherwise.
	if req.Method == sip.REGISTER {
		if to := req.To(); to != nil {
			f.user = to.Address.User
		}
	} else if from := req.From(); from != nil {
		f.user = from.Address.User
	}
	return true
}

// routeUpstream picks the upstream (or group) of a request toward the
// upstreams. Inside a dialog it is the dialog's upstream, and the target
// that answered its INVITE when known (in-dialog requests never re-resolve
// and never move to another target). Otherwise our own Route entries (one,
// or two after a double Record-Route) are skipped (buildForward removes
// them) and the next Route names it, else the Request-URI, else the
// default: a configured upstream or group in every case, never a host the
// client names.
func (f *forwarding) routeUpstream() bool {
	p, req := f.p, f.req
	if d := f.dlg; d != nil && d.upstreamTarget.Addr.IsValid() {
		f.up = d.up
		f.att.targets = []resolve.Target{d.upstreamTarget}
		f.hop = d.up.hopFor(d.upstreamTarget)
		return true
	}
	var grp *upstreamGroup
	if routes := f.foreignRoutes(); len(routes) > 0 {
		f.up, grp = f.rt.matchRoute(routes[0].Address)
		if f.up == nil && grp == nil && f.dlg != nil {
			f.up = f.dlg.up
		}
		if f.up == nil && grp == nil {
			f.respondLocal(sip.StatusNotFound, "No Upstream For Route", "no-route")
			return false
		}
	} else {
		f.up, grp = f.rt.matchRoute(req.Recipient)
		if f.up == nil && grp == nil && p.isOwnURI(req.Recipient) && req.Recipient.User == "" && req.Method == sip.OPTIONS {
			f.respondLocal(sip.StatusOK, "OK", "local")
			return false
		}
		if f.up == nil && grp == nil && f.dlg != nil {
			// In a dialog the Request-URI is the remote target (the callee's
			// Contact), which need not be the upstream's address.
			f.up = f.dlg.up
		}
		if f.up == nil && grp == nil {
			f.up, grp = f.rt.defaultRoute()
		}
		if f.up == nil && grp == nil {
			f.respondLocal(sip.StatusNotFound, "No Upstream For Request-URI", "no-route")
			return false
		}
	}
	if grp != nil {
		// Admission (admit) narrows the members to those the client may
		// use; until then the first one stands for the group.
		f.att.group, f.up = grp, grp.members[0]
	}
	return true
}

// foreignRoutes returns the request's Route entries after ours.
func (f *forwarding) foreignRoutes() []*sip.RouteHeader {
	var out []*sip.RouteHeader
	own := true
	for _, h := range f.req.GetHeaders("Route") {
		r, ok := h.(*sip.RouteHeader)
		if !ok {
			continue
		}
		if own && f.p.isOwnURI(r.Address) {
			continue
		}
		own = false
		out = append(out, r)
	}
	return out
}
