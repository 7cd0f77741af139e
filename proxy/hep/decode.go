package hep

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// Decode parses one HEPv3 packet, as a receiver would. Chunks of other
// vendors and of types Packet has no field for are skipped; a known chunk
// of the wrong length, a chunk running past the packet, a total length
// that is not the packet's, an address family other than the addresses'
// or a payload type other than SIP is an error wrapping ErrMalformed.
// The Payload returned aliases b.
func Decode(b []byte) (Packet, error) {
	var p Packet
	if len(b) < headerLen || string(b[:4]) != "HEP3" {
		return p, fmt.Errorf("%w: no HEP3 header", ErrMalformed)
	}
	if total := int(binary.BigEndian.Uint16(b[4:6])); total != len(b) {
		return p, fmt.Errorf("%w: total length %d, packet %d bytes", ErrMalformed, total, len(b))
	}
	var d decoded
	for rest := b[headerLen:]; len(rest) > 0; {
		if len(rest) < chunkHeaderLen {
			return p, fmt.Errorf("%w: %d bytes after the last chunk", ErrMalformed, len(rest))
		}
		vendor := binary.BigEndian.Uint16(rest[0:2])
		typ := binary.BigEndian.Uint16(rest[2:4])
		n := int(binary.BigEndian.Uint16(rest[4:6]))
		if n < chunkHeaderLen || n > len(rest) {
			return p, fmt.Errorf("%w: chunk %d length %d", ErrMalformed, typ, n)
		}
		if vendor == 0 {
			if err := d.chunk(&p, typ, rest[chunkHeaderLen:n]); err != nil {
				return p, err
			}
		}
		rest = rest[n:]
	}
	return p, d.finish(&p)
}

// decoded holds the chunks Decode read that Packet does not carry as
// they are.
type decoded struct {
	family, payloadType uint8
	src, dst            netip.Addr
	srcPort, dstPort    uint16
	sec, usec           uint32
	seen                map[uint16]bool
}

// chunkLen is the value length of each fixed-size chunk.
var chunkLen = map[uint16]int{
	ChunkIPFamily: 1, ChunkIPProto: 1, ChunkSrcIPv4: 4, ChunkDstIPv4: 4, ChunkSrcIPv6: 16, ChunkDstIPv6: 16,
	ChunkSrcPort: 2, ChunkDstPort: 2, ChunkTimeSec: 4, ChunkTimeUsec: 4, ChunkProtoType: 1, ChunkAgentID: 4,
}

// chunk stores one generic chunk's value v.
func (d *decoded) chunk(p *Packet, typ uint16, v []byte) error {
	if want, fixed := chunkLen[typ]; fixed && len(v) != want {
		return fmt.Errorf("%w: chunk %d has %d bytes, want %d", ErrMalformed, typ, len(v), want)
	}
	if d.seen == nil {
		d.seen = map[uint16]bool{}
	}
	if d.seen[typ] {
		return fmt.Errorf("%w: chunk %d twice", ErrMalformed, typ)
	}
	d.seen[typ] = true
	switch typ {
	case ChunkIPFamily:
		d.family = v[0]
	case ChunkIPProto:
		p.Proto = v[0]
	case ChunkSrcIPv4, ChunkSrcIPv6:
		d.src, _ = netip.AddrFromSlice(v)
	case ChunkDstIPv4, ChunkDstIPv6:
		d.dst, _ = netip.AddrFromSlice(v)
	case ChunkSrcPort:
		d.srcPort = binary.BigEndian.Uint16(v)
	case ChunkDstPort:
		d.dstPort = binary.BigEndian.Uint16(v)
	case ChunkTimeSec:
		d.sec = binary.BigEndian.Uint32(v)
	case ChunkTimeUsec:
		d.usec = binary.BigEndian.Uint32(v)
	case ChunkProtoType:
		d.payloadType = v[0]
	case ChunkAgentID:
		p.AgentID = binary.BigEndian.Uint32(v)
	case ChunkAuthKey:
		p.AuthKey = string(v)
	case ChunkCorrelationID:
		p.CorrelationID = string(v)
	case ChunkPayload:
		p.Payload = v
	}
	return nil
}

// finish checks that the chunks fit together and fills p's addresses and
// time.
func (d *decoded) finish(p *Packet) error {
	switch {
	case !d.src.IsValid() || !d.dst.IsValid():
		return fmt.Errorf("%w: no source or destination address", ErrMalformed)
	case d.src.Is4() != d.dst.Is4():
		return fmt.Errorf("%w: source and destination of different families", ErrMalformed)
	case d.src.Is4() && d.family != FamilyIPv4, d.src.Is6() && d.family != FamilyIPv6:
		return fmt.Errorf("%w: ip family %d for %s", ErrMalformed, d.family, d.src)
	case d.payloadType != TypeSIP:
		return fmt.Errorf("%w: payload type %d, not SIP", ErrMalformed, d.payloadType)
	case d.usec >= 1_000_000:
		return fmt.Errorf("%w: %d microseconds", ErrMalformed, d.usec)
	case !d.seen[ChunkSrcPort] || !d.seen[ChunkDstPort] || !d.seen[ChunkTimeSec] || !d.seen[ChunkPayload]:
		return fmt.Errorf("%w: a port, the time or the payload is missing", ErrMalformed)
	}
	p.Src = netip.AddrPortFrom(d.src, d.srcPort)
	p.Dst = netip.AddrPortFrom(d.dst, d.dstPort)
	p.Time = time.Unix(int64(d.sec), int64(d.usec)*1000)
	return nil
}
