package tcpguard

import (
	"net/netip"
	"testing"
)

func TestAdmission(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	up, denied := netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("198.51.100.1")
	classify := func(src netip.Addr) Peer {
		switch src {
		case up:
			return Upstream
		case denied:
			return Refused
		}
		return Client
	}
	adm := NewAdmission(classify, 3, 2)
	steps := []struct {
		src      netip.Addr
		wantPeer Peer
		wantWhy  Refusal
	}{
		{a, Client, NotRefused},
		{a, Client, NotRefused},
		{a, Refused, PerSourceLimit},
		{b, Client, NotRefused},
		{b, Refused, TotalLimit},
		{up, Upstream, NotRefused}, // exempt from the caps
		{denied, Refused, SourceDenied},
	}
	for i, s := range steps {
		if peer, why := adm.Admit(s.src); peer != s.wantPeer || why != s.wantWhy {
			t.Fatalf("step %d: Admit(%v) = %v, %v; want %v, %v", i, s.src, peer, why, s.wantPeer, s.wantWhy)
		}
	}
	if got := adm.Open(); got != 4 {
		t.Fatalf("Open = %d, want 4 (three clients, one upstream)", got)
	}
	adm.Release(a, Client)
	if peer, why := adm.Admit(a); peer != Client || why != NotRefused {
		t.Fatalf("Admit after a Release = %v, %v; want Client admitted", peer, why)
	}
	adm.Release(up, Upstream)
	for _, src := range []netip.Addr{a, a, b} {
		adm.Release(src, Client)
	}
	if got := adm.Open(); got != 0 {
		t.Fatalf("Open after every Release = %d, want 0", got)
	}
	if len(adm.bySource) != 0 {
		t.Fatalf("per-source counts left after every Release: %v", adm.bySource)
	}
}
