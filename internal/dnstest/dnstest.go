// Package dnstest runs a small authoritative DNS server in the test process,
// for tests of RFC 3263 resolution (proxy/resolve) and of the proxy that
// uses it.
//
// A Server answers UDP and TCP on one port of 127.0.0.1 from a zone the
// test edits while it runs (Set, Remove). It can drop every query (Blackhole),
// answer UDP with the TC bit (Truncate), hold answers until released
// (Hold), answer with an error code (Rcode) and add SRV targets' addresses
// as glue (Glue). It counts the queries it receives per name and type
// (Queries), so a test can prove what was, or was not, asked.
//
// A name with no records, and none below it, is NXDOMAIN; a name with
// records of other types only, or only below it, is NOERROR with an empty
// answer (NODATA). A CNAME is followed
// inside the zone, as an authoritative server does.
package dnstest

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server is an in-process authoritative DNS server. Its methods are safe
// for concurrent use. It stops in the test's Cleanup.
type Server struct {
	t    testing.TB
	addr string

	mu      sync.Mutex
	zone    map[key][]dns.RR
	queries map[key]int
	drop    bool          // Blackhole
	trunc   bool          // Truncate
	glue    bool          // Glue
	rcode   int           // Rcode
	gate    chan struct{} // Hold: answers wait until it is closed; nil = open
}

// key is a (name, type) pair; name is fully qualified and lowercase.
type key struct {
	name  string
	qtype uint16
}

func keyOf(name string, qtype uint16) key {
	return key{strings.ToLower(dns.Fqdn(name)), qtype}
}

// New starts a Server on 127.0.0.1, UDP and TCP on the same free port, and
// returns once both listen. t.Cleanup stops it.
func New(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, zone: map[key][]dns.RR{}, queries: map[key]int{}}
	pc, l, err := listen()
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	s.addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve)}
	tcp := &dns.Server{Listener: l, Handler: dns.HandlerFunc(s.serve)}
	var wg sync.WaitGroup
	for _, srv := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		serveErr := make(chan error, 1)
		wg.Go(func() { serveErr <- srv.ActivateAndServe() })
		select {
		case <-started:
		case err := <-serveErr:
			t.Fatalf("dnstest: serve: %v", err)
		}
	}
	t.Cleanup(func() {
		s.release() // a held handler must not block Shutdown
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
		wg.Wait()
	})
	return s
}

// listen binds UDP on a free port of 127.0.0.1 and TCP on the same port,
// trying again when another process holds the TCP side.
func listen() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no port free for both udp and tcp: %w", lastErr)
}

// Addr returns "127.0.0.1:port", the same for UDP and TCP.
func (s *Server) Addr() string { return s.addr }

// Set parses records in zone file syntax, one per string, e.g.
// "_sip._udp.example.test. 60 IN SRV 10 50 5060 sip1.example.test.", and
// makes them the only records of their name and type: all records of one
// name and type must be in the same call. It fails the test on a syntax
// error.
func (s *Server) Set(records ...string) {
	s.t.Helper()
	rrs := make([]dns.RR, 0, len(records))
	for _, text := range records {
		rr, err := dns.NewRR(text)
		if err != nil || rr == nil {
			s.t.Fatalf("dnstest: record %q: %v", text, err)
		}
		rrs = append(rrs, rr)
	}
	s.SetRR(rrs...)
}

// SetRR is Set for records already parsed.
func (s *Server) SetRR(rrs ...dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	replaced := map[key]bool{}
	for _, rr := range rrs {
		h := rr.Header()
		k := keyOf(h.Name, h.Rrtype)
		if !replaced[k] {
			replaced[k] = true
			s.zone[k] = nil
		}
		s.zone[k] = append(s.zone[k], dns.Copy(rr))
	}
}

// Remove deletes the records of name and type.
func (s *Server) Remove(name string, qtype uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.zone, keyOf(name, qtype))
}

// Blackhole makes the server drop every query (counting it) while on, as a
// dead or unreachable server would.
func (s *Server) Blackhole(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop = on
}

// Truncate makes UDP answers carry the TC bit and no records while on
// (RFC 1035 §4.2.1), so a client must ask again over TCP, which is answered
// in full.
func (s *Server) Truncate(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trunc = on
}

// Glue makes SRV answers carry the A and AAAA records of their targets in
// the additional section while on, as RFC 2782 suggests and many servers do.
// Off by default.
func (s *Server) Glue(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.glue = on
}

// Rcode makes the server answer every query with rcode and no records (e.g.
// dns.RcodeServerFailure, dns.RcodeRefused); dns.RcodeSuccess returns to
// answering from the zone.
func (s *Server) Rcode(rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcode = rcode
}

// Hold makes queries wait (counted, unanswered) until release is called;
// then they are answered from the zone as it is at that moment. A test uses
// it to have several clients in flight at once. Cleanup releases.
func (s *Server) Hold() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate == nil {
		s.gate = make(chan struct{})
	}
	return s.release
}

func (s *Server) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate != nil {
		close(s.gate)
		s.gate = nil
	}
}

// Queries returns how many queries for name and type the server has
// received, over UDP and TCP together, including dropped ones.
func (s *Server) Queries(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[keyOf(name, qtype)]
}

// serve answers one query.
func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg).SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	s.mu.Lock()
	s.queries[keyOf(q.Name, q.Qtype)]++
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		<-gate
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drop {
		return
	}
	m := new(dns.Msg).SetReply(req)
	m.Authoritative = true
	switch {
	case s.rcode != dns.RcodeSuccess:
		m.Rcode = s.rcode
	case s.trunc && w.RemoteAddr().Network() == "udp":
		m.Truncated = true
	default:
		s.answer(m, q)
	}
	_ = w.WriteMsg(m)
}

// answer fills m from the zone: the records of q, following CNAMEs, and
// the glue of SRV records. Called with s.mu held.
func (s *Server) answer(m *dns.Msg, q dns.Question) {
	name := strings.ToLower(q.Name)
	for range 8 { // bounds a CNAME loop
		if rrs := s.zone[key{name, q.Qtype}]; len(rrs) > 0 {
			m.Answer = append(m.Answer, copyRRs(rrs)...)
			break
		}
		cname := s.zone[key{name, dns.TypeCNAME}]
		if len(cname) == 0 || q.Qtype == dns.TypeCNAME {
			if !s.exists(name) {
				m.Rcode = dns.RcodeNameError
			}
			break
		}
		m.Answer = append(m.Answer, copyRRs(cname[:1])...)
		name = strings.ToLower(cname[0].(*dns.CNAME).Target)
	}
	if !s.glue {
		return
	}
	for _, rr := range m.Answer {
		if srv, ok := rr.(*dns.SRV); ok {
			target := strings.ToLower(srv.Target)
			m.Extra = append(m.Extra, copyRRs(s.zone[key{target, dns.TypeA}])...)
			m.Extra = append(m.Extra, copyRRs(s.zone[key{target, dns.TypeAAAA}])...)
		}
	}
}

// exists reports whether name has records of any type, or names below it
// have (an empty non-terminal, RFC 8020). Called with s.mu held.
func (s *Server) exists(name string) bool {
	for k, rrs := range s.zone {
		if len(rrs) > 0 && (k.name == name || strings.HasSuffix(k.name, "."+name)) {
			return true
		}
	}
	return false
}

func copyRRs(rrs []dns.RR) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		out[i] = dns.Copy(rr)
	}
	return out
}
