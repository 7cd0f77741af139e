package proxy

import (
	"net"
	"strings"

	"github.com/emiago/sipgo/sip"
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
	creds         Credentials
	maxChallenges int
	clients       []ClientGroup
}

// matchUpstream returns the configured upstream u names, if any: by address
// host (and port, when u carries one and two upstreams share the host) or by
// one of its domains. Never an arbitrary host.
func (rt *routing) matchUpstream(u sip.Uri) *upstream {
	host := strings.ToLower(strings.Trim(u.Host, "[]"))
	var byHost *upstream
	for _, up := range rt.upstreams {
		if up.host == host {
			if u.Port == 0 || u.Port == up.port {
				if u.Port != 0 || byHost == nil {
					if u.Port != 0 {
						return up
					}
					byHost = up
				}
			}
		}
	}
	if byHost != nil {
		return byHost
	}
	for _, up := range rt.upstreams {
		for _, d := range up.Domains {
			if strings.EqualFold(d, host) {
				return up
			}
		}
	}
	return nil
}

// defaultUpstream returns the upstream marked default, if any.
func (rt *routing) defaultUpstream() *upstream {
	for _, up := range rt.upstreams {
		if up.Default {
			return up
		}
	}
	return nil
}

// listenerFor picks the listener whose address we put in the Via of a
// request sent over transport: the first of that transport. For UDP its
// socket also sends the request, so the upstream sees one stable address.
func (p *Proxy) listenerFor(transport string) *boundListener {
	for _, l := range p.listeners {
		if l.transport == transport {
			return l
		}
	}
	return nil
}
