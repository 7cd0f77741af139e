package peers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// PCAPPacket is one UDP or TCP packet of a pcap file, as ReadPCAP decodes
// it.
type PCAPPacket struct {
	Time     time.Time
	Src, Dst netip.AddrPort
	Proto    uint8 // 17 UDP, 6 TCP
	Payload  []byte
}

// Link types ReadPCAP reads (tcpdump.org/linktypes.html).
const (
	linkEthernet = 1
	linkRaw      = 101
)

// ErrPCAP is wrapped by ReadPCAP's errors.
var ErrPCAP = errors.New("pcap")

// ReadPCAP decodes a classic pcap file (microsecond or nanosecond
// timestamps, either byte order) of Ethernet or raw IP frames and returns
// its IPv4 and IPv6 UDP and TCP packets; other frames are skipped. A file
// cut short in its last record (still being written) returns the records
// before it. It is what the tests read sngrep's -O output with.
func ReadPCAP(data []byte) ([]PCAPPacket, error) {
	if len(data) < 24 {
		return nil, fmt.Errorf("%w: %d bytes, no file header", ErrPCAP, len(data))
	}
	var order binary.ByteOrder
	nano := false
	switch binary.LittleEndian.Uint32(data) {
	case 0xa1b2c3d4:
		order = binary.LittleEndian
	case 0xa1b23c4d:
		order, nano = binary.LittleEndian, true
	case 0xd4c3b2a1:
		order = binary.BigEndian
	case 0x4d3cb2a1:
		order, nano = binary.BigEndian, true
	default:
		return nil, fmt.Errorf("%w: magic %x", ErrPCAP, data[:4])
	}
	link := order.Uint32(data[20:24]) & 0x0fffffff
	if link != linkEthernet && link != linkRaw {
		return nil, fmt.Errorf("%w: link type %d", ErrPCAP, link)
	}
	var out []PCAPPacket
	for rest := data[24:]; len(rest) >= 16; {
		sec, frac, caplen := order.Uint32(rest[0:4]), order.Uint32(rest[4:8]), int(order.Uint32(rest[8:12]))
		if caplen > len(rest)-16 {
			break // the record being written
		}
		frame := rest[16 : 16+caplen]
		rest = rest[16+caplen:]
		nsec := int64(frac) * 1000
		if nano {
			nsec = int64(frac)
		}
		if p, ok := decodeFrame(frame, link); ok {
			p.Time = time.Unix(int64(sec), nsec)
			out = append(out, p)
		}
	}
	return out, nil
}

// decodeFrame decodes one captured frame down to its UDP or TCP payload.
func decodeFrame(f []byte, link uint32) (PCAPPacket, bool) {
	if link == linkEthernet {
		if len(f) < 14 {
			return PCAPPacket{}, false
		}
		switch binary.BigEndian.Uint16(f[12:14]) {
		case 0x0800, 0x86dd:
			f = f[14:]
		default:
			return PCAPPacket{}, false
		}
	}
	var p PCAPPacket
	var l4 []byte
	switch {
	case len(f) >= 20 && f[0]>>4 == 4:
		ihl := int(f[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(f[2:4]))
		if ihl < 20 || total < ihl || total > len(f) {
			return p, false
		}
		p.Proto = f[9]
		src, dst := netip.AddrFrom4([4]byte(f[12:16])), netip.AddrFrom4([4]byte(f[16:20]))
		p.Src, p.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		l4 = f[ihl:total]
	case len(f) >= 40 && f[0]>>4 == 6:
		n := int(binary.BigEndian.Uint16(f[4:6]))
		if 40+n > len(f) {
			return p, false
		}
		p.Proto = f[6] // no extension headers expected
		src, dst := netip.AddrFrom16([16]byte(f[8:24])), netip.AddrFrom16([16]byte(f[24:40]))
		p.Src, p.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		l4 = f[40 : 40+n]
	default:
		return p, false
	}
	var hdr int
	switch {
	case p.Proto == 17 && len(l4) >= 8:
		hdr = 8
	case p.Proto == 6 && len(l4) >= 20 && int(l4[12]>>4)*4 >= 20 && int(l4[12]>>4)*4 <= len(l4):
		hdr = int(l4[12]>>4) * 4
	default:
		return p, false
	}
	p.Src = netip.AddrPortFrom(p.Src.Addr(), binary.BigEndian.Uint16(l4[0:2]))
	p.Dst = netip.AddrPortFrom(p.Dst.Addr(), binary.BigEndian.Uint16(l4[2:4]))
	p.Payload = l4[hdr:]
	return p, true
}
