package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// resolvConf is where the system's DNS servers are read when
// Config.Servers is empty.
const resolvConf = "/etc/resolv.conf"

// ednsSize is the UDP payload size offered (RFC 6891). 1232 bytes fit any
// path's MTU without IP fragmentation (the DNS Flag Day 2020 value), and
// hold a typical NAPTR or SRV set with glue, so that TCP is needed only for
// unusually large answers.
const ednsSize = 1232

// exchanger asks DNS servers, one question at a time.
type exchanger struct {
	servers    []string // "host:port", tried in order
	serversErr error    // why there are no servers (no resolv.conf)
	timeout    time.Duration
}

// systemServers returns the nameservers of a resolv.conf file. Its search
// list and ndots are not used: authproxy asks fully qualified names only.
func systemServers(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read DNS servers: %w", err)
	}
	if len(cc.Servers) == 0 {
		return nil, fmt.Errorf("read DNS servers: no nameserver in %s", path)
	}
	out := make([]string, len(cc.Servers))
	for i, s := range cc.Servers {
		out[i] = net.JoinHostPort(s, cc.Port)
	}
	return out, nil
}

// serverAddr validates one Config.Servers entry and adds port 53 when it
// names none.
func serverAddr(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() != 0 {
		return ap.String(), nil
	}
	if ip, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return netip.AddrPortFrom(ip, 53).String(), nil
	}
	return "", fmt.Errorf("DNS server %q: want an IP address, with an optional port", s)
}

// rcodeError is an answer that says nothing about the name: the server
// failed (SERVFAIL), refused, or did not understand the question.
type rcodeError struct {
	server string
	rcode  int
}

func (e *rcodeError) Error() string {
	name, ok := dns.RcodeToString[e.rcode]
	if !ok {
		name = fmt.Sprintf("rcode %d", e.rcode)
	}
	return name + " from " + e.server
}

// ask sends one question to the servers in order and returns the first
// answer that says something about the name: NOERROR (records or none)
// or NXDOMAIN. A timeout, a network error or any other rcode moves on to
// the next server; when none answers, the last error is returned.
func (x *exchanger) ask(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype) // fully qualified: no search list
	q.SetEdns0(ednsSize, false)
	err := x.serversErr
	if err == nil {
		err = errors.New("no DNS server configured")
	}
	for _, server := range x.servers {
		var m *dns.Msg
		m, err = x.exchange(ctx, q, server)
		if err == nil {
			return m, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("%s %s: %w", strings.TrimSuffix(q.Question[0].Name, "."), dns.TypeToString[qtype], err)
}

// exchange asks one server over UDP, then over TCP when the UDP answer was
// truncated (RFC 1035 §4.2.1, RFC 7766 §5).
func (x *exchanger) exchange(ctx context.Context, q *dns.Msg, server string) (*dns.Msg, error) {
	m, err := x.exchangeNet(ctx, q, server, "udp")
	if err == nil && m.Truncated {
		m, err = x.exchangeNet(ctx, q, server, "tcp")
	}
	if err != nil {
		return nil, err
	}
	switch m.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return m, nil
	}
	return nil, &rcodeError{server, m.Rcode}
}

func (x *exchanger) exchangeNet(parent context.Context, q *dns.Msg, server, network string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(parent, x.timeout)
	defer cancel()
	c := &dns.Client{Net: network, Timeout: x.timeout, UDPSize: ednsSize}
	co, err := c.DialContext(ctx, server)
	var m *dns.Msg
	if err == nil {
		// The client obeys ctx's deadline only: a cancel (Run returning)
		// must end the read too.
		stop := context.AfterFunc(ctx, func() { _ = co.SetDeadline(time.Now()) })
		m, _, err = c.ExchangeWithConnContext(ctx, q, co)
		stop()
		co.Close()
	}
	switch {
	case err == nil:
	case parent.Err() != nil:
		return nil, fmt.Errorf("%s %s: %w", network, server, context.Cause(parent))
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("%s %s: no answer within %v: %w", network, server, x.timeout, os.ErrDeadlineExceeded)
	default:
		return nil, fmt.Errorf("%s %s: %w", network, server, stable(err))
	}
	// The client matched the message id; the question must match too, or
	// the answer is about something else (RFC 5452 §9.1). Some servers
	// leave it out of an error answer, which the rcode then tells.
	if !answers(m, q.Question[0]) {
		return nil, fmt.Errorf("%s %s: answer to another question", network, server)
	}
	return m, nil
}

// answers reports whether m is an answer to question q.
func answers(m *dns.Msg, q dns.Question) bool {
	switch len(m.Question) {
	case 0:
		return m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError
	case 1:
		return sameName(m.Question[0].Name, q.Name) && m.Question[0].Qtype == q.Qtype
	}
	return false
}

// stable drops the local address from a network error, so that the same
// failure reads the same at every retry (the resolver logs a failure when
// its text changes, not each time it recurs).
func stable(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Source != nil {
		c := *oe
		c.Source = nil
		return &c
	}
	return err
}

// nxdomain is the text of a "name does not exist" answer in errors, so that
// it reads differently from a timeout or a server failure.
const nxdomain = "name does not exist (NXDOMAIN)"
