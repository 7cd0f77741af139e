package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/authproxy/authproxy/credentials"
)

// Cross-references that each key's own rule cannot see: a configuration
// every value of which is valid, but that would not do at run time what
// it says.

// checkRegistrationCredentials reports each [[registration]] no
// [[credential]] could answer a challenge for: none whose server is its
// upstream (or any) and whose user is its AOR's user (or any). Its
// REGISTERs would be answered as "anonymous" with an empty password (RFC
// 3261 §22.1), and the trunk would stay unregistered, or be registered as
// whoever the registrar takes that for. The realm is not known before the
// upstream challenges, so any realm counts.
func (v *validator) checkRegistrationCredentials(rs []fileRegistration, creds []credentials.Entry, idx upstreamIndex) {
	for i, r := range rs {
		addr, ok := idx.byName[r.Upstream]
		user, aorOK := sipUser(r.AOR)
		if !ok || !aorOK || addr == "" {
			continue // reported by buildRegistrations or buildUpstreams
		}
		found := false
		for _, e := range creds {
			if serverCovers(e.Server, addr) && (e.User == "" || e.User == user) {
				found = true
				break
			}
		}
		if !found {
			v.add(fmt.Sprintf("registration[%d]", i), strconv.Quote(r.AOR), fmt.Sprintf(
				"no [[credential]] answers its upstream's challenge (server %q or none, user %q or none): "+
					"it would register as anonymous (RFC 3261 §22.1); add one with server = %q", r.Upstream, user, r.Upstream),
				ErrRequired, nil)
		}
	}
}

// serverCovers reports whether a credential's resolved server scope
// matches an upstream's normalised address: no scope, the address itself,
// or its host alone (which matches any port, as credentials.Store does).
func serverCovers(scope, addr string) bool {
	return scope == "" || scope == addr || scope == hostOf(addr)
}

// hostOf is the host of "host:port" (IPv6 without brackets), or s itself
// when it has no port (a bare domain).
func hostOf(s string) string {
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
}

// checkNamesAsHosts reports an address that is the name of an upstream or
// group rather than a host: upstream address = "pbx-a", registration
// target = "pbx-a". authproxy reads such a value as a DNS name
// ("pbx-a:5060"), never as a reference to the upstream of that name. A
// name that is also that upstream's own host (name = "pbx.example.com",
// address = "pbx.example.com:5060", or a container's service name) means
// the same either way and is not reported.
func (v *validator) checkNamesAsHosts(ups []fileUpstream, rs []fileRegistration, groups []Group, idx upstreamIndex) {
	groupNames := map[string]bool{}
	for _, g := range groups {
		groupNames[g.Name] = true
	}
	// misread returns the upstream or group host names, when it is one
	// whose address is elsewhere; self is the upstream the value belongs to.
	misread := func(host, self string) string {
		if host == "" || host == self {
			return ""
		}
		if groupNames[host] {
			return fmt.Sprintf("is the name of group %q, not a host", host)
		}
		addr, ok := idx.byName[host]
		if !ok || strings.EqualFold(hostOf(addr), host) {
			return ""
		}
		return fmt.Sprintf("is the name of upstream %q, not a host: it would be resolved in DNS, not sent to %q", host, addr)
	}
	for i, u := range ups {
		if rule := misread(hostOf(u.Address), u.Name); rule != "" {
			v.add(fmt.Sprintf("upstream[%d].address", i), strconv.Quote(u.Address), rule+"; write the host or IP to forward to", ErrInvalid, nil)
		}
	}
	for i, r := range rs {
		if rule := misread(targetHost(r.Target), ""); rule != "" {
			v.add(fmt.Sprintf("registration[%d].target", i), strconv.Quote(r.Target),
				rule+`; write where requests for the registered contact go, a SIP URI or "host:port"`, ErrInvalid, nil)
		}
	}
}

// targetHost is the host of a registration target: a SIP URI
// ("sip:1001@pbx-a:5060;transport=tcp") or "host:port", or "".
func targetHost(t string) string {
	if rest, ok := cutPrefixFold(t, "sip:"); ok {
		if _, after, found := strings.Cut(rest, "@"); found {
			rest = after
		}
		rest, _, _ = strings.Cut(rest, ";")
		return hostOf(rest)
	}
	if t == "" {
		return ""
	}
	return hostOf(t)
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}
