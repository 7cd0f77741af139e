package resolve

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/authproxy/authproxy/internal/dnstest"
)

// zone is the records of one test case, one group per name and type
// (dnstest.Server.Set).
type zone [][]string

// asked is a query count a test case expects.
type asked struct {
	name  string
	qtype uint16
	n     int
}

// TestLookup_RFC3263 resolves queries against zones, one case per rule of
// RFC 3263 §4.1 (transport) and §4.2 (SRV and addresses).
func TestLookup_RFC3263(t *testing.T) {
	srvUDP := []string{"_sip._udp.example.test. 60 IN SRV 10 50 5060 sip1.example.test."}
	srvTCP := []string{"_sip._tcp.example.test. 60 IN SRV 10 50 5062 sip1.example.test."}
	srvTLS := []string{"_sips._tcp.example.test. 60 IN SRV 10 50 5063 sip1.example.test."}
	sip1 := []string{"sip1.example.test. 60 IN A 127.0.0.2"}
	sip2 := []string{"sip2.example.test. 60 IN A 127.0.0.3"}
	bare := []string{"example.test. 60 IN A 127.0.0.9"}
	naptr := func(lines ...string) []string {
		for i, l := range lines {
			lines[i] = "example.test. 60 IN NAPTR " + l
		}
		return lines
	}
	tests := []struct {
		name  string
		zone  zone
		glue  bool
		q     Query
		want  []Target
		err   string // substring of the error, when one is expected
		asked []asked
	}{
		{
			name: "NAPTRPreferenceWithinOrder",
			zone: zone{naptr(`10 50 "s" "SIP+D2T" "" _sip._tcp.example.test.`,
				`10 10 "s" "SIP+D2U" "" _sip._udp.example.test.`), srvUDP, srvTCP, sip1},
			q:    Query{Host: "example.test"},
			want: []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50)},
		},
		{
			name: "NAPTROrderBeforePreference",
			zone: zone{naptr(`20 1 "s" "SIP+D2U" "" _sip._udp.example.test.`,
				`10 90 "s" "SIP+D2T" "" _sip._tcp.example.test.`), srvUDP, srvTCP, sip1},
			q:    Query{Host: "example.test"},
			want: []Target{target(TCP, "127.0.0.2:5062", "sip1.example.test", 10, 50)},
		},
		{
			name: "NAPTRUnsupportedServiceSkipped",
			zone: zone{naptr(`1 1 "s" "SIP+D2S" "" _sip._sctp.example.test.`,
				`2 1 "s" "SIPS+D2W" "" _sips._ws.example.test.`,
				`3 1 "s" "SIP+D2T" "" _sip._tcp.example.test.`), srvTCP, sip1},
			q:     Query{Host: "example.test"},
			want:  []Target{target(TCP, "127.0.0.2:5062", "sip1.example.test", 10, 50)},
			asked: []asked{{"_sip._sctp.example.test", dns.TypeSRV, 0}},
		},
		{
			name: "NAPTROtherFlagsSkipped",
			zone: zone{naptr(`1 1 "a" "SIP+D2T" "" sip1.example.test.`,
				`2 1 "u" "SIP+D2T" "!^.*$!sip:x@example.test!" .`,
				`3 1 "S" "SIP+D2U" "" _sip._udp.example.test.`), srvUDP, srvTCP, sip1},
			q:    Query{Host: "example.test"},
			want: []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50)},
		},
		{
			name: "NAPTRSIPS",
			zone: zone{naptr(`10 10 "s" "SIPS+D2T" "" _sips._tcp.example.test.`,
				`20 10 "s" "SIP+D2U" "" _sip._udp.example.test.`), srvUDP, srvTLS, sip1},
			q:    Query{Host: "example.test"},
			want: []Target{target(TLS, "127.0.0.2:5063", "sip1.example.test", 10, 50)},
		},
		{
			name: "NAPTRWithoutSRVNextRecord",
			zone: zone{naptr(`10 10 "s" "SIP+D2T" "" _sip._tcp.example.test.`,
				`20 10 "s" "SIP+D2U" "" _sip._udp.example.test.`), srvUDP, sip1},
			q:    Query{Host: "example.test"},
			want: []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50)},
		},
		{
			name: "NoNAPTRSRVPreferenceTLSFirst",
			zone: zone{srvUDP, srvTLS, sip1},
			q:    Query{Host: "example.test"},
			want: []Target{target(TLS, "127.0.0.2:5063", "sip1.example.test", 10, 50)},
		},
		{
			name:  "NoNAPTRSRVUDPOnly",
			zone:  zone{srvUDP, sip1},
			q:     Query{Host: "example.test"},
			want:  []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50)},
			asked: []asked{{"_sips._tcp.example.test", dns.TypeSRV, 1}, {"_sip._tcp.example.test", dns.TypeSRV, 1}},
		},
		{
			name: "NoNAPTRNoSRVUDPToAddress",
			zone: zone{bare},
			q:    Query{Host: "example.test"},
			want: []Target{target(UDP, "127.0.0.9:5060", "example.test", 0, 0)},
		},
		{
			name: "SRVPriorityOrder",
			zone: zone{{"_sip._udp.example.test. 60 IN SRV 20 50 5060 sip2.example.test.",
				"_sip._udp.example.test. 60 IN SRV 10 50 5060 sip1.example.test."}, sip1, sip2},
			q: Query{Host: "example.test", Transport: UDP},
			want: []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50),
				target(UDP, "127.0.0.3:5060", "sip2.example.test", 20, 50)},
		},
		{
			name: "SRVDotTargetIsNoService",
			zone: zone{{"_sip._tcp.example.test. 60 IN SRV 0 0 0 ."}, bare},
			q:    Query{Host: "example.test", Transport: TCP},
			err:  `no service (target ".")`,
			// RFC 2782: "." says the service is not there; no A fallback.
			asked: []asked{{"example.test", dns.TypeA, 0}},
		},
		{
			name: "SRVWithoutGlueAsksAddresses",
			zone: zone{srvUDP, {"sip1.example.test. 60 IN A 127.0.0.2", "sip1.example.test. 60 IN A 127.0.0.3"},
				{"sip1.example.test. 60 IN AAAA ::2"}},
			q: Query{Host: "example.test", Transport: UDP},
			want: []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50),
				target(UDP, "127.0.0.3:5060", "sip1.example.test", 10, 50),
				target(UDP, "[::2]:5060", "sip1.example.test", 10, 50)},
			asked: []asked{{"sip1.example.test", dns.TypeA, 1}, {"sip1.example.test", dns.TypeAAAA, 1}},
		},
		{
			name: "SRVGlueUsed",
			zone: zone{srvUDP, sip1, {"sip1.example.test. 60 IN AAAA ::2"}},
			glue: true,
			q:    Query{Host: "example.test", Transport: UDP},
			want: []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50),
				target(UDP, "[::2]:5060", "sip1.example.test", 10, 50)},
			asked: []asked{{"sip1.example.test", dns.TypeA, 0}, {"sip1.example.test", dns.TypeAAAA, 0}},
		},
		{
			name:  "SRVTargetWithoutAddressSkipped",
			zone:  zone{{"_sip._udp.example.test. 60 IN SRV 10 50 5060 gone.example.test.", srvUDP[0]}, sip1},
			q:     Query{Host: "example.test", Transport: UDP},
			want:  []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50)},
			asked: []asked{{"gone.example.test", dns.TypeAAAA, 0}}, // NXDOMAIN on A: no AAAA asked
		},
		{
			name: "TransportWithoutSRVUsesAddressOnDefaultPort",
			zone: zone{bare},
			q:    Query{Host: "example.test", Transport: TLS},
			want: []Target{target(TLS, "127.0.0.9:5061", "example.test", 0, 0)},
		},
		{
			name: "ExplicitPortSkipsNAPTRAndSRV",
			zone: zone{naptr(`10 10 "s" "SIP+D2T" "" _sip._tcp.example.test.`), srvTCP, sip1, bare},
			q:    Query{Host: "example.test", Port: 5080},
			want: []Target{target(UDP, "127.0.0.9:5080", "example.test", 0, 0)},
			asked: []asked{{"example.test", dns.TypeNAPTR, 0}, {"_sip._tcp.example.test", dns.TypeSRV, 0},
				{"_sip._udp.example.test", dns.TypeSRV, 0}},
		},
		{
			name: "ExplicitPortAndTransport",
			zone: zone{bare},
			q:    Query{Host: "Example.Test.", Port: 5080, Transport: "tcp"},
			want: []Target{target(TCP, "127.0.0.9:5080", "example.test", 0, 0)},
		},
		{
			name: "CNAMEFollowed",
			zone: zone{{"alias.example.test. 60 IN CNAME sip1.example.test."}, sip1},
			q:    Query{Host: "alias.example.test", Port: 5060},
			want: []Target{target(UDP, "127.0.0.2:5060", "alias.example.test", 0, 0)},
		},
		{
			name: "DuplicateAddressesOnce",
			zone: zone{{"_sip._udp.example.test. 60 IN SRV 10 50 5060 sip1.example.test.",
				"_sip._udp.example.test. 60 IN SRV 20 50 5060 alias.example.test."},
				{"alias.example.test. 60 IN CNAME sip1.example.test."}, sip1},
			q:    Query{Host: "example.test", Transport: UDP},
			want: []Target{target(UDP, "127.0.0.2:5060", "sip1.example.test", 10, 50)},
		},
		{
			name: "NXDOMAIN",
			zone: zone{sip1},
			q:    Query{Host: "nothing.example.test"},
			err:  "nothing.example.test A: name does not exist (NXDOMAIN)",
		},
		{
			name: "NoAddress",
			zone: zone{{"example.test. 60 IN TXT hello"}},
			q:    Query{Host: "example.test", Port: 5060},
			err:  "example.test A/AAAA: no address",
		},
		{name: "IPv4Literal", q: Query{Host: "192.0.2.1"}, want: []Target{target(UDP, "192.0.2.1:5060", "192.0.2.1", 0, 0)}},
		{name: "IPv6LiteralTLS", q: Query{Host: "[2001:db8::1]", Transport: TLS},
			want: []Target{target(TLS, "[2001:db8::1]:5061", "2001:db8::1", 0, 0)}},
		{name: "IPLiteralPort", q: Query{Host: "192.0.2.1", Port: 5070, Transport: TCP},
			want: []Target{target(TCP, "192.0.2.1:5070", "192.0.2.1", 0, 0)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := dnstest.New(t)
			for _, group := range tc.zone {
				srv.Set(group...)
			}
			srv.Glue(tc.glue)
			r := newTestResolver(t, srv, Config{})
			res, err := r.Lookup(t.Context(), tc.q)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrNoTargets) {
					t.Fatalf("Lookup(%v) = %v, %v; want an error wrapping ErrNoTargets with %q", tc.q, res.Targets, err, tc.err)
				}
			} else if err != nil {
				t.Fatalf("Lookup(%v): %v", tc.q, err)
			}
			if !slices.Equal(res.Targets, tc.want) {
				t.Errorf("Targets = %v\nwant %v", res.Targets, tc.want)
			}
			for _, a := range tc.asked {
				if got := srv.Queries(a.name, a.qtype); got != a.n {
					t.Errorf("%s %s asked %d times, want %d", a.name, dns.TypeToString[a.qtype], got, a.n)
				}
			}
			if _, lit := literal(res.Query); lit && srv.Queries("192.0.2.1", dns.TypeA) != 0 {
				t.Errorf("an IP literal was asked about")
			}
		})
	}
}
