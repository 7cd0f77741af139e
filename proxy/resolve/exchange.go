package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// systemServers returns the nameservers of /etc/resolv.conf. Its search
// list and ndots are not used: authproxy asks fully qualified names only.
func systemServers() ([]string, error) {
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, fmt.Errorf("read DNS servers: %w", err)
	}
	if len(cc.Servers) == 0 {
		return nil, fmt.Errorf("read DNS servers: no nameserver in %s", resolvConf)
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
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s, nil
	}
	if ip := net.ParseIP(strings.Trim(s, "[]")); ip != nil {
		return net.JoinHostPort(ip.String(), "53"), nil
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
	return fmt.Sprintf("%s from %s", dns.RcodeToString[e.rcode], e.server)
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

func (x *exchanger) exchangeNet(ctx context.Context, q *dns.Msg, server, network string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, x.timeout)
	defer cancel()
	c := &dns.Client{Net: network, Timeout: x.timeout, UDPSize: ednsSize}
	m, _, err := c.ExchangeContext(ctx, q, server)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", network, server, stable(err))
	}
	// The client matched the message id; the question must match too, or
	// the answer is about something else (RFC 5452 §9.1).
	if len(m.Question) != 1 || !sameName(m.Question[0].Name, q.Question[0].Name) ||
		m.Question[0].Qtype != q.Question[0].Qtype {
		return nil, fmt.Errorf("%s %s: answer to another question", network, server)
	}
	return m, nil
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
