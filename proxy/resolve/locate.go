package resolve

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/miekg/dns"
)

// asker asks DNS one question: the exchanger, or a fuzz target's fake.
type asker interface {
	ask(ctx context.Context, name string, qtype uint16) (*dns.Msg, error)
}

// locator runs one RFC 3263 resolution: it asks DNS what it needs and
// remembers the smallest TTL of what it used, and why it found nothing.
type locator struct {
	x   asker
	ttl uint32 // smallest TTL of the records (and negative answers) used
	why string // the last reason a step gave nothing, for ErrNoTargets
}

// locate resolves a query for a domain name (not an IP literal) to its
// targets, sorted by priority and without duplicates, and the smallest TTL
// of the records used. It fails with an error wrapping ErrNoTargets when
// DNS says there is nothing, and with the DNS error when a server could not
// be asked: a failure never falls back to another lookup, which would turn
// a passing outage into a different answer.
func locate(ctx context.Context, x asker, q Query) ([]Target, uint32, error) {
	l := &locator{x: x, ttl: noTTL}
	var ts []Target
	var err error
	switch {
	case q.Port != 0:
		// §4.2: a port in the URI means A/AAAA only (and §4.1: no NAPTR).
		ts, err = l.host(ctx, q.Host, cmp.Or(q.Transport, UDP), uint16(q.Port), 0, 0)
	case q.Transport != "":
		ts, err = l.service(ctx, q.Host, serviceFor(q.Transport))
	default:
		ts, err = l.auto(ctx, q.Host)
	}
	if err != nil {
		return nil, 0, err
	}
	ts = dedup(ts)
	if len(ts) == 0 {
		return nil, 0, fmt.Errorf("%w: %s", ErrNoTargets, l.why)
	}
	slices.SortStableFunc(ts, func(a, b Target) int { return cmp.Compare(a.Priority, b.Priority) })
	return ts, l.ttl, nil
}

func (l *locator) use(ttl uint32) { l.ttl = min(l.ttl, ttl) }

// auto chooses the transport (RFC 3263 §4.1): the most preferred NAPTR
// record that authproxy supports and whose SRV name has targets; without
// one, the SRV records of each supported transport in turn; without any,
// UDP to the name's addresses on port 5060.
func (l *locator) auto(ctx context.Context, host string) ([]Target, error) {
	m, err := l.x.ask(ctx, host, dns.TypeNAPTR)
	if err != nil {
		return nil, err
	}
	for _, c := range naptrChoices(m, host) {
		ts, _, err := l.srv(ctx, c.srvName, c.transport)
		if err != nil || len(ts) > 0 {
			l.use(c.ttl)
			return ts, err
		}
	}
	// No usable NAPTR record: what there is, or the negative answer, says
	// how long that holds. An NXDOMAIN does not end the search: it should
	// mean that no name below exists either (RFC 8020), but a server that
	// answers so for an empty non-terminal would hide the SRV records.
	l.use(answerTTL(m))
	anySRV := false
	for _, svc := range services {
		ts, found, err := l.srv(ctx, svc.srvPrefix+canonical(host), svc.transport)
		if err != nil || len(ts) > 0 {
			return ts, err
		}
		anySRV = anySRV || found
	}
	if anySRV {
		return nil, nil // §4.2: SRV records exist, so no A/AAAA fallback
	}
	return l.host(ctx, host, UDP, uint16(DefaultPort(UDP)), 0, 0)
}

// service resolves a name for a known transport (RFC 3263 §4.2): its SRV
// records, or when there are none, its addresses on the default port.
func (l *locator) service(ctx context.Context, host string, svc service) ([]Target, error) {
	ts, found, err := l.srv(ctx, svc.srvPrefix+canonical(host), svc.transport)
	if err != nil || found {
		return ts, err
	}
	return l.host(ctx, host, svc.transport, uint16(DefaultPort(svc.transport)), 0, 0)
}

// srv asks the SRV records of name and expands each target to its
// addresses, from the answer's glue when it has them, else by asking A and
// AAAA (RFC 2782, RFC 3263 §4.2). found reports whether any SRV record
// exists, including a "." target that says there is no service.
func (l *locator) srv(ctx context.Context, name, transport string) (ts []Target, found bool, err error) {
	m, err := l.x.ask(ctx, name, dns.TypeSRV)
	if err != nil {
		return nil, false, err
	}
	a := srvRecords(m, name)
	if len(a.records) == 0 {
		if a.noService {
			l.use(a.ttl)
			l.why = fmt.Sprintf("%s SRV: no service (target \".\")", trimDot(name))
			return nil, true, nil
		}
		l.use(answerTTL(m))
		l.why = fmt.Sprintf("%s SRV: no records", trimDot(name))
		return nil, false, nil
	}
	l.use(a.ttl)
	perRecord, glueTTL := srvTargets(m, a.records, transport)
	l.use(glueTTL)
	for i, s := range a.records {
		if len(perRecord[i]) == 0 {
			if perRecord[i], err = l.host(ctx, s.Target, transport, s.Port, s.Priority, s.Weight); err != nil {
				return nil, true, err
			}
		}
		ts = append(ts, perRecord[i]...)
	}
	return ts, true, nil
}

// host asks the A and AAAA records of name and makes a target of each
// address. A name that does not exist, or has no address, gives none.
func (l *locator) host(ctx context.Context, name, transport string, port, prio, weight uint16) ([]Target, error) {
	var ts []Target
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		m, err := l.x.ask(ctx, name, qtype)
		if err != nil {
			return nil, err
		}
		addrs, ttl := addresses(m.Answer, name)
		if len(addrs) == 0 {
			l.use(answerTTL(m))
			if m.Rcode == dns.RcodeNameError {
				l.why = fmt.Sprintf("%s %s: %s", trimDot(name), dns.TypeToString[qtype], nxdomain)
				return nil, nil // no such name: no AAAA either
			}
			l.why = fmt.Sprintf("%s A/AAAA: no address", trimDot(name))
			continue
		}
		l.use(ttl)
		ts = append(ts, addrTargets(addrs, name, transport, port, prio, weight)...)
	}
	return ts, nil
}

// answerTTL is how long an answer that gave nothing usable holds: the
// smallest TTL of its records, or the negative-caching TTL of its SOA.
func answerTTL(m *dns.Msg) uint32 {
	ttl := negativeTTL(m)
	for _, rr := range m.Answer {
		ttl = min(ttl, rr.Header().Ttl)
	}
	return ttl
}

// dedup drops a target whose transport and address an earlier one has:
// two SRV records naming the same host, or A records repeated, must not
// make a request try one server twice.
func dedup(ts []Target) []Target {
	out := ts[:0]
	for _, t := range ts {
		if !slices.ContainsFunc(out, func(o Target) bool { return o.Transport == t.Transport && o.Addr == t.Addr }) {
			out = append(out, t)
		}
	}
	return out
}

func trimDot(name string) string {
	if len(name) > 1 && name[len(name)-1] == '.' {
		return name[:len(name)-1]
	}
	return name
}
