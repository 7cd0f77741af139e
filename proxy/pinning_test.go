package proxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A pin answers for its branch only: a response over its transport from
// its address matches, from anywhere else it does not, an unknown branch
// is unknown; a released pin is gone at once, an INVITE's lingers for
// pinLinger; a host name is pinned to every address it resolves to.
func TestPinTable(t *testing.T) {
	p := &Proxy{sourceGuards: sourceGuards{pins: newPinTable()}, cfg: Config{UpstreamTimeout: time.Second, TimerC: time.Minute}}
	up := netip.MustParseAddrPort("127.0.0.2:5060")
	if err := p.pinRequest("z9hG4bK.a", sip.MESSAGE, "UDP", up.String()); err != nil {
		t.Fatal(err)
	}
	if err := p.pinRequest("z9hG4bK.b", sip.INVITE, "TCP", "[::ffff:127.0.0.3]:5070"); err != nil {
		t.Fatal(err)
	}
	if err := p.pinRequest("z9hG4bK.c", sip.OPTIONS, "UDP", "localhost:5080"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		branch, transport, from string
		want                    pinVerdict
	}{
		{"z9hG4bK.a", "UDP", "127.0.0.2:5060", pinMatch},
		{"z9hG4bK.a", "UDP", "[::ffff:127.0.0.2]:5060", pinMatch},
		{"z9hG4bK.a", "UDP", "127.0.0.2:5061", pinMismatch},
		{"z9hG4bK.a", "UDP", "127.0.0.9:5060", pinMismatch},
		{"z9hG4bK.a", "TCP", "127.0.0.2:5060", pinMismatch},
		{"z9hG4bK.b", "TCP", "127.0.0.3:5070", pinMatch},
		{"z9hG4bK.b", "TLS", "127.0.0.3:5070", pinMismatch},
		{"z9hG4bK.c", "UDP", "127.0.0.1:5080", pinMatch},
		{"z9hG4bK.c", "UDP", "127.0.0.1:5081", pinMismatch},
		{"z9hG4bK.unknown", "UDP", "127.0.0.2:5060", pinUnknown},
	} {
		if got := p.pins.check([]byte(tc.branch), tc.transport, netip.MustParseAddrPort(tc.from)); got != tc.want {
			t.Errorf("%s over %s from %s: %v, want %v", tc.branch, tc.transport, tc.from, got, tc.want)
		}
	}
	now := time.Now()
	p.pins.release("z9hG4bK.a", false, now)
	p.pins.release("z9hG4bK.b", true, now)
	if got := p.pins.check([]byte("z9hG4bK.a"), "UDP", up); got != pinUnknown {
		t.Errorf("released pin: %v", got)
	}
	p.pins.sweep(now.Add(pinLinger - time.Second))
	if got := p.pins.check([]byte("z9hG4bK.b"), "TCP", netip.MustParseAddrPort("127.0.0.3:5070")); got != pinMatch {
		t.Errorf("an INVITE's pin within pinLinger: %v", got)
	}
	p.pins.sweep(now.Add(pinLinger + time.Second))
	if got := p.pins.check([]byte("z9hG4bK.b"), "TCP", netip.MustParseAddrPort("127.0.0.3:5070")); got != pinUnknown {
		t.Errorf("an INVITE's pin after pinLinger: %v", got)
	}
}

// A full table refuses new pins (the request then fails) rather than let
// a response go unchecked, once expired pins are swept out of the way.
func TestPinTableBound(t *testing.T) {
	pins := newPinTable()
	now := time.Now()
	s := pins.shard([]byte("z9hG4bK.new"))
	for i := range pinMax / pinShards {
		s.m["old"+string(rune(i))] = pin{expires: now.Add(time.Minute)}
	}
	if err := pins.add("z9hG4bK.new", pin{expires: now.Add(time.Minute)}, now); err != errTooManyPins {
		t.Fatalf("add to a full shard: %v, want errTooManyPins", err)
	}
	if err := pins.add("z9hG4bK.new", pin{expires: now.Add(time.Minute)}, now.Add(2*time.Minute)); err != nil {
		t.Fatalf("add once the old pins expired: %v", err)
	}
}

// The datagram check looks at every branch of ours in the datagram,
// wherever it is: one pinned elsewhere drops the datagram.
func TestDatagramFromWhereSent(t *testing.T) {
	p := &Proxy{sourceGuards: sourceGuards{pins: newPinTable()}, cfg: Config{UpstreamTimeout: time.Second}}
	if err := p.pinRequest("z9hG4bK.ours", sip.MESSAGE, "UDP", "127.0.0.2:5060"); err != nil {
		t.Fatal(err)
	}
	up, other := netip.MustParseAddrPort("127.0.0.2:5060"), netip.MustParseAddrPort("127.0.0.9:5060")
	res := func(via string) []byte {
		return []byte("SIP/2.0 200 OK\r\n" + via + "From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")
	}
	for _, tc := range []struct {
		name string
		data []byte
		from netip.AddrPort
		want bool
	}{
		{"ours from the upstream", res("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.ours;rport\r\n"), up, true},
		{"ours from elsewhere", res("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.ours;rport\r\n"), other, false},
		{"quoted, compact, from elsewhere", res("v: SIP/2.0/UDP 127.0.0.1:5060;branch=\"z9hG4bK.ours\"\r\n"), other, false},
		{"ours second, from elsewhere", res("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK.theirs\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.ours\r\n"), other, false},
		{"not ours", res("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK.theirs\r\n"), other, true},
		{"ours with more after it", res("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.oursX\r\n"), other, true},
		{"no branch", []byte("OPTIONS sip:x SIP/2.0\r\n\r\n"), other, true},
		{"the cookie at the end", []byte("SIP/2.0 200 OK\r\nVia: x;branch=z9hG4bK"), other, true},
	} {
		if got := p.datagramFromWhereSent(tc.data, tc.from); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// FuzzDatagramFromWhereSent holds the response source check against
// sipgo's own reading of the datagram: whatever the bytes, when sipgo's
// parser (which matches client transactions) or the fast lane's scanner
// (which matches lane requests) would read the pinned branch as the top
// Via's, a datagram from elsewhere is dropped; from the pinned address
// nothing is; and the check never panics.
func FuzzDatagramFromWhereSent(f *testing.F) {
	const branch = "z9hG4bK.pinned0123456789"
	for _, s := range []string{
		"SIP/2.0 407 Proxy Authentication Required\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=" + branch + ";rport=5060\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\nContent-Length: 0\r\n\r\n",
		"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5060;branch=\"" + branch + "\"\r\nf: <sip:a@b>;tag=1\r\nt: <sip:c@d>;tag=2\r\ni: x\r\nCSeq: 1 MESSAGE\r\nl: 0\r\n\r\n",
		"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;\r\n branch=" + branch + "\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\n\r\n",
		"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK.other, SIP/2.0/UDP b;branch=" + branch + "\r\nCSeq: 1 MESSAGE\r\n\r\n",
		"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=" + branch + "\r\n\r\n",
		"sip/2.0 200 ok\r\nVIA: SIP/2.0/UDP x;BRANCH=" + branch + "\r\n\r\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, fromPinned bool) {
		p := &Proxy{sourceGuards: sourceGuards{pins: newPinTable()}, cfg: Config{UpstreamTimeout: time.Second}}
		if err := p.pinRequest(branch, sip.INVITE, "UDP", "127.0.0.2:5060"); err != nil {
			t.Fatal(err)
		}
		from := netip.MustParseAddrPort("127.0.0.9:5060")
		if fromPinned {
			from = netip.MustParseAddrPort("127.0.0.2:5060")
		}
		ok := p.datagramFromWhereSent(data, from)
		if fromPinned {
			if !ok {
				t.Fatal("a datagram from where the request went was dropped")
			}
			return
		}
		if !ok {
			return
		}
		if m, err := sip.ParseMessage(data); err == nil {
			if res, isRes := m.(*sip.Response); isRes && topViaBranch(res) == branch {
				t.Fatalf("sipgo reads the pinned branch, yet the datagram from elsewhere passes:\n%q", data)
			}
		}
		if r, scanned := scanResponse(data); scanned && string(r.branch) == branch {
			t.Fatalf("the fast lane reads the pinned branch, yet the datagram from elsewhere passes:\n%q", data)
		}
	})
}
