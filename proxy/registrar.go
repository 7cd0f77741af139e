package proxy

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/resolve"
)

// Registrations through authproxy (RFC 3327 Path).
//
// A client's REGISTER is forwarded with a Path header naming authproxy, so
// that the registrar sends requests for the registered contact through us
// (RFC 3327 §5.3: the registrar uses the Path as a preloaded Route set).
// When the registrar's 2xx confirms the binding, authproxy remembers where
// the client registered from (transport and source address: behind a NAT
// the address its packets really come from, RFC 3581; over TCP the
// connection it opened). A request a configured upstream later sends to the
// registered contact is forwarded there.

// Register modes of an upstream (Upstream.RegisterMode).
const (
	// RegisterPath adds a Path header and leaves the Contact alone.
	RegisterPath = "path"
	// RegisterContact rewrites the Contact to authproxy's address with a
	// user part that maps back to the binding, for registrars without Path
	// support.
	RegisterContact = "contact"
)

// Bounds of the binding table.
const (
	// maxBindings bounds memory under a flood of REGISTERs with ever new
	// contacts; a deployment has one or a few bindings per phone.
	maxBindings = 100000
	// defaultRegisterExpiry applies when neither the 2xx nor the REGISTER
	// says how long a binding lasts (RFC 3261 §10.2.1.1 suggests 3600).
	defaultRegisterExpiry = 3600 * time.Second
	// aliasPrefix starts the user part of a rewritten Contact.
	aliasPrefix = "ap-"
)

// inboundMethods are the out-of-dialog requests an upstream may send to a
// registered client through authproxy.
var inboundMethods = []sip.RequestMethod{sip.INVITE, sip.MESSAGE, sip.OPTIONS, sip.NOTIFY}

// Bindings returns the contacts clients have registered through authproxy
// and that have not expired.
func (p *Proxy) Bindings() []Binding {
	now := time.Now()
	var out []Binding
	for _, b := range p.bindings.snapshot() {
		if now.Before(b.Expires) {
			out = append(out, b)
		}
	}
	return out
}

// ownURI is a SIP URI of the listener used for transport, with lr, for
// Path and Record-Route.
func (p *Proxy) ownURI(l *boundListener, user string) sip.Uri {
	u := sip.Uri{Scheme: "sip", User: user, Host: l.advertise, Port: l.port, UriParams: sip.NewParams()}
	u.UriParams.Add("transport", l.uriTransport())
	if user == "" {
		u.UriParams.Add("lr", "")
	}
	return u
}

// prepareRegister adapts a REGISTER forwarded to the upstream: in path mode
// a Path header naming authproxy (the upstream-facing listener first, then
// the client-facing one when they differ, as for Record-Route) and
// Supported: path (RFC 3327 §5.1); in contact mode every Contact is
// replaced by an alias at authproxy.
func (f *forwarding) prepareRegister(fwd *sip.Request) {
	if f.up == nil {
		return
	}
	contacts := fwd.GetHeaders("Contact")
	if len(contacts) == 0 {
		return // a query of the current bindings (§10.2.3)
	}
	ul := f.p.listenerFor(f.hop.transport, hopAddr(f.hop.addr))
	cl := f.p.listenerFor(f.req.Transport(), f.src)
	if f.up.RegisterMode == RegisterContact {
		if ul == nil {
			return
		}
		aor := aorOf(f.req.To().Address)
		for _, h := range contacts {
			c, ok := h.(*sip.ContactHeader)
			if !ok || c.Address.Wildcard {
				continue
			}
			// The header is the clone's own (Clone copies headers), so
			// rewriting it leaves the client's request untouched.
			c.Address = f.p.ownURI(ul, aliasFor(aor, contactKey(c.Address)))
		}
		return
	}
	var path []string
	for _, l := range []*boundListener{ul, cl} {
		if l == nil || (len(path) > 0 && l == cl && cl == ul) {
			continue
		}
		u := f.p.ownURI(l, "")
		if l == cl && isWebSocket(f.req.Transport()) {
			u = f.p.flowPathURI(l, f.req.Transport(), f.req.Source())
		}
		path = append(path, "<"+u.String()+">")
	}
	if len(path) == 0 {
		return
	}
	fwd.PrependHeader(sip.NewHeader("Path", strings.Join(path, ", ")))
	for _, h := range fwd.GetHeaders("Supported") {
		for _, opt := range strings.Split(h.Value(), ",") {
			if strings.EqualFold(strings.TrimSpace(opt), "path") {
				return
			}
		}
	}
	fwd.AppendHeader(sip.NewHeader("Supported", "path"))
}

// registered updates the binding table from the upstream's 2xx to a
// client's REGISTER: each Contact the client sent is bound for the
// lifetime the registrar granted it, or removed when that is 0 or the
// registrar no longer lists it; "Contact: *" with Expires: 0 removes all.
func (f *forwarding) registered(res *sip.Response) {
	to := f.req.To()
	if to == nil || f.up == nil {
		return
	}
	aor := aorOf(to.Address)
	now := time.Now()
	reqExpires := -1
	if h := f.req.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Value())); err == nil {
			reqExpires = n
		}
	}
	resExpires := -1
	if h := res.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Value())); err == nil {
			resExpires = n
		}
	}
	granted := map[string]int{} // contact key as the registrar lists it -> seconds
	listed := false
	for _, h := range res.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || c.Address.Wildcard {
			continue
		}
		listed = true
		secs := resExpires
		if v, ok := c.Params.Get("expires"); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				secs = n
			}
		}
		granted[contactKey(c.Address)] = secs
	}
	ul := f.p.listenerFor(f.hop.transport, hopAddr(f.hop.addr))
	for _, h := range f.req.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok {
			continue
		}
		if c.Address.Wildcard {
			for _, b := range f.p.bindings.removeAOR(aor, f.up.Name) {
				f.p.forgetBinding(b.aor, b.ckey, b.alias)
			}
			continue
		}
		ckey := contactKey(c.Address)
		alias := ""
		sent := ckey
		if f.up.RegisterMode == RegisterContact && ul != nil {
			alias = aliasFor(aor, ckey)
			sent = contactKey(f.p.ownURI(ul, alias))
		}
		secs, ok := granted[sent]
		switch {
		case ok && secs >= 0:
		case listed:
			secs = 0 // the registrar lists the AOR's bindings without this one
		default:
			// No Contact in the 2xx: trust what the client asked for.
			secs = reqExpires
			if v, ok := c.Params.Get("expires"); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					secs = n
				}
			}
			if secs < 0 {
				secs = resExpires
			}
			if secs < 0 {
				secs = int(defaultRegisterExpiry / time.Second)
			}
		}
		if secs <= 0 {
			f.p.bindings.remove(aor, ckey)
			f.p.forgetBinding(aor, ckey, alias)
			f.log.Debug("binding removed", "aor", aor, "contact", c.Address.String())
			continue
		}
		tp, addr := reachAt(f.req, c.Address)
		b := &binding{
			aor: aor, contact: *c.Address.Clone(), ckey: ckey, alias: alias, upstream: f.up.Name,
			transport: tp, addr: addr, expires: now.Add(time.Duration(secs) * time.Second),
		}
		if !f.p.bindings.put(b, now) {
			f.log.Warn("binding table full; contact not reachable for inbound requests", "aor", aor, "bindings", maxBindings)
			continue
		}
		f.p.saveBinding(b)
		f.log.Debug("binding stored", "aor", aor, "contact", c.Address.String(), "source", b.addr, "transport", b.transport, "expires", secs)
	}
}

// reachAt decides where requests for a contact registered by reg go: the
// address reg came from (its transport and source: behind a NAT the
// address its packets really come from, RFC 3581; over TCP the client's
// connection), unless the REGISTER is a third-party registration (RFC 3261
// §10.2: the Contact names another host than the one registering) and
// nothing shows a NAT. Then it is the Contact itself (its transport
// parameter, UDP by default; its port, else the transport's default).
// Nothing shows a NAT when, as Kamailio nathelper's nat_uac_test 2, 16, 1
// and 32 put it:
//   - the top Via's sent-by is an IP address equal to the source address,
//     and its port (5060, 5061 for TLS, when absent) equals the source
//     port: nothing rewrote the packet's addresses on the way;
//   - the Contact host is an IP address (authproxy does not resolve
//     clients' names) other than the source's;
//   - the Contact is not a private, shared (RFC 6598), loopback or
//     link-local address while the source is none: a private Contact
//     behind a public source is a client behind a NAT.
func reachAt(reg *sip.Request, contact sip.Uri) (transport, addr string) {
	transport, addr = reg.Transport(), reg.Source()
	src, err := netip.ParseAddrPort(addr)
	if err != nil {
		return transport, addr
	}
	host, err := netip.ParseAddr(strings.Trim(contact.Host, "[]"))
	if err != nil || host.Unmap() == src.Addr().Unmap() {
		return transport, addr
	}
	via := reg.Via()
	if via == nil {
		return transport, addr
	}
	sentBy, err := netip.ParseAddr(strings.Trim(via.Host, "[]"))
	viaPort := via.Port
	if viaPort == 0 {
		viaPort = resolve.DefaultPort(strings.ToUpper(via.Transport))
	}
	if err != nil || sentBy.Unmap() != src.Addr().Unmap() || viaPort != int(src.Port()) {
		return transport, addr
	}
	if internal(host) && !internal(src.Addr()) {
		return transport, addr
	}
	tp := "UDP"
	if v, ok := contact.UriParams.Get("transport"); ok {
		if t, err := normTransport(v); err == nil {
			tp = t
		}
	}
	port := contact.Port
	if port == 0 {
		port = resolve.DefaultPort(tp)
	}
	return tp, netip.AddrPortFrom(host.Unmap(), uint16(port)).String()
}

// sharedSpace is RFC 6598's carrier-grade NAT range.
var sharedSpace = netip.MustParsePrefix("100.64.0.0/10")

// internal reports whether a is an address a NAT hides: private (RFC 1918,
// RFC 4193), shared (RFC 6598), loopback or link-local.
func internal(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() || sharedSpace.Contains(a)
}

// routeInbound decides whether an out-of-dialog request is one an upstream
// sends to a client registered through authproxy: it comes from a
// configured upstream's address, carries no Route beyond ours (the Path
// the registrar preloaded), and its Request-URI is a registered contact
// (or, in contact mode, an alias at authproxy). It then fills the
// forwarding toward that client and reports true.
func (f *forwarding) routeInbound() bool {
	req := f.req
	inbound := false
	for _, m := range inboundMethods {
		inbound = inbound || req.Method == m
	}
	if !inbound {
		return false
	}
	ups := f.rt.fromUpstream(f.src)
	if len(ups) == 0 || len(f.foreignRoutes()) > 0 {
		return false
	}
	own := f.p.isOwnURI(req.Recipient)
	up := ups[0]
	b := f.p.lookupBinding(req.Recipient, own, time.Now())
	if b != nil && b.member == f.p.store.id {
		b.member = ""
	}
	if tp, addr, ok := f.routeFlow(); ok {
		// The Path of a WebSocket client's registration: its flow decides
		// (RFC 5626 §5.3), whatever the Request-URI.
		if !f.p.webSocketOpen(tp, addr) {
			f.respondLocal(430, "Flow Failed", "flow-failed")
			return true
		}
		if b == nil || b.transport != tp || b.addr != addr || b.member != "" {
			b = &binding{contact: *req.Recipient.Clone(), upstream: up.Name, transport: tp, addr: addr}
		}
	}
	if b != nil {
		// The upstream the client registered with, when the source is one
		// of its addresses too.
		for _, u := range ups {
			if u.Name == b.upstream {
				up = u
			}
		}
	}
	for _, u := range ups {
		if b != nil {
			break
		}
		// A trunk registration's contact: to its local target.
		if b = f.p.regs.target(u, req.Recipient, own); b != nil {
			up = u
		}
	}
	if b == nil {
		return false
	}
	if b.member != "" && b.transport != "UDP" {
		// Over TCP and TLS the client is reached on the connection it
		// opened, which another instance holds: say so rather than dial
		// the client's ephemeral port.
		f.log.Info("registered over a connection another instance holds", "aor", b.aor, "transport", b.transport, "instance", b.member)
		f.respondLocal(sip.StatusTemporarilyUnavailable, "Registered Through Another Instance", "binding-elsewhere")
		return true
	}
	f.bind, f.up, f.toClient = b, up, true
	f.hop = hop{transport: b.transport, addr: b.addr}
	f.log = f.log.With(logUpstream, up.Name, "direction", "to-client", "aor", b.aor)
	return true
}

// prepareInbound adapts a request from an upstream to a registered client:
// the Request-URI back to the client's own Contact in contact mode, and a
// Record-Route on an INVITE so that the dialog runs through authproxy both
// ways (the upstream side is the caller here).
func (f *forwarding) prepareInbound(fwd *sip.Request) {
	if f.bind == nil {
		return
	}
	if f.bind.alias != "" && fwd.Recipient.User == f.bind.alias {
		fwd.Recipient = *f.bind.contact.Clone()
	}
	if createsDialog(f.req.Method) {
		f.p.addRecordRoute(fwd, f.req.Transport(), f.src, f.hop)
	}
}

// recordInboundDialog remembers the dialog a client's 2xx to an upstream's
// INVITE establishes. The dialog table names its ends by side: the
// "caller" tag is the client's (here the To tag of the 2xx), the "callee"
// tag the upstream's (the INVITE's From tag), so that the client's BYE and
// the upstream's requests are matched as for calls the client placed.
func (f *forwarding) recordInboundDialog(res *sip.Response) {
	if f.bind == nil || f.dlg != nil {
		return
	}
	fromTag, _ := tags(f.req)
	toTag := ""
	if to := res.To(); to != nil {
		toTag, _ = to.Params.Get("tag")
	}
	d := &dialog{
		key:             dialogKey{callID: f.key.callID, callerTag: toTag, calleeTag: fromTag},
		up:              f.up,
		clientTransport: f.hop.transport,
		clientAddr:      f.hop.addr,
		upstreamAddr:    f.src,
		lastUse:         time.Now(),
	}
	// The client's requests in the dialog go back to the target the
	// INVITE came from, when it came from one (not from an AcceptFrom
	// address: a carrier's sending address need not receive).
	if ts, ok := f.p.targets.cached(f.up); ok {
		for _, t := range ts {
			if t.Addr.Addr().Unmap() == f.src && strings.EqualFold(t.Transport, f.req.Transport()) {
				d.upstreamTarget = t
				break
			}
		}
	}
	f.p.dialogs.put(d)
}
