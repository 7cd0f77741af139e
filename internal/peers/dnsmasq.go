package peers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DnsmasqConfig configures StartDnsmasq: the records dnsmasq serves. It
// reads no system file (no /etc/dnsmasq.conf, resolv.conf or hosts) and
// forwards nothing: a name outside Domains is REFUSED.
type DnsmasqConfig struct {
	// Host is the loopback IPv4 address to listen on; empty means
	// "127.0.0.1".
	Host string
	// Port is used for both UDP and TCP. Zero picks a free one.
	Port int
	// Domains are answered locally (--local=/domain/): a name under one
	// of them that has no record is NXDOMAIN. Empty means the domains of
	// the records' names (each name without its first label).
	Domains []string
	Hosts   []DnsmasqHost
	SRV     []DnsmasqSRV
	NAPTR   []DnsmasqNAPTR
	// TTL is the TTL of every record (--local-ttl, whole seconds). Zero
	// keeps dnsmasq's default for local records: 0.
	TTL time.Duration
}

// DnsmasqHost is an A and/or AAAA record (--host-record).
type DnsmasqHost struct {
	Name       string
	IPv4, IPv6 string // either may be empty
}

// DnsmasqSRV is an SRV record (--srv-host): Name is the whole owner name,
// e.g. "_sip._udp.example.test".
type DnsmasqSRV struct {
	Name, Target           string
	Port, Priority, Weight int
}

// DnsmasqNAPTR is a NAPTR record (--naptr-record); for SIP (RFC 3263),
// Flags "s", Service e.g. "SIP+D2U", Regexp empty and Replacement the SRV
// name.
type DnsmasqNAPTR struct {
	Name                string
	Order, Preference   int
	Flags, Service      string
	Regexp, Replacement string
}

// Dnsmasq is a running dnsmasq started by StartDnsmasq.
type Dnsmasq struct {
	cfg  DnsmasqConfig
	proc *Process
}

// StartDnsmasq runs dnsmasq in the foreground on cfg.Host and returns once
// it has answered a query over UDP and over TCP. Cleanup stops it (by its
// PID). If Port is zero and the chosen port is taken before dnsmasq binds
// it, StartDnsmasq tries again with another port.
func StartDnsmasq(t testing.TB, cfg DnsmasqConfig) *Dnsmasq {
	t.Helper()
	bin, err := LookPath("dnsmasq")
	if err != nil {
		t.Fatalf("peers: %v (call peers.Require first; %s)", err, InstallHint)
	}
	args, err := dnsmasqArgs(cfg)
	if err != nil {
		t.Fatalf("peers: StartDnsmasq: %v", err)
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	pickPort := cfg.Port == 0
	for attempt := 1; ; attempt++ {
		if pickPort {
			cfg.Port = FreePort(t, cfg.Host)
		}
		d, err := startDnsmasq(t, bin, cfg, args)
		if err == nil {
			return d
		}
		if pickPort && attempt < 3 && errors.Is(err, errAddrInUse) {
			t.Logf("peers: dnsmasq port %d was taken, retrying: %v", cfg.Port, err)
			continue
		}
		t.Fatalf("peers: StartDnsmasq %s:%d: %v", cfg.Host, cfg.Port, err)
	}
}

// dnsmasqArgs renders cfg's records as dnsmasq options (all but the
// address and port).
func dnsmasqArgs(cfg DnsmasqConfig) ([]string, error) {
	if cfg.Host != "" {
		if err := checkLoopback(cfg.Host); err != nil {
			return nil, err
		}
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("port %d out of range", cfg.Port)
	}
	var args []string
	names := map[string]bool{}
	add := func(name, opt string, fields ...string) error {
		for _, f := range fields {
			if strings.ContainsAny(f, ",\n\r") {
				return fmt.Errorf("%s: %q contains a comma or line break", opt, f)
			}
		}
		names[strings.TrimSuffix(strings.ToLower(name), ".")] = true
		args = append(args, "--"+opt+"="+strings.Join(fields, ","))
		return nil
	}
	var errs []error
	for _, h := range cfg.Hosts {
		fields := []string{h.Name}
		for _, ip := range []string{h.IPv4, h.IPv6} {
			if ip == "" {
				continue
			}
			if _, err := netip.ParseAddr(ip); err != nil {
				errs = append(errs, fmt.Errorf("host-record %s: %w", h.Name, err))
			}
			fields = append(fields, ip)
		}
		errs = append(errs, add(h.Name, "host-record", fields...))
	}
	for _, s := range cfg.SRV {
		// dnsmasq's order is target, port, priority, weight.
		errs = append(errs, add(s.Name, "srv-host", s.Name, s.Target,
			strconv.Itoa(s.Port), strconv.Itoa(s.Priority), strconv.Itoa(s.Weight)))
	}
	for _, n := range cfg.NAPTR {
		errs = append(errs, add(n.Name, "naptr-record", n.Name, strconv.Itoa(n.Order),
			strconv.Itoa(n.Preference), n.Flags, n.Service, n.Regexp, n.Replacement))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	domains := cfg.Domains
	if len(domains) == 0 {
		for name := range names {
			if _, parent, ok := strings.Cut(name, "."); ok && parent != "" {
				domains = append(domains, parent)
			}
		}
	}
	for _, d := range domains {
		args = append(args, "--local=/"+strings.Trim(d, ".")+"/")
	}
	if cfg.TTL > 0 {
		args = append(args, "--local-ttl="+strconv.Itoa(max(1, int(cfg.TTL/time.Second))))
	}
	return args, nil
}

func startDnsmasq(t testing.TB, bin string, cfg DnsmasqConfig, records []string) (*Dnsmasq, error) {
	t.Helper()
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	args := append([]string{
		"--keep-in-foreground",  // our child, stopped by its PID
		"--conf-file=/dev/null", // no /etc/dnsmasq.conf
		"--no-resolv",           // no upstream servers from resolv.conf
		"--no-hosts",            // no /etc/hosts
		"--listen-address=" + cfg.Host,
		"--bind-interfaces", // only that address: coexists with a resolver on :53
		"--port=" + strconv.Itoa(cfg.Port),
		"--pid-file=", // none: no file outside the test's directory
		"--log-facility=-",
		"--log-queries",
	}, records...)
	proc := StartProcess(t, ProcessConfig{Name: "dnsmasq " + addr, Path: bin, Args: args, Dir: t.TempDir()})
	d := &Dnsmasq{cfg: cfg, proc: proc}

	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout)
	defer cancel()
	err := d.waitReady(ctx)
	t.Logf("peers: dnsmasq %s ready after %v", addr, time.Since(start).Round(time.Millisecond))
	if err != nil {
		_ = proc.Stop()
		out := proc.Output()
		if strings.Contains(out, "Address already in use") {
			err = fmt.Errorf("%w: %v", errAddrInUse, err)
		}
		return nil, fmt.Errorf("not ready: %w\n--- dnsmasq output ---\n%s", err, out)
	}
	return d, nil
}

// waitReady waits for dnsmasq's "started" line (it binds its sockets
// before logging it), then asks version.bind (CHAOS TXT, which dnsmasq
// always answers) over UDP and TCP.
func (d *Dnsmasq) waitReady(ctx context.Context) error {
	if _, err := d.proc.WaitLine(ctx, func(l string) bool { return strings.Contains(l, "started, version") }); err != nil {
		return err
	}
	for _, network := range []string{"udp", "tcp"} {
		q := new(dns.Msg).SetQuestion("version.bind.", dns.TypeTXT)
		q.Question[0].Qclass = dns.ClassCHAOS
		c := &dns.Client{Net: network}
		m, _, err := c.ExchangeContext(ctx, q, d.Addr())
		if err != nil {
			return fmt.Errorf("probe over %s: %w", network, err)
		}
		if m.Rcode != dns.RcodeSuccess {
			return fmt.Errorf("probe over %s: %s", network, dns.RcodeToString[m.Rcode])
		}
	}
	return nil
}

// Addr returns "host:port", the same for UDP and TCP.
func (d *Dnsmasq) Addr() string {
	return net.JoinHostPort(d.cfg.Host, strconv.Itoa(d.cfg.Port))
}

// Log returns dnsmasq's output so far: one line per query (--log-queries).
func (d *Dnsmasq) Log() string { return d.proc.Output() }
