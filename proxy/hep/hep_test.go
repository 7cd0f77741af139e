package hep_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/proxy/hep"
)

const invite = "INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: a84b4c76e66710\r\nContent-Length: 0\r\n\r\n"

// canonical is p with its addresses as Append encodes them: two IPv4
// addresses unmapped, otherwise both in their 16-byte form.
func canonical(p hep.Packet) hep.Packet {
	four := p.Src.Addr().Unmap().Is4() && p.Dst.Addr().Unmap().Is4()
	for _, ap := range []*netip.AddrPort{&p.Src, &p.Dst} {
		a := netip.AddrFrom16(ap.Addr().As16())
		if four {
			a = a.Unmap()
		}
		*ap = netip.AddrPortFrom(a, ap.Port())
	}
	return p
}

func samePacket(t *testing.T, got, want hep.Packet) {
	t.Helper()
	if got.Src != want.Src || got.Dst != want.Dst {
		t.Errorf("addresses = %s -> %s, want %s -> %s", got.Src, got.Dst, want.Src, want.Dst)
	}
	if got.Proto != want.Proto || got.AgentID != want.AgentID || got.AuthKey != want.AuthKey || got.CorrelationID != want.CorrelationID {
		t.Errorf("got proto %d agent %d key %q correlation %q, want %d %d %q %q",
			got.Proto, got.AgentID, got.AuthKey, got.CorrelationID, want.Proto, want.AgentID, want.AuthKey, want.CorrelationID)
	}
	if !got.Time.Equal(want.Time.Truncate(time.Microsecond)) {
		t.Errorf("time = %v, want %v", got.Time, want.Time.Truncate(time.Microsecond))
	}
	if !bytes.Equal(got.Payload, want.Payload) {
		t.Errorf("payload = %q, want %q", got.Payload, want.Payload)
	}
}

func TestAppend_RoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 3, 12, 0, 0, 123456789, time.UTC)
	tests := []struct {
		name string
		p    hep.Packet
	}{
		{"UDPv4", hep.Packet{
			Src: netip.MustParseAddrPort("192.0.2.10:5060"), Dst: netip.MustParseAddrPort("198.51.100.1:5080"),
			Proto: hep.ProtoUDP, Time: at, Payload: []byte(invite),
		}},
		{"TCPv6AllChunks", hep.Packet{
			Src: netip.MustParseAddrPort("[2001:db8::1]:40000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:5060"),
			Proto: hep.ProtoTCP, Time: at, AgentID: 2001, AuthKey: "myHep", CorrelationID: "a84b4c76e66710",
			Payload: []byte(invite),
		}},
		{"MappedIPv4IsIPv4", hep.Packet{
			Src: netip.MustParseAddrPort("[::ffff:127.0.0.1]:5060"), Dst: netip.MustParseAddrPort("127.0.0.2:5060"),
			Proto: hep.ProtoUDP, Time: at, Payload: []byte("x"),
		}},
		{"MixedFamiliesAsIPv6", hep.Packet{
			Src: netip.MustParseAddrPort("127.0.0.1:5060"), Dst: netip.MustParseAddrPort("[::1]:5060"),
			Proto: hep.ProtoUDP, Time: at, Payload: []byte("x"),
		}},
		{"EmptyPayload", hep.Packet{
			Src: netip.MustParseAddrPort("127.0.0.1:1"), Dst: netip.MustParseAddrPort("127.0.0.1:2"),
			Proto: hep.ProtoUDP, Time: time.Unix(0, 0),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := hep.Append([]byte("prefix"), &tt.p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(b, []byte("prefix")) {
				t.Fatalf("Append lost what dst held: %q", b[:6])
			}
			b = b[len("prefix"):]
			if got, want := len(b), tt.p.Size(); got != want {
				t.Fatalf("encoded %d bytes, Size says %d", got, want)
			}
			got, err := hep.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			samePacket(t, got, canonical(tt.p))
		})
	}
}

// TestAppend_Bytes pins the encoding of one packet, written out chunk by
// chunk from the HEPv3 specification.
func TestAppend_Bytes(t *testing.T) {
	p := hep.Packet{
		Src: netip.MustParseAddrPort("10.0.0.1:5060"), Dst: netip.MustParseAddrPort("10.0.0.2:5080"),
		Proto: hep.ProtoUDP, Time: time.Unix(0x5f5e1000, 0x0001e240*1000), AgentID: 7,
		CorrelationID: "c1", Payload: []byte("SIP"),
	}
	want := strings.Join([]string{
		"48455033", "006e", // "HEP3", total length 110
		"0000 0001 0007 02",       // family AF_INET
		"0000 0002 0007 11",       // protocol UDP
		"0000 0003 000a 0a000001", // source 10.0.0.1
		"0000 0004 000a 0a000002", // destination 10.0.0.2
		"0000 0007 0008 13c4",     // source port 5060
		"0000 0008 0008 13d8",     // destination port 5080
		"0000 0009 000a 5f5e1000", // seconds
		"0000 000a 000a 0001e240", // microseconds 123456
		"0000 000b 0007 01",       // SIP
		"0000 000c 000a 00000007", // agent 7
		"0000 0011 0008 6331",     // correlation "c1"
		"0000 000f 0009 534950",   // payload "SIP"
	}, "")
	got, err := hep.Append(nil, &p)
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.ReplaceAll(want, " ", ""); hex.EncodeToString(got) != w {
		t.Fatalf("Append =\n%x\nwant\n%s", got, w)
	}
}

func TestAppend_Refuses(t *testing.T) {
	v4 := netip.MustParseAddrPort("127.0.0.1:5060")
	tests := []struct {
		name  string
		p     hep.Packet
		isBig bool
	}{
		{"TooLarge", hep.Packet{Src: v4, Dst: v4, Payload: make([]byte, hep.MaxPacketSize)}, true},
		{"NoAddress", hep.Packet{Dst: v4}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := hep.Append(nil, &tt.p)
			if err == nil {
				t.Fatalf("Append = %x, want an error", b)
			}
			if got := errors.Is(err, hep.ErrTooLarge); got != tt.isBig {
				t.Fatalf("errors.Is(%v, ErrTooLarge) = %v, want %v", err, got, tt.isBig)
			}
			if len(b) != 0 {
				t.Fatalf("Append appended %d bytes on error", len(b))
			}
		})
	}
}

func TestDecode_Malformed(t *testing.T) {
	good, err := hep.Append(nil, &hep.Packet{
		Src: netip.MustParseAddrPort("127.0.0.1:5060"), Dst: netip.MustParseAddrPort("127.0.0.2:5060"),
		Proto: hep.ProtoUDP, Time: time.Now(), Payload: []byte(invite),
	})
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := map[string][]byte{
		"Empty":       nil,
		"NotHEP3":     edit(func(b []byte) []byte { b[3] = '2'; return b }),
		"TotalLength": edit(func(b []byte) []byte { b[5]++; return b }),
		"Truncated":   edit(func(b []byte) []byte { b = b[:len(b)-1]; b[5]--; return b }),
		"ChunkTooShort": edit(func(b []byte) []byte {
			b[6+5] = 5 // the family chunk's length, under its header's
			return b
		}),
		"WrongFamily": edit(func(b []byte) []byte { b[6+6] = hep.FamilyIPv6; return b }),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := hep.Decode(b); !errors.Is(err, hep.ErrMalformed) {
				t.Fatalf("Decode = %v, want ErrMalformed", err)
			}
		})
	}
}

// FuzzDecode holds Decode to never panic, and a decoded packet to encode
// back to a packet that decodes the same.
func FuzzDecode(f *testing.F) {
	for _, p := range []hep.Packet{
		{Src: netip.MustParseAddrPort("127.0.0.1:5060"), Dst: netip.MustParseAddrPort("127.0.0.2:5060"),
			Proto: hep.ProtoUDP, Time: time.Unix(1700000000, 5000), Payload: []byte(invite)},
		{Src: netip.MustParseAddrPort("[::1]:5060"), Dst: netip.MustParseAddrPort("[::2]:5061"),
			Proto: hep.ProtoTCP, Time: time.Unix(1, 0), AgentID: 9, AuthKey: "k", CorrelationID: "c", Payload: []byte("x")},
	} {
		b, err := hep.Append(nil, &p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("HEP3\x00\x06"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := hep.Decode(b)
		if err != nil {
			return
		}
		again, err := hep.Append(nil, &p)
		if err != nil {
			if errors.Is(err, hep.ErrTooLarge) {
				return // unknown chunks dropped, but known ones may grow (IPv4 in 16 bytes)
			}
			t.Fatalf("decoded packet does not encode: %v", err)
		}
		q, err := hep.Decode(again)
		if err != nil {
			t.Fatalf("re-encoded packet does not decode: %v", err)
		}
		samePacket(t, q, canonical(p))
	})
}
