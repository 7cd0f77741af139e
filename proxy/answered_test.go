package proxy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Thousands of answers (many slabs per shard and generation, answers of
// different lengths, IPv4 and IPv6 addresses) each come back byte for byte,
// with their address, for their own key and only for it; once Timer J plus
// at most a quarter of it has passed, the store lets them go.
func TestAnsweredStoreKeepsEachAnswer(t *testing.T) {
	const keep = 4 * time.Second
	s := newAnsweredStore(keep)
	t0 := time.Unix(1_000_000, 0)
	const n = 3000
	addr := func(i int) netip.AddrPort {
		if i%2 == 0 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), uint16(5060+i))
		}
		return netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i)), uint16(5060+i))
	}
	answer := func(i int) string {
		return fmt.Sprintf("SIP/2.0 202 Accepted\r\nX-Call: %d\r\n\r\n%s", i, strings.Repeat("x", i%97))
	}
	for i := range n {
		s.put(fmt.Sprintf("z9hG4bK-%d__10.0.0.1__5060__MESSAGE", i), []byte(answer(i)), addr(i), t0.Add(time.Duration(i)*time.Millisecond))
	}
	now := t0.Add(n * time.Millisecond)
	for i := n - 1; i >= 0; i-- {
		raw, to, ok := s.get(fmt.Sprintf("z9hG4bK-%d__10.0.0.1__5060__MESSAGE", i), now)
		if !ok || string(raw) != answer(i) || to != addr(i) {
			t.Fatalf("answer %d: %v %q to %v, want %q to %v", i, ok, raw, to, answer(i), addr(i))
		}
	}
	if _, _, ok := s.get("z9hG4bK-none__10.0.0.1__5060__MESSAGE", now); ok {
		t.Fatal("an answer for a key never put")
	}
	later := t0.Add(n*time.Millisecond + keep + keep/4 + time.Millisecond)
	if _, _, ok := s.get(fmt.Sprintf("z9hG4bK-%d__10.0.0.1__5060__MESSAGE", n-1), later); ok {
		t.Fatal("an answer kept past Timer J and a span")
	}
}
