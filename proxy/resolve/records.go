package resolve

import (
	"cmp"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// These functions turn DNS answers into what RFC 3263 uses of them. They do
// no I/O, so that a fuzz target can feed them any message: a record whose
// owner is not the name asked about is ignored (it answers no question of
// ours), and so is anything unusable (a port of 0, an unspecified or
// multicast address).

// Bounds on what one answer may expand to. A zone lists a handful of
// servers per service; these only stop a broken or hostile zone from
// turning one resolution into hundreds of queries or an unbounded list.
const (
	maxSRV   = 16 // SRV records used per name (each may need two queries)
	maxAddrs = 16 // addresses used per host name
	maxChain = 8  // CNAME hops followed inside one answer
)

// noTTL is the TTL before any record was used: larger than any real one.
const noTTL = math.MaxUint32

// service is one way to reach a SIP server that authproxy supports: the
// NAPTR service field naming it (RFC 3263 §4.1), the SRV prefix to ask
// (§4.2, RFC 2782) and the transport.
type service struct {
	naptr     string
	srvPrefix string
	transport string
}

// services are in the order a client without NAPTR records asks for their
// SRV records (RFC 3263 §4.1: the client's preference; TLS first, as the
// most secure).
var services = []service{
	{"SIPS+D2T", "_sips._tcp.", TLS},
	{"SIP+D2T", "_sip._tcp.", TCP},
	{"SIP+D2U", "_sip._udp.", UDP},
}

// serviceFor returns the service of an explicit transport.
func serviceFor(transport string) service {
	for _, s := range services {
		if s.transport == transport {
			return s
		}
	}
	return services[len(services)-1]
}

// naptrChoice is one NAPTR record authproxy can follow: its transport and
// the SRV name it replaces the domain with.
type naptrChoice struct {
	transport string
	srvName   string // fully qualified, lowercase
	ttl       uint32
}

// naptrChoices returns the NAPTR records of name in m that RFC 3263 §4.1
// lets authproxy use, most preferred first: flag "s" (the next lookup is
// SRV), a service authproxy supports, a replacement; sorted by order, then
// preference. Records with other flags or services are skipped, not errors.
func naptrChoices(m *dns.Msg, name string) []naptrChoice {
	type ranked struct {
		order, pref uint16
		c           naptrChoice
	}
	var rs []ranked
	for _, rr := range m.Answer {
		n, ok := rr.(*dns.NAPTR)
		if !ok || !sameName(n.Hdr.Name, name) || !strings.EqualFold(n.Flags, "s") {
			continue
		}
		i := slices.IndexFunc(services, func(s service) bool { return strings.EqualFold(s.naptr, n.Service) })
		if i < 0 || n.Replacement == "" || n.Replacement == "." {
			continue
		}
		c := naptrChoice{services[i].transport, canonical(n.Replacement), n.Hdr.Ttl}
		rs = append(rs, ranked{n.Order, n.Preference, c})
	}
	slices.SortStableFunc(rs, func(a, b ranked) int {
		return cmp.Or(cmp.Compare(a.order, b.order), cmp.Compare(a.pref, b.pref))
	})
	out := make([]naptrChoice, len(rs))
	for i, r := range rs {
		out[i] = r.c
	}
	return out
}

// srvAnswer is what an SRV answer says about a service.
type srvAnswer struct {
	// records are the usable SRV records, sorted by priority (stable, so
	// DNS order within a priority), at most maxSRV.
	records []*dns.SRV
	// noService is set when the only records name the target "." (RFC
	// 2782: the service is decidedly not available at this domain).
	noService bool
	ttl       uint32
}

// srvRecords reads the SRV records of name from m.
func srvRecords(m *dns.Msg, name string) srvAnswer {
	a := srvAnswer{ttl: noTTL}
	dot := false
	for _, rr := range m.Answer {
		s, ok := rr.(*dns.SRV)
		if !ok || !sameName(s.Hdr.Name, name) {
			continue
		}
		a.ttl = min(a.ttl, s.Hdr.Ttl)
		if s.Target == "." || s.Target == "" {
			dot = true
			continue
		}
		if s.Port == 0 || len(a.records) == maxSRV {
			continue
		}
		a.records = append(a.records, s)
	}
	slices.SortStableFunc(a.records, func(x, y *dns.SRV) int { return cmp.Compare(x.Priority, y.Priority) })
	a.noService = dot && len(a.records) == 0
	return a
}

// addresses returns the A and AAAA addresses of name in rrs (an answer or
// an additional section), following CNAMEs found there; IPv4 first, each
// family in DNS order, without duplicates, at most maxAddrs. ttl is the
// smallest TTL of the records used (CNAMEs included), noTTL if none.
func addresses(rrs []dns.RR, name string) (addrs []netip.Addr, ttl uint32) {
	ttl = noTTL
	name = canonical(name)
	for range maxChain {
		next := ""
		for _, rr := range rrs {
			if c, ok := rr.(*dns.CNAME); ok && sameName(c.Hdr.Name, name) {
				next, ttl = canonical(c.Target), min(ttl, c.Hdr.Ttl)
				break
			}
		}
		if next == "" {
			break
		}
		name = next
	}
	var v6 []netip.Addr
	for _, rr := range rrs {
		var ip netip.Addr
		var hdr *dns.RR_Header
		switch v := rr.(type) {
		case *dns.A:
			ip, _ = netip.AddrFromSlice(v.A.To4())
			hdr = &v.Hdr
		case *dns.AAAA:
			ip, _ = netip.AddrFromSlice(v.AAAA.To16())
			hdr = &v.Hdr
		default:
			continue
		}
		ip = ip.Unmap()
		if !sameName(hdr.Name, name) || !usable(ip) || slices.Contains(addrs, ip) || slices.Contains(v6, ip) {
			continue
		}
		if len(addrs)+len(v6) == maxAddrs {
			break
		}
		ttl = min(ttl, hdr.Ttl)
		if ip.Is4() {
			addrs = append(addrs, ip)
		} else {
			v6 = append(v6, ip)
		}
	}
	return append(addrs, v6...), ttl
}

// usable reports whether a request may be sent to ip: not the unspecified
// address, not multicast.
func usable(ip netip.Addr) bool {
	return ip.IsValid() && !ip.IsUnspecified() && !ip.IsMulticast() &&
		ip != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// addrTargets makes one target per address, all with the given transport,
// port and SRV rank, named after name.
func addrTargets(addrs []netip.Addr, name, transport string, port uint16, prio, weight uint16) []Target {
	ts := make([]Target, len(addrs))
	for i, ip := range addrs {
		ts[i] = Target{
			Transport: transport,
			Addr:      netip.AddrPortFrom(ip, port),
			Name:      strings.TrimSuffix(canonical(name), "."),
			Priority:  prio,
			Weight:    weight,
		}
	}
	return ts
}

// srvTargets expands each record of an SRV answer with the addresses its
// additional section holds for the record's target (glue): perRecord[i] are
// the targets of records[i], empty when the section has no address for it
// (the caller then asks A/AAAA). ttl is the smallest TTL of the glue used.
func srvTargets(m *dns.Msg, records []*dns.SRV, transport string) (perRecord [][]Target, ttl uint32) {
	ttl = noTTL
	perRecord = make([][]Target, len(records))
	for i, s := range records {
		addrs, t := addresses(m.Extra, s.Target)
		if len(addrs) == 0 {
			continue
		}
		ttl = min(ttl, t)
		perRecord[i] = addrTargets(addrs, s.Target, transport, s.Port, s.Priority, s.Weight)
	}
	return perRecord, ttl
}

// negativeTTL is how long a "no such records" answer may be trusted: the
// SOA in its authority section, as RFC 2308 §5 defines it; noTTL without
// one.
func negativeTTL(m *dns.Msg) uint32 {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl)
		}
	}
	return noTTL
}

// canonical is name fully qualified and lowercase, as records are compared.
func canonical(name string) string {
	return strings.ToLower(dns.Fqdn(name))
}

// sameName reports whether two domain names are equal (RFC 4343: case
// does not matter).
func sameName(a, b string) bool {
	return strings.EqualFold(dns.Fqdn(a), dns.Fqdn(b))
}
