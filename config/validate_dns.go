package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Validation of what concerns upstream names and failover: [dns], upstream
// addresses and accept_from, [[group]] and proxy.failover_timeout.

// Bounds with a reason behind them.
const (
	// minTTLFloor keeps min_ttl from turning the background refresh into
	// a query flood: a second is already far below any useful TTL.
	minTTLFloor = time.Second
	// maxTTLCeiling caps max_ttl at a day, the common TTL of records that
	// do not move; more would only hide a move.
	maxTTLCeiling = 24 * time.Hour
	// minDNSTimeout and maxDNSTimeout bound dns.timeout: under 100ms a
	// server across a WAN times out while answering, and a request waits
	// up to this long for a first resolution.
	minDNSTimeout = 100 * time.Millisecond
	maxDNSTimeout = 30 * time.Second
	// minFailoverTimeout and maxFailoverTimeout bound
	// proxy.failover_timeout: a LAN round trip with a retransmission fits
	// in 100ms, and past 32s (Timer B/F) it would never fire.
	minFailoverTimeout = 100 * time.Millisecond
	maxFailoverTimeout = 32 * time.Second
	// defaultDNSPort is where a DNS server listens unless told.
	defaultDNSPort = 53
)

func (v *validator) buildDNS(d fileDNS) DNS {
	out := DNS{
		MinTTL:  v.durationIn("dns.min_ttl", d.MinTTL, minTTLFloor, maxTTLCeiling),
		MaxTTL:  v.durationIn("dns.max_ttl", d.MaxTTL, minTTLFloor, maxTTLCeiling),
		Timeout: v.durationIn("dns.timeout", d.Timeout, minDNSTimeout, maxDNSTimeout),
	}
	if out.MinTTL > 0 && out.MaxTTL > 0 && out.MaxTTL < out.MinTTL {
		v.add("dns.max_ttl", strconv.Quote(d.MaxTTL), "must not be less than dns.min_ttl ("+d.MinTTL+")", ErrInvalid, nil)
	}
	for i, s := range d.Servers {
		key := fmt.Sprintf("dns.servers[%d]", i)
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			a, aerr := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
			if aerr != nil {
				v.add(key, strconv.Quote(s), `must be an IP address with an optional port, e.g. "192.0.2.53", "127.0.0.1:5353" or "[::1]:53"`, ErrInvalid, nil)
				continue
			}
			ap = netip.AddrPortFrom(a, defaultDNSPort)
		}
		if ap.Port() == 0 || ap.Addr().IsUnspecified() {
			v.add(key, strconv.Quote(s), "must name a DNS server's address and port, not 0.0.0.0, :: or port 0", ErrInvalid, nil)
			continue
		}
		out.Servers = append(out.Servers, ap.String())
	}
	return out
}

// durationIn parses a duration key that must lie in [lo, hi].
func (v *validator) durationIn(key, val string, lo, hi time.Duration) time.Duration {
	d, err := time.ParseDuration(val)
	if err != nil || d < lo || d > hi {
		v.add(key, strconv.Quote(val), fmt.Sprintf("must be a duration from %s to %s, e.g. %q", lo, hi, lo.String()), ErrInvalid, nil)
		return 0
	}
	return d
}

// upstreamTransport validates and defaults an upstream's transport: as a
// listener's, or "auto" (NAPTR chooses).
func (v *validator) upstreamTransport(key, t string) string {
	if strings.EqualFold(t, "auto") {
		return "auto"
	}
	switch lt := strings.ToLower(t); lt {
	case "":
		return "udp"
	case "udp", "tcp", "tls":
		return lt
	}
	v.add(key+".transport", strconv.Quote(t), `must be "udp", "tcp", "tls" or "auto"`, ErrInvalid, nil)
	return t
}

// upstreamAddress normalises an upstream address (RFC 3263 §4.2): an IP
// literal gets the transport's default port when it has none ("ip:port",
// IPv6 in brackets); a name with a port is "host:port" (its A/AAAA
// records); a name without one stays a bare domain (NAPTR, SRV, then
// A/AAAA). host is the lowercased host; rule is "" on success.
func upstreamAddress(s, transport string) (addr, host, rule string) {
	if h, _, err := net.SplitHostPort(s); err == nil {
		host, port, rule := parseAddress(s, 0)
		if rule != "" {
			return "", "", rule
		}
		if host == "" || port == 0 {
			return "", "", fmt.Sprintf("must name a host and a port from 1 to 65535, not %q", h)
		}
		return net.JoinHostPort(host, strconv.Itoa(port)), host, ""
	}
	host = lowerASCII(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if host == "" || !validHost(host) {
		return "", "", `must be "host:port", an IP address or a domain (IPv6 as "[2001:db8::1]:5060")`
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return net.JoinHostPort(host, strconv.Itoa(defaultPort(transport))), host, ""
	}
	return host, host, ""
}

// prefixes parses a list of CIDR prefixes or addresses (an address is its
// own /32 or /128).
func (v *validator) prefixes(key string, ss []string) []netip.Prefix {
	var out []netip.Prefix
	for i, n := range ss {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			if a, aerr := netip.ParseAddr(n); aerr == nil {
				p, err = a.Prefix(a.BitLen())
			}
		}
		if err != nil {
			v.add(fmt.Sprintf("%s[%d]", key, i), strconv.Quote(n), "must be a CIDR prefix such as 203.0.113.0/24 or an address", ErrInvalid, nil)
			continue
		}
		out = append(out, p.Masked())
	}
	return out
}

// defaultFailoverOn are a group's failover statuses when it lists none:
// the upstream's trouble (timeout, failure, overload), never an answer
// about the call (486 Busy, 603 Decline), which another carrier would only
// repeat or ring again for.
var defaultFailoverOn = []int{408, 500, 502, 503, 504}

func (v *validator) buildGroups(gs []fileGroup, idx *upstreamIndex) []Group {
	var out []Group
	nameAt := map[string]int{}
	for i, g := range gs {
		key := fmt.Sprintf("group[%d]", i)
		o := Group{Name: g.Name, Default: g.Default, FailoverOn: g.FailoverOn}
		if v.uniqueName("group", i, g.Name, nameAt) {
			if _, clash := idx.byName[g.Name]; clash {
				v.add(key+".name", strconv.Quote(g.Name), "is an upstream's name; a group needs a name of its own", ErrDuplicate, nil)
			}
		}
		if len(g.Upstreams) == 0 {
			v.add(key+".upstreams", "", "is required: the upstream names tried, in order", ErrRequired, nil)
		}
		seen := map[string]bool{}
		for j, u := range g.Upstreams {
			ukey := fmt.Sprintf("%s.upstreams[%d]", key, j)
			switch _, ok := idx.byName[u]; {
			case !ok:
				v.add(ukey, strconv.Quote(u), "names no configured upstream", ErrInvalid, nil)
			case seen[u]:
				v.add(ukey, strconv.Quote(u), "is listed twice", ErrDuplicate, nil)
			}
			seen[u] = true
			o.Upstreams = append(o.Upstreams, u)
		}
		if o.FailoverOn == nil {
			o.FailoverOn = defaultFailoverOn
		}
		for j, c := range g.FailoverOn {
			if c < 300 || c > 699 || c == 401 || c == 407 {
				v.add(fmt.Sprintf("%s.failover_on[%d]", key, j), strconv.Itoa(c),
					"must be a final status from 300 to 699 (not 401 or 407, which are answered)", ErrInvalid, nil)
			}
		}
		o.Domains = idx.claimDomains(v, key, g.Domains)
		if g.Default {
			idx.claimDefault(v, key)
		}
		out = append(out, o)
	}
	return out
}
