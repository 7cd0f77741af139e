package resolve

import (
	"cmp"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// msgAsker answers every question with one message, its question set to
// the one asked: whatever a server could say.
type msgAsker struct{ m *dns.Msg }

func (a msgAsker) ask(_ context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := a.m.Copy()
	m.Question = []dns.Question{{Name: dns.Fqdn(name), Qtype: qtype, Qclass: dns.ClassINET}}
	return m, nil
}

// fuzzQueries are resolved against each fuzzed answer: every path of
// RFC 3263 §4.1 and §4.2.
var fuzzQueries = []Query{
	{Host: "example.test"},
	{Host: "example.test", Transport: TLS},
	{Host: "example.test", Port: 5080, Transport: TCP},
}

// FuzzAnswerTargets feeds arbitrary DNS messages, as answers to every
// question, to the resolution that turns them into targets. Whatever the
// message, it must not panic, and every target must be usable: a valid
// unicast address, a supported transport, a port other than 0; sorted by
// priority, without duplicates.
func FuzzAnswerTargets(f *testing.F) {
	for _, m := range seedAnswers() {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := new(dns.Msg)
		if m.Unpack(data) != nil {
			return
		}
		for _, q := range fuzzQueries {
			ts, _, err := locate(t.Context(), msgAsker{m}, q)
			if err != nil && len(ts) > 0 {
				t.Fatalf("%v: targets %v with error %v", q, ts, err)
			}
			checkTargets(t, ts)
		}
	})
}

func checkTargets(t *testing.T, ts []Target) {
	t.Helper()
	for i, tg := range ts {
		if !usable(tg.Addr.Addr()) || tg.Addr.Addr().Is4In6() || tg.Addr.Port() == 0 {
			t.Fatalf("target %v: unusable address", tg)
		}
		if tg.Transport != UDP && tg.Transport != TCP && tg.Transport != TLS {
			t.Fatalf("target %v: transport %q", tg, tg.Transport)
		}
		if i > 0 && ts[i-1].Priority > tg.Priority {
			t.Fatalf("targets not sorted by priority: %v", ts)
		}
		for _, o := range ts[:i] {
			if o.Transport == tg.Transport && o.Addr == tg.Addr {
				t.Fatalf("target %v twice", tg)
			}
		}
	}
}

// seedAnswers are answers a SIP domain's servers give: NAPTR, SRV with
// glue, an SRV "." target, A and AAAA through a CNAME.
func seedAnswers() []*dns.Msg {
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		return r
	}
	reply := func(answer []dns.RR, extra ...dns.RR) *dns.Msg {
		m := new(dns.Msg).SetQuestion("example.test.", dns.TypeNAPTR)
		m.Response, m.Answer, m.Extra = true, answer, extra
		return m
	}
	return []*dns.Msg{
		reply([]dns.RR{
			rr(`example.test. 60 IN NAPTR 10 50 "s" "SIP+D2U" "" _sip._udp.example.test.`),
			rr(`example.test. 60 IN NAPTR 20 50 "s" "SIPS+D2T" "" _sips._tcp.example.test.`),
		}),
		reply([]dns.RR{
			rr("_sip._udp.example.test. 60 IN SRV 10 60 5060 sip1.example.test."),
			rr("_sips._tcp.example.test. 60 IN SRV 20 40 5061 sip2.example.test."),
		}, rr("sip1.example.test. 60 IN A 192.0.2.1"), rr("sip2.example.test. 60 IN AAAA 2001:db8::2")),
		reply([]dns.RR{rr("_sip._udp.example.test. 60 IN SRV 0 0 0 .")}),
		reply([]dns.RR{
			rr("example.test. 60 IN CNAME sip1.example.test."),
			rr("sip1.example.test. 60 IN A 192.0.2.1"),
			rr("sip1.example.test. 60 IN AAAA ::ffff:192.0.2.9"),
			rr("example.test. 60 IN A 0.0.0.0"),
		}),
	}
}

// FuzzOrder: whatever the targets and the random draws, Order returns a
// permutation of the targets with priorities non-decreasing.
func FuzzOrder(f *testing.F) {
	f.Add(uint64(1), []byte{0, 10, 0, 1, 0, 20, 1, 2, 1, 0, 2, 3})
	f.Add(uint64(7), []byte{5, 0, 0, 1, 5, 0, 0, 2, 5, 0, 1, 3, 2, 255, 3, 4})
	f.Fuzz(func(t *testing.T, seed uint64, data []byte) {
		// Four bytes a target: priority, weight, name, address.
		var res Result
		for b := data; len(b) >= 4; b = b[4:] {
			res.Targets = append(res.Targets, Target{
				Transport: UDP,
				Addr:      netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, b[3]}), 5060),
				Name:      string(rune('a' + b[2]%4)),
				Priority:  uint16(b[0] % 4),
				Weight:    binary.BigEndian.Uint16([]byte{b[1] % 4, b[1]}),
			})
		}
		got := res.Order(rand.New(rand.NewPCG(seed, seed)))
		if !slices.IsSortedFunc(got, byPriority) {
			t.Fatalf("priorities decrease: %v", got)
		}
		cmpTarget := func(a, b Target) int {
			return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(a.Weight, b.Weight),
				a.Addr.Compare(b.Addr), strings.Compare(a.Name, b.Name))
		}
		want := slices.SortedFunc(slices.Values(res.Targets), cmpTarget)
		if !slices.Equal(slices.SortedFunc(slices.Values(got), cmpTarget), want) {
			t.Fatalf("Order(%v) = %v: not a permutation", res.Targets, got)
		}
	})
}
