package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Validation of [[upstream]]: names, addresses, transports, and the index
// credentials and registrations find their upstream by.

// upstreamIndex is what credential server resolution and the groups need
// to know about the upstreams.
type upstreamIndex struct {
	byName    map[string]string // name → normalised address
	hosts     map[string]bool   // lowercased host
	hostPorts map[string]string // normalised host:port → the address it scopes (a bare domain for "domain:5060")
	names     []string
	domainAt  map[string]string // domain → the key that claims it first
	defaultAt string            // the key of the default upstream or group, if any
}

func (v *validator) buildUpstreams(us []fileUpstream) ([]Upstream, upstreamIndex) {
	idx := upstreamIndex{byName: map[string]string{}, hosts: map[string]bool{}, hostPorts: map[string]string{}, domainAt: map[string]string{}}
	if len(us) == 0 {
		v.add("upstream", "", "at least one [[upstream]] table is required", ErrRequired, nil)
		return nil, idx
	}
	out := make([]Upstream, 0, len(us))
	nameAt := map[string]int{}
	addrAt := map[string]int{} // transport + " " + address → first index
	for i, u := range us {
		key := fmt.Sprintf("upstream[%d]", i)
		o := Upstream{Name: u.Name, Address: u.Address, Transport: v.upstreamTransport(key, u.Transport), Default: u.Default,
			Preemptive: v.preemptive(key, u.Preemptive), AcceptFrom: v.prefixes(key+".accept_from", u.AcceptFrom)}

		if v.uniqueName("upstream", i, u.Name, nameAt) {
			idx.names = append(idx.names, u.Name)
		}

		if u.Address == "" {
			v.add(key+".address", "", `is required, as "host:port", "ip" or "domain" (SRV)`, ErrRequired, nil)
		} else if addr, host, rule := upstreamAddress(u.Address, o.Transport); rule != "" {
			v.add(key+".address", strconv.Quote(u.Address), rule, ErrInvalid, nil)
		} else if unspecified(host) {
			v.add(key+".address", strconv.Quote(u.Address),
				"must name a host to forward to, not an unspecified address", ErrInvalid, nil)
		} else {
			o.Address = addr
			idx.hosts[host] = true
			idx.hostPorts[addr] = addr
			if addr == host {
				// A domain without port (SRV): a credential may still name
				// it with the default port.
				idx.hostPorts[net.JoinHostPort(host, strconv.Itoa(defaultPort(o.Transport)))] = addr
			}
			k := o.Transport + " " + o.Address
			if j, dup := addrAt[k]; dup {
				v.add(key+".address", strconv.Quote(u.Address),
					fmt.Sprintf("duplicates upstream[%d].address (same transport)", j), ErrDuplicate, nil)
			} else {
				addrAt[k] = i
			}
		}
		if o.Transport == "tls" || o.Transport == "auto" {
			if u.CAFile != "" {
				o.CAFile = v.existingFile(key+".ca_file", u.CAFile, "a PEM CA bundle")
			}
			o.ServerName = lowerASCII(u.ServerName)
		} else {
			for _, f := range []struct{ k, v string }{{"ca_file", u.CAFile}, {"server_name", u.ServerName}} {
				if f.v != "" {
					v.add(key+"."+f.k, strconv.Quote(f.v), `applies only to transport = "tls" or "auto"`, ErrInvalid, nil)
				}
			}
		}
		if _, taken := idx.byName[u.Name]; !taken && u.Name != "" {
			idx.byName[u.Name] = o.Address
		}
		switch rm := strings.ToLower(u.RegisterMode); rm {
		case "", "path":
			o.RegisterMode = "path"
		case "contact":
			o.RegisterMode = rm
		default:
			v.add(key+".register_mode", strconv.Quote(u.RegisterMode), `must be "path" or "contact"`, ErrInvalid, nil)
		}

		o.Domains = idx.claimDomains(v, key, u.Domains)
		if u.Default {
			idx.claimDefault(v, key)
		}
		out = append(out, o)
	}
	return out, idx
}

// claimDomains checks the domains listed under key and claims each for
// it: a domain routes to one upstream or group, the first that lists it.
// It returns the valid ones, lowercased.
func (idx *upstreamIndex) claimDomains(v *validator, key string, domains []string) []string {
	var out []string
	for j, d := range domains {
		dkey := fmt.Sprintf("%s.domains[%d]", key, j)
		dom := lowerASCII(d)
		if !validHost(dom) {
			v.add(dkey, strconv.Quote(d), "must be a hostname or IP address", ErrInvalid, nil)
			continue
		}
		if first, dup := idx.domainAt[dom]; dup {
			v.add(dkey, strconv.Quote(d), "duplicates "+first+": a domain routes to one upstream or group", ErrDuplicate, nil)
			continue
		}
		idx.domainAt[dom] = dkey
		out = append(out, dom)
	}
	return out
}

// claimDefault makes key (an upstream or a group) the default route, or
// reports the one that already is.
func (idx *upstreamIndex) claimDefault(v *validator, key string) {
	if idx.defaultAt != "" {
		v.add(key+".default", "true",
			fmt.Sprintf("%s is already the default; at most one upstream or group may be", idx.defaultAt), ErrDuplicate, nil)
		return
	}
	idx.defaultAt = key
}

// transport validates and defaults a transport key.
// preemptive checks an upstream's preemptive mode; empty means "all"
// (registrations and every other request to a configured trunk carry
// credentials from the last accepted challenge: the default).
func (v *validator) preemptive(key, m string) string {
	switch m {
	case "":
		return "all"
	case "off", "registrations", "all":
		return m
	}
	v.add(key+".preemptive", strconv.Quote(m), `must be "off", "registrations" or "all"`, ErrInvalid, nil)
	return m
}

// resolveServer turns a credential's server into the scope the credential
// store matches on. An upstream name becomes that upstream's normalised
// address; otherwise the value must be the host or host:port of a
// configured upstream and is kept with its host lowercased. ok is false
// when an error was recorded.
func (v *validator) resolveServer(key, s string, idx upstreamIndex) (string, bool) {
	if s == "" {
		return "", true
	}
	if addr, named := idx.byName[s]; named {
		return addr, true
	}
	if h, p, err := net.SplitHostPort(s); err == nil {
		port, perr := strconv.Atoi(p)
		if perr == nil && port >= 1 && port <= 65535 {
			hp := net.JoinHostPort(lowerASCII(h), strconv.Itoa(port))
			if addr, ok := idx.hostPorts[hp]; ok {
				return addr, true
			}
		}
	} else if host := lowerASCII(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); idx.hosts[host] {
		return host, true
	}
	if len(idx.names) == 0 && len(idx.hosts) == 0 {
		return s, false // no usable upstream: already reported there
	}
	names := make([]string, len(idx.names))
	for i, n := range idx.names {
		names[i] = strconv.Quote(n)
	}
	v.add(key+".server", strconv.Quote(s), fmt.Sprintf(
		"names no configured upstream: use an upstream name (%s) or an upstream's host or host:port",
		strings.Join(names, ", ")), ErrInvalid, nil)
	return s, false
}

// uniqueName checks the name of table[i] (required, no control
// characters, unique in its table, nameAt holding the index of each name
// seen) and reports whether it is good, noting it in nameAt.
func (v *validator) uniqueName(table string, i int, name string, nameAt map[string]int) bool {
	key := fmt.Sprintf("%s[%d].name", table, i)
	switch j, dup := nameAt[name]; {
	case strings.TrimSpace(name) == "":
		v.add(key, strconv.Quote(name), "is required", ErrRequired, nil)
	case hasControl(name):
		v.add(key, strconv.Quote(name), "must not contain control characters", ErrInvalid, nil)
	case dup:
		v.add(key, strconv.Quote(name), fmt.Sprintf("duplicates %s[%d].name", table, j), ErrDuplicate, nil)
	default:
		nameAt[name] = i
		return true
	}
	return false
}
