package proxy

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

func mustURI(t *testing.T, s string) sip.Uri {
	t.Helper()
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		t.Fatalf("parse %q: %v", s, err)
	}
	return u
}

func TestBindingTable(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	contact := mustURI(t, "sip:1001@192.0.2.10:5062;transport=udp")
	newBinding := func(aor string, c sip.Uri, ttl time.Duration) *binding {
		ck := contactKey(c)
		return &binding{aor: aor, contact: c, ckey: ck, alias: aliasFor(aor, ck), upstream: "pbx",
			transport: "UDP", addr: "198.51.100.7:40000", expires: now.Add(ttl)}
	}

	t.Run("LookupByContactIgnoresParams", func(t *testing.T) {
		tb := newBindingTable()
		tb.put(newBinding("1001@pbx", contact, time.Minute), now)
		b := tb.lookup(mustURI(t, "sip:1001@192.0.2.10:5062"), false, now)
		if b == nil || b.addr != "198.51.100.7:40000" {
			t.Fatalf("lookup = %+v, want the binding", b)
		}
		if b := tb.lookup(mustURI(t, "sip:1002@192.0.2.10:5062"), false, now); b != nil {
			t.Fatalf("other user matched: %+v", b)
		}
	})
	t.Run("LookupByAlias", func(t *testing.T) {
		tb := newBindingTable()
		nb := newBinding("1001@pbx", contact, time.Minute)
		tb.put(nb, now)
		if b := tb.lookup(sip.Uri{Scheme: "sip", User: nb.alias, Host: "203.0.113.1"}, true, now); b == nil {
			t.Fatal("alias at our address not found")
		}
		if b := tb.lookup(sip.Uri{Scheme: "sip", User: nb.alias, Host: "203.0.113.1"}, false, now); b != nil {
			t.Fatal("alias matched at an address that is not ours")
		}
	})
	t.Run("ExpiryRemovesMapping", func(t *testing.T) {
		tb := newBindingTable()
		tb.put(newBinding("1001@pbx", contact, time.Second), now)
		if tb.lookup(contact, false, now) == nil {
			t.Fatal("live binding not found")
		}
		later := now.Add(time.Second)
		if b := tb.lookup(contact, false, later); b != nil {
			t.Fatal("expired binding still routes")
		}
		tb.sweep(later)
		if n := len(tb.snapshot()); n != 0 {
			t.Fatalf("%d bindings after sweep, want 0", n)
		}
		if len(tb.byContact) != 0 || len(tb.byAlias) != 0 || len(tb.byAOR) != 0 {
			t.Fatal("indexes keep a swept binding")
		}
	})
	t.Run("RemoveAndWildcard", func(t *testing.T) {
		tb := newBindingTable()
		other := mustURI(t, "sip:1001@192.0.2.11")
		tb.put(newBinding("1001@pbx", contact, time.Minute), now)
		tb.put(newBinding("1001@pbx", other, time.Minute), now)
		tb.put(newBinding("1002@pbx", mustURI(t, "sip:1002@192.0.2.12"), time.Minute), now)
		viaOther := newBinding("1001@pbx", mustURI(t, "sip:1001@192.0.2.13"), time.Minute)
		viaOther.upstream = "pbx-b"
		tb.put(viaOther, now)
		tb.remove("1001@pbx", contactKey(contact))
		if tb.lookup(contact, false, now) != nil || tb.lookup(other, false, now) == nil {
			t.Fatal("remove took the wrong binding")
		}
		tb.removeAOR("1001@pbx", "pbx")
		if tb.lookup(other, false, now) != nil {
			t.Fatal("Contact: * left a binding of the AOR")
		}
		if tb.lookup(viaOther.contact, false, now) == nil {
			t.Fatal("Contact: * through pbx removed a binding made through pbx-b")
		}
		if n := len(tb.snapshot()); n != 2 {
			t.Fatalf("%d bindings, want the other AOR's and pbx-b's", n)
		}
		tb.removeAOR("1001@pbx", "pbx-b")
		if len(tb.byAOR) != 1 || len(tb.byAOR["1002@pbx"]) != 1 || tb.byAOR["1002@pbx"][0].aor != "1002@pbx" {
			t.Fatalf("AOR index %v, want 1002@pbx's binding alone", tb.byAOR)
		}
	})
	t.Run("RemoveFlow", func(t *testing.T) {
		// A WebSocket that closes takes the bindings registered over it,
		// and only those.
		tb := newBindingTable()
		onFlow := func(aor string, c sip.Uri, addr string) *binding {
			b := newBinding(aor, c, time.Minute)
			b.transport, b.addr = "WS", addr
			return b
		}
		tb.put(onFlow("1001@pbx", contact, "203.0.113.5:50000"), now)
		tb.put(onFlow("1002@pbx", mustURI(t, "sip:x@abc.invalid;transport=ws"), "203.0.113.5:50000"), now)
		kept := onFlow("1003@pbx", mustURI(t, "sip:y@def.invalid;transport=ws"), "203.0.113.5:50001")
		tb.put(kept, now)
		if n := len(tb.removeFlow("WS", "203.0.113.5:50000")); n != 2 {
			t.Fatalf("removeFlow removed %d, want 2", n)
		}
		if n := len(tb.removeFlow("WSS", "203.0.113.5:50001")); n != 0 {
			t.Fatalf("removeFlow of another transport removed %d", n)
		}
		if bs := tb.snapshot(); len(bs) != 1 || bs[0].AOR != "1003@pbx" {
			t.Fatalf("bindings %+v, want 1003's alone", bs)
		}
		if len(tb.byFlow) != 1 || len(tb.byAOR) != 1 || len(tb.byContact) != 1 {
			t.Fatalf("indexes keep removed bindings: flows %d, AORs %d, contacts %d", len(tb.byFlow), len(tb.byAOR), len(tb.byContact))
		}
	})
	t.Run("RefreshReplaces", func(t *testing.T) {
		tb := newBindingTable()
		tb.put(newBinding("1001@pbx", contact, time.Second), now)
		nb := newBinding("1001@pbx", contact, time.Hour)
		nb.addr = "198.51.100.7:40001" // the NAT mapping changed
		tb.put(nb, now)
		if n := len(tb.snapshot()); n != 1 {
			t.Fatalf("%d bindings after refresh, want 1", n)
		}
		if b := tb.lookup(contact, false, now.Add(time.Minute)); b == nil || b.addr != "198.51.100.7:40001" {
			t.Fatalf("refresh not applied: %+v", b)
		}
	})
	t.Run("Bounded", func(t *testing.T) {
		tb := newBindingTable()
		for i := range maxBindings {
			u := sip.Uri{Scheme: "sip", User: "u", Host: "192.0.2.1", Port: 1 + i%60000}
			if !tb.put(newBinding("aor"+string(rune('a'+i/60000)), u, time.Second), now) {
				t.Fatalf("table full after %d", i)
			}
		}
		if tb.put(newBinding("x@pbx", contact, time.Minute), now) {
			t.Fatal("put beyond maxBindings accepted while all are live")
		}
		// Once they expired, a new one evicts them.
		if !tb.put(newBinding("x@pbx", contact, time.Minute), now.Add(2*time.Second)) {
			t.Fatal("put refused although every binding had expired")
		}
	})
}

func TestAliasStable(t *testing.T) {
	a := aliasFor("1001@pbx", "1001@192.0.2.10:5060")
	if a != aliasFor("1001@pbx", "1001@192.0.2.10:5060") || a == aliasFor("1002@pbx", "1001@192.0.2.10:5060") {
		t.Fatal("alias not a stable function of AOR and contact")
	}
}

// TestReachAt: a contact is reached at the REGISTER's source unless it is
// a third party's and nothing shows a NAT (Via sent-by equal to the
// source, host and port; an IP Contact; not a private Contact behind a
// public source).
func TestReachAt(t *testing.T) {
	for _, tc := range []struct {
		name, via, src, contact string
		wantTP, wantAddr        string
	}{
		{"SameHost", "198.51.100.7:5060", "198.51.100.7:5060", "sip:u@198.51.100.7:5070", "UDP", "198.51.100.7:5060"},
		{"ThirdParty", "198.51.100.7:5060", "198.51.100.7:5060", "sip:u@203.0.113.9:5062", "UDP", "203.0.113.9:5062"},
		{"ThirdPartyTCPDefaultPort", "198.51.100.7:5060", "198.51.100.7:5060", "sip:u@203.0.113.9;transport=tcp", "TCP", "203.0.113.9:5060"},
		{"ThirdPartyIPv6", "[2001:db8::7]:5060", "[2001:db8::7]:5060", "sip:u@[2001:db8::9]:5062", "UDP", "[2001:db8::9]:5062"},
		{"ViaHostRewritten", "10.0.0.7:5060", "198.51.100.7:5060", "sip:u@203.0.113.9:5062", "UDP", "198.51.100.7:5060"},
		{"ViaPortRewritten", "198.51.100.7:5060", "198.51.100.7:40000", "sip:u@203.0.113.9:5062", "UDP", "198.51.100.7:40000"},
		{"ViaDefaultPort", "198.51.100.7", "198.51.100.7:5060", "sip:u@203.0.113.9", "UDP", "203.0.113.9:5060"},
		{"ViaName", "phone.example.com:5060", "198.51.100.7:5060", "sip:u@203.0.113.9:5062", "UDP", "198.51.100.7:5060"},
		{"ContactName", "198.51.100.7:5060", "198.51.100.7:5060", "sip:u@phone.example.com", "UDP", "198.51.100.7:5060"},
		{"PrivateContactPublicSource", "198.51.100.7:5060", "198.51.100.7:5060", "sip:u@192.168.1.20:5060", "UDP", "198.51.100.7:5060"},
		{"SharedContactPublicSource", "198.51.100.7:5060", "198.51.100.7:5060", "sip:u@100.64.1.2:5060", "UDP", "198.51.100.7:5060"},
		{"PrivateBoth", "10.1.0.7:5060", "10.1.0.7:5060", "sip:u@10.2.0.9:5060", "UDP", "10.2.0.9:5060"},
		{"LoopbackBoth", "127.0.0.1:5999", "127.0.0.1:5999", "sip:u@127.0.0.5:5062", "UDP", "127.0.0.5:5062"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := sip.NewRequest(sip.REGISTER, mustURI(t, "sip:example.com"))
			host, port := tc.via, 0
			if h, p, err := net.SplitHostPort(tc.via); err == nil {
				host = h
				port, _ = strconv.Atoi(p)
			}
			req.AppendHeader(ourVia("UDP", host, port, "z9hG4bKx"))
			req.SetTransport("UDP")
			req.SetSource(tc.src)
			tp, addr := reachAt(req, mustURI(t, tc.contact))
			if tp != tc.wantTP || addr != tc.wantAddr {
				t.Errorf("reachAt = %s %s, want %s %s", tp, addr, tc.wantTP, tc.wantAddr)
			}
		})
	}
}
