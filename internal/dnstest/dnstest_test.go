package dnstest

import (
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authproxy/authproxy/internal/testutil"
)

// exchange asks s one question over network ("udp" or "tcp").
func exchange(t *testing.T, s *Server, network, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: timeout}
	m, _, err := c.ExchangeContext(t.Context(), new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype), s.Addr())
	return m, err
}

func TestServer(t *testing.T) {
	s := New(t)
	s.Set("_sip._udp.example.test. 60 IN SRV 10 50 5060 sip1.example.test.",
		"_sip._udp.example.test. 60 IN SRV 20 50 5060 sip2.example.test.")
	s.Set("sip1.example.test. 30 IN A 127.0.0.2")
	s.Set("alias.example.test. 30 IN CNAME sip1.example.test.")

	tests := []struct {
		name, network string
		qname         string
		qtype         uint16
		rcode         int
		answers       int
	}{
		{"SRV", "udp", "_sip._udp.example.test", dns.TypeSRV, dns.RcodeSuccess, 2},
		{"OverTCP", "tcp", "sip1.example.test", dns.TypeA, dns.RcodeSuccess, 1},
		{"CaseInsensitive", "udp", "SIP1.Example.Test", dns.TypeA, dns.RcodeSuccess, 1},
		{"NoData", "udp", "sip1.example.test", dns.TypeAAAA, dns.RcodeSuccess, 0},
		{"NXDOMAIN", "udp", "nothing.example.test", dns.TypeA, dns.RcodeNameError, 0},
		{"EmptyNonTerminal", "udp", "_udp.example.test", dns.TypeA, dns.RcodeSuccess, 0},
		{"CNAME", "udp", "alias.example.test", dns.TypeA, dns.RcodeSuccess, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := exchange(t, s, tc.network, tc.qname, tc.qtype, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if m.Rcode != tc.rcode || len(m.Answer) != tc.answers {
				t.Fatalf("rcode %s, %d answers, want %s, %d:\n%v",
					dns.RcodeToString[m.Rcode], len(m.Answer), dns.RcodeToString[tc.rcode], tc.answers, m)
			}
		})
	}
	if got := s.Queries("_sip._udp.example.test", dns.TypeSRV); got != 1 {
		t.Errorf("Queries(SRV) = %d, want 1", got)
	}
	if got := s.Queries("sip1.example.test.", dns.TypeA); got != 2 {
		t.Errorf("Queries(A) = %d, want 2", got)
	}
}

func TestServerModes(t *testing.T) {
	s := New(t)
	s.Set("_sip._udp.example.test. 60 IN SRV 10 50 5060 sip1.example.test.")
	s.Set("sip1.example.test. 30 IN A 127.0.0.2", "sip1.example.test. 30 IN A 127.0.0.3")
	s.Set("sip1.example.test. 30 IN AAAA ::1")

	t.Run("Replace", func(t *testing.T) {
		s.Set("sip1.example.test. 30 IN A 127.0.0.9")
		m, err := exchange(t, s, "udp", "sip1.example.test", dns.TypeA, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "127.0.0.9" {
			t.Fatalf("answer %v, want only 127.0.0.9", m.Answer)
		}
	})
	t.Run("Glue", func(t *testing.T) {
		s.Glue(true)
		defer s.Glue(false)
		m, err := exchange(t, s, "udp", "_sip._udp.example.test", dns.TypeSRV, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Extra) != 2 {
			t.Fatalf("additional section %v, want the A and AAAA of sip1", m.Extra)
		}
	})
	t.Run("Truncate", func(t *testing.T) {
		s.Truncate(true)
		defer s.Truncate(false)
		m, err := exchange(t, s, "udp", "_sip._udp.example.test", dns.TypeSRV, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !m.Truncated || len(m.Answer) != 0 {
			t.Fatalf("UDP answer %v, want TC and no records", m)
		}
		m, err = exchange(t, s, "tcp", "_sip._udp.example.test", dns.TypeSRV, 5*time.Second)
		if err != nil || m.Truncated || len(m.Answer) != 1 {
			t.Fatalf("TCP answer %v, %v; want the record", m, err)
		}
	})
	t.Run("Rcode", func(t *testing.T) {
		s.Rcode(dns.RcodeServerFailure)
		defer s.Rcode(dns.RcodeSuccess)
		m, err := exchange(t, s, "udp", "sip1.example.test", dns.TypeA, 5*time.Second)
		if err != nil || m.Rcode != dns.RcodeServerFailure {
			t.Fatalf("answer %v, %v; want SERVFAIL", m, err)
		}
	})
	t.Run("Blackhole", func(t *testing.T) {
		s.Blackhole(true)
		defer s.Blackhole(false)
		before := s.Queries("sip1.example.test", dns.TypeA)
		// The timeout is the test's subject: a dropped query gets no answer.
		if m, err := exchange(t, s, "udp", "sip1.example.test", dns.TypeA, 50*time.Millisecond); err == nil {
			t.Fatalf("blackholed server answered %v", m)
		}
		if got := s.Queries("sip1.example.test", dns.TypeA); got != before+1 {
			t.Fatalf("Queries = %d, want %d (dropped queries count)", got, before+1)
		}
	})
	t.Run("Hold", func(t *testing.T) {
		release := s.Hold()
		before := s.Queries("sip1.example.test", dns.TypeA)
		done := make(chan error, 1)
		go func() {
			_, err := exchange(t, s, "udp", "sip1.example.test", dns.TypeA, time.Minute)
			done <- err
		}()
		testutil.Eventually(t, "the held query to arrive", func() bool {
			return s.Queries("sip1.example.test", dns.TypeA) > before
		})
		select {
		case err := <-done:
			t.Fatalf("held query answered: %v", err)
		default:
		}
		release()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
