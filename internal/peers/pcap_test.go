package peers

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
)

// pcapFile builds a little-endian microsecond pcap file of frames.
func pcapFile(link uint32, frames ...[]byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0xa1b2c3d4)
	b = binary.LittleEndian.AppendUint16(b, 2)
	b = binary.LittleEndian.AppendUint16(b, 4)
	b = append(b, make([]byte, 8)...)
	b = binary.LittleEndian.AppendUint32(b, 65535)
	b = binary.LittleEndian.AppendUint32(b, link)
	for i, f := range frames {
		b = binary.LittleEndian.AppendUint32(b, 1_700_000_000+uint32(i))
		b = binary.LittleEndian.AppendUint32(b, 250)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(f)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// ipFrame is an IP packet (IPv4 or IPv6 by the addresses) of proto from
// src to dst carrying payload, behind an Ethernet header when eth.
func ipFrame(eth bool, proto uint8, src, dst netip.AddrPort, payload []byte) []byte {
	l4 := binary.BigEndian.AppendUint16(nil, src.Port())
	l4 = binary.BigEndian.AppendUint16(l4, dst.Port())
	if proto == 17 {
		l4 = binary.BigEndian.AppendUint16(l4, uint16(8+len(payload)))
		l4 = append(l4, 0, 0)
	} else {
		l4 = append(l4, make([]byte, 8)...)
		l4 = append(l4, 5<<4, 0x18, 0, 0, 0, 0, 0, 0)
	}
	l4 = append(l4, payload...)
	var f []byte
	if eth {
		f = append(make([]byte, 12), 0x08, 0x00)
		if src.Addr().Is6() {
			f[12], f[13] = 0x86, 0xdd
		}
	}
	if src.Addr().Is4() {
		s, d := src.Addr().As4(), dst.Addr().As4()
		f = append(f, 0x45, 0)
		f = binary.BigEndian.AppendUint16(f, uint16(20+len(l4)))
		f = append(f, 0, 0, 0, 0, 64, proto, 0, 0)
		f = append(append(f, s[:]...), d[:]...)
	} else {
		s, d := src.Addr().As16(), dst.Addr().As16()
		f = append(f, 0x60, 0, 0, 0)
		f = binary.BigEndian.AppendUint16(f, uint16(len(l4)))
		f = append(f, proto, 64)
		f = append(append(f, s[:]...), d[:]...)
	}
	return append(f, l4...)
}

func TestReadPCAP(t *testing.T) {
	a, b := netip.MustParseAddrPort("127.0.0.1:5060"), netip.MustParseAddrPort("127.0.0.2:5080")
	a6, b6 := netip.MustParseAddrPort("[::1]:5060"), netip.MustParseAddrPort("[::2]:5061")
	arp := append(make([]byte, 12), 0x08, 0x06, 1, 2, 3)
	file := pcapFile(linkEthernet,
		ipFrame(true, 17, a, b, []byte("INVITE")),
		arp,
		ipFrame(true, 6, b6, a6, []byte("SIP/2.0 200 OK")),
	)
	file = append(file, 1, 2, 3, 4, 5) // a record being written
	got, err := ReadPCAP(file)
	if err != nil {
		t.Fatal(err)
	}
	want := []PCAPPacket{
		{Time: time.Unix(1_700_000_000, 250_000), Src: a, Dst: b, Proto: 17, Payload: []byte("INVITE")},
		{Time: time.Unix(1_700_000_002, 250_000), Src: b6, Dst: a6, Proto: 6, Payload: []byte("SIP/2.0 200 OK")},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d packets, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if !g.Time.Equal(w.Time) || g.Src != w.Src || g.Dst != w.Dst || g.Proto != w.Proto || !bytes.Equal(g.Payload, w.Payload) {
			t.Errorf("packet %d = %+v, want %+v", i, g, w)
		}
	}
	raw, err := ReadPCAP(pcapFile(linkRaw, ipFrame(false, 17, a, b, []byte("x"))))
	if err != nil || len(raw) != 1 || string(raw[0].Payload) != "x" {
		t.Fatalf("raw IP: %+v, %v", raw, err)
	}
	for name, bad := range map[string][]byte{
		"Short": []byte("abc"), "Magic": make([]byte, 24), "Link": pcapFile(105),
	} {
		if _, err := ReadPCAP(bad); !errors.Is(err, ErrPCAP) {
			t.Errorf("%s: err = %v, want ErrPCAP", name, err)
		}
	}
}

// FuzzReadPCAP holds ReadPCAP to never panic on any file, and every
// payload it returns to lie inside the file.
func FuzzReadPCAP(f *testing.F) {
	a, b := netip.MustParseAddrPort("127.0.0.1:5060"), netip.MustParseAddrPort("[::2]:5080")
	f.Add(pcapFile(linkEthernet, ipFrame(true, 17, a, a, []byte("INVITE"))))
	f.Add(pcapFile(linkRaw, ipFrame(false, 6, b, b, []byte("BYE"))))
	f.Fuzz(func(t *testing.T, data []byte) {
		pkts, err := ReadPCAP(data)
		if err != nil {
			return
		}
		for _, p := range pkts {
			if len(p.Payload) > len(data) {
				t.Fatalf("payload of %d bytes from a file of %d", len(p.Payload), len(data))
			}
		}
	})
}
