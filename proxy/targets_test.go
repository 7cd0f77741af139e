package proxy

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/proxy/resolve"
)

func TestParseUpstreamAddress(t *testing.T) {
	for _, tc := range []struct {
		addr, transport string
		host            string
		port            int
		given           bool
		bad             bool
	}{
		{"127.0.0.2:5070", "UDP", "127.0.0.2", 5070, true, false},
		{"127.0.0.2", "UDP", "127.0.0.2", 5060, false, false},
		{"127.0.0.2", "TLS", "127.0.0.2", 5061, false, false},
		{"[2001:DB8::1]:5080", "UDP", "2001:db8::1", 5080, true, false},
		{"[2001:db8::1]", "UDP", "2001:db8::1", 5060, false, false},
		{"Carrier.Example", "UDP", "carrier.example", 5060, false, false},
		{"pbx.example:5080", "TCP", "pbx.example", 5080, true, false},
		{"pbx.example:0", "UDP", "", 0, false, true},
		{"pbx.example:x", "UDP", "", 0, false, true},
	} {
		host, port, given, err := parseUpstreamAddress(tc.addr, tc.transport)
		if (err != nil) != tc.bad || host != tc.host || port != tc.port || given != tc.given {
			t.Errorf("parseUpstreamAddress(%q) = %q %d %v %v, want %q %d %v (error %v)", tc.addr, host, port, given, err, tc.host, tc.port, tc.given, tc.bad)
		}
	}
}

// TestSourceIndex: an upstream is found by the addresses it resolves to
// (here its IP literal) and by its AcceptFrom prefixes, the longest first;
// other sources belong to none.
func TestSourceIndex(t *testing.T) {
	a := &upstream{Upstream: Upstream{Name: "a", AcceptFrom: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8::/32")}}}
	a.literal = []resolve.Target{literalTarget(netip.MustParseAddr("192.0.2.1"), 5060, "UDP", "192.0.2.1")}
	b := &upstream{Upstream: Upstream{Name: "b", AcceptFrom: []netip.Prefix{netip.MustParsePrefix("203.0.113.128/25")}}}
	b.literal = []resolve.Target{literalTarget(netip.MustParseAddr("192.0.2.2"), 5060, "UDP", "192.0.2.2")}
	ix := buildSourceIndex([]*upstream{a, b}, &targets{})
	for _, tc := range []struct {
		src  string
		want []string
	}{
		{"192.0.2.1", []string{"a"}},
		{"192.0.2.2", []string{"b"}},
		{"::ffff:192.0.2.2", []string{"b"}},
		{"203.0.113.7", []string{"a"}},
		{"203.0.113.200", []string{"b", "a"}},
		{"2001:db8::99", []string{"a"}},
		{"198.51.100.1", nil},
		{"192.0.2.3", nil},
	} {
		var got []string
		for _, u := range ix.lookup(netip.MustParseAddr(tc.src)) {
			got = append(got, u.Name)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("lookup(%s) = %v, want %v", tc.src, got, tc.want)
		}
	}
}

// TestFailoverDecisions: which final statuses move a request on, and when.
func TestFailoverDecisions(t *testing.T) {
	ts := []resolve.Target{
		literalTarget(netip.MustParseAddr("192.0.2.1"), 5060, "UDP", "t1"),
		literalTarget(netip.MustParseAddr("192.0.2.2"), 5060, "UDP", "t2"),
	}
	groups, err := buildGroups([]UpstreamGroup{{Name: "g", Upstreams: []string{"a", "b"}}},
		[]*upstream{{Upstream: Upstream{Name: "a"}}, {Upstream: Upstream{Name: "b"}}})
	if err != nil {
		t.Fatal(err)
	}
	g := groups[0]
	for _, tc := range []struct {
		name        string
		att         attempts
		dialog      bool
		code        int
		want        bool
		canFailover bool
	}{
		{"503NextTarget", attempts{targets: ts}, false, 503, true, true},
		{"503LastTarget", attempts{targets: ts, ti: 1}, false, 503, false, false},
		{"500NoGroup", attempts{targets: ts}, false, 500, false, true},
		{"500Group", attempts{targets: ts, group: g, rest: g.members[1:]}, false, 500, true, true},
		{"486Group", attempts{targets: ts, group: g, rest: g.members[1:]}, false, 486, false, true},
		{"503GroupLastTarget", attempts{targets: ts, ti: 1, group: g, rest: g.members[1:]}, false, 503, true, true},
		{"GroupExhausted", attempts{targets: ts, ti: 1, group: g}, false, 500, false, false},
		{"AfterRinging", attempts{targets: ts, provisional: true}, false, 503, false, false},
		{"InDialog", attempts{targets: ts}, true, 503, false, false},
		{"Success", attempts{targets: ts, group: g, rest: g.members[1:]}, false, 200, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &forwarding{destination: destination{att: tc.att}}
			if tc.dialog {
				f.dlg = &dialog{}
			}
			if _, got := f.failoverOnStatus(tc.code); got != tc.want {
				t.Errorf("failoverOnStatus(%d) = %v, want %v", tc.code, got, tc.want)
			}
			if got := f.canFailover(); got != tc.canFailover {
				t.Errorf("canFailover = %v, want %v", got, tc.canFailover)
			}
		})
	}
}

func TestBuildGroups(t *testing.T) {
	ups := []*upstream{{Upstream: Upstream{Name: "a"}}, {Upstream: Upstream{Name: "b"}}}
	for _, tc := range []struct {
		name string
		g    UpstreamGroup
		bad  bool
	}{
		{"OK", UpstreamGroup{Name: "g", Upstreams: []string{"a", "b"}}, false},
		{"Empty", UpstreamGroup{Name: "g"}, true},
		{"Unknown", UpstreamGroup{Name: "g", Upstreams: []string{"a", "z"}}, true},
		{"Twice", UpstreamGroup{Name: "g", Upstreams: []string{"a", "a"}}, true},
		{"NameOfUpstream", UpstreamGroup{Name: "a", Upstreams: []string{"b"}}, true},
		{"Status407", UpstreamGroup{Name: "g", Upstreams: []string{"a"}, FailoverOn: []int{407}}, true},
		{"Status200", UpstreamGroup{Name: "g", Upstreams: []string{"a"}, FailoverOn: []int{200}}, true},
	} {
		_, err := buildGroups([]UpstreamGroup{tc.g}, ups)
		if (err != nil) != tc.bad {
			t.Errorf("%s: error %v, want error %v", tc.name, err, tc.bad)
		}
	}
	gs, _ := buildGroups([]UpstreamGroup{{Name: "g", Upstreams: []string{"a"}}}, ups)
	for _, c := range DefaultFailoverOn {
		if !gs[0].failsOverOn(c) {
			t.Errorf("default list lacks %d", c)
		}
	}
	if gs[0].failsOverOn(486) || gs[0].failsOverOn(603) {
		t.Error("a call's answer (486, 603) fails over by default")
	}
}

func TestRetryAfter(t *testing.T) {
	mk := func(code int, v string) *sip.Response {
		res := sip.NewResponse(code, "x")
		if v != "" {
			res.AppendHeader(sip.NewHeader("Retry-After", v))
		}
		return res
	}
	for _, tc := range []struct {
		res  *sip.Response
		want time.Duration
	}{
		{nil, 0},
		{mk(503, ""), 0},
		{mk(503, "120"), 2 * time.Minute},
		{mk(503, "18000;duration=3600"), maxAvoidFor},
		{mk(503, "30 (maintenance)"), 30 * time.Second},
		{mk(503, "soon"), 0},
		{mk(500, "120"), 0},
	} {
		if got := retryAfter(tc.res); got != tc.want {
			t.Errorf("retryAfter(%v) = %v, want %v", tc.res, got, tc.want)
		}
	}
}

// TestUsableTargets: targets of a family no listener serves are dropped;
// targets marked down or avoided come after none... unless all are.
func TestUsableTargets(t *testing.T) {
	p := &Proxy{listenState: listenState{listeners: []*boundListener{{transport: "UDP", ip: net.ParseIP("192.0.2.10")}}}}
	p.health = newHealthChecker(p, HealthCheck{})
	u := &upstream{Upstream: Upstream{Name: "u"}}
	t1 := literalTarget(netip.MustParseAddr("192.0.2.1"), 5060, "UDP", "t1")
	t2 := literalTarget(netip.MustParseAddr("192.0.2.2"), 5060, "UDP", "t2")
	v6 := literalTarget(netip.MustParseAddr("2001:db8::1"), 5060, "UDP", "t6")
	if got := p.usableTargets(u, []resolve.Target{v6, t1, t2}); !slices.Equal(got, []resolve.Target{t1, t2}) {
		t.Errorf("usable = %v, want the IPv4 ones", got)
	}
	p.health.failed(u, t1, "timeout", 0)
	if got := p.usableTargets(u, []resolve.Target{t1, t2}); !slices.Equal(got, []resolve.Target{t2}) {
		t.Errorf("usable = %v, want t2 (t1 failed a transaction)", got)
	}
	p.health.failed(u, t2, "503", time.Minute)
	if got := p.usableTargets(u, []resolve.Target{t1, t2}); !slices.Equal(got, []resolve.Target{t1, t2}) {
		t.Errorf("usable = %v, want both in order (all avoided)", got)
	}
	if got := p.usableTargets(u, []resolve.Target{v6}); len(got) != 0 {
		t.Errorf("usable = %v, want none (no IPv6 listener)", got)
	}
}

// TestAvoidanceEndsWhenPingsSeeTargetUp: a target avoided after a failed
// transaction, then marked down by pings, is a first choice again as soon
// as the pings mark it up (a restart), not only once avoidFor has passed.
// A target that was never marked down keeps its avoidance.
func TestAvoidanceEndsWhenPingsSeeTargetUp(t *testing.T) {
	p := &Proxy{log: slog.New(slog.DiscardHandler), cfg: Config{Observer: noObserver{}}}
	cfg := HealthCheck{Interval: time.Second, DownAfter: 1, UpAfter: 2}.withDefaults()
	p.health = newHealthChecker(p, cfg)
	u := &upstream{Upstream: Upstream{Name: "u"}}
	t1 := literalTarget(netip.MustParseAddr("192.0.2.1"), 5060, "UDP", "t1")
	t2 := literalTarget(netip.MustParseAddr("192.0.2.2"), 5060, "UDP", "t2")
	ups := []*upstream{u}
	round := func(err1 error) {
		p.health.record(ups, []pingResult{{u: u, t: t1, status: 200, err: err1}, {u: u, t: t2, status: 200}}, cfg, time.Now())
	}
	round(nil) // both up
	p.health.failed(u, t1, "timeout", 0)
	p.health.failed(u, t2, "timeout", 0)
	round(errors.New("timeout")) // t1 down
	round(nil)
	if !p.health.avoid(u, t1, time.Now()) {
		t.Fatalf("t1 not avoided after one answered ping (up_after 2)")
	}
	round(nil) // t1 up again
	if p.health.avoid(u, t1, time.Now()) {
		t.Errorf("t1 still avoided after the pings marked it up")
	}
	if !p.health.avoid(u, t2, time.Now()) {
		t.Errorf("t2, never marked down, lost its avoidance")
	}
}
