// Package hep encodes captured SIP messages as HEPv3 packets (the Homer
// Encapsulation Protocol, version 3), the format Homer, heplify-server and
// sngrep receive over UDP, and decodes them again.
//
// A HEPv3 packet is the 4 bytes "HEP3", a 16-bit total length (header
// included), then chunks: a 16-bit vendor id (0, generic), a 16-bit chunk
// type, a 16-bit length (the 6-byte chunk header included) and the value,
// every number in network byte order. The chunk types are those of the
// HEPv3 specification (HEP3 Network Protocol Specification, rev. 3, §4).
// The package uses the standard library only.
package hep

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Chunk types of the generic vendor (0), HEPv3 specification §4.
const (
	ChunkIPFamily      = 0x0001 // uint8: 2 (AF_INET) or 10 (AF_INET6)
	ChunkIPProto       = 0x0002 // uint8: 17 UDP, 6 TCP
	ChunkSrcIPv4       = 0x0003 // 4 bytes
	ChunkDstIPv4       = 0x0004 // 4 bytes
	ChunkSrcIPv6       = 0x0005 // 16 bytes
	ChunkDstIPv6       = 0x0006 // 16 bytes
	ChunkSrcPort       = 0x0007 // uint16
	ChunkDstPort       = 0x0008 // uint16
	ChunkTimeSec       = 0x0009 // uint32: seconds since the Unix epoch
	ChunkTimeUsec      = 0x000a // uint32: microseconds within the second
	ChunkProtoType     = 0x000b // uint8: 1 SIP
	ChunkAgentID       = 0x000c // uint32: capture agent (node) id
	ChunkAuthKey       = 0x000e // string: the receiver's password
	ChunkPayload       = 0x000f // the captured message
	ChunkCorrelationID = 0x0011 // string: ties packets of one call together
)

// Values of the IP family, protocol and payload type chunks.
const (
	FamilyIPv4 = 2  // AF_INET
	FamilyIPv6 = 10 // AF_INET6
	ProtoUDP   = 17 // IPPROTO_UDP
	ProtoTCP   = 6  // IPPROTO_TCP
	TypeSIP    = 1
)

// MaxPacketSize is the largest packet the 16-bit total length can
// describe.
const MaxPacketSize = 65535

const (
	headerLen      = 6 // "HEP3" and the total length
	chunkHeaderLen = 6 // vendor, type, length
)

// ErrTooLarge is returned by Append for a packet over MaxPacketSize.
var ErrTooLarge = errors.New("hep: packet larger than 65535 bytes")

// ErrMalformed is wrapped by Decode's errors.
var ErrMalformed = errors.New("hep: malformed packet")

// Packet is one captured message as a HEPv3 packet carries it.
type Packet struct {
	// Src and Dst are the message's source and destination. Two IPv4
	// addresses (IPv4-mapped IPv6 ones included) are sent in the IPv4
	// chunks; otherwise both go in the IPv6 chunks, an IPv4 address as
	// its IPv4-mapped form.
	Src, Dst netip.AddrPort
	// Proto is ProtoUDP or ProtoTCP.
	Proto uint8
	// Time is when the message was read or written; microseconds are kept.
	Time time.Time
	// AgentID identifies the capturing node (0: none set).
	AgentID uint32
	// AuthKey is sent in chunk 14 when not empty.
	AuthKey string
	// CorrelationID is sent in chunk 17 when not empty.
	CorrelationID string
	// Payload is the SIP message.
	Payload []byte
}

// Size is the length of p encoded.
func (p *Packet) Size() int {
	addrLen := 4
	if !p.isIPv4() {
		addrLen = 16
	}
	n := headerLen
	n += 2 * (chunkHeaderLen + 1)       // family, proto
	n += 2 * (chunkHeaderLen + addrLen) // src, dst address
	n += 2 * (chunkHeaderLen + 2)       // ports
	n += 2 * (chunkHeaderLen + 4)       // seconds, microseconds
	n += chunkHeaderLen + 1             // payload type
	n += chunkHeaderLen + 4             // agent id
	if p.AuthKey != "" {
		n += chunkHeaderLen + len(p.AuthKey)
	}
	if p.CorrelationID != "" {
		n += chunkHeaderLen + len(p.CorrelationID)
	}
	return n + chunkHeaderLen + len(p.Payload)
}

func (p *Packet) isIPv4() bool {
	return p.Src.Addr().Unmap().Is4() && p.Dst.Addr().Unmap().Is4()
}

// Append appends p, encoded, to dst. It fails with ErrTooLarge when the
// packet would exceed MaxPacketSize, and when Src or Dst has no address.
func Append(dst []byte, p *Packet) ([]byte, error) {
	size := p.Size()
	if size > MaxPacketSize {
		return dst, fmt.Errorf("%w: %d", ErrTooLarge, size)
	}
	src, dstAddr := p.Src.Addr(), p.Dst.Addr()
	if !src.IsValid() || !dstAddr.IsValid() {
		return dst, fmt.Errorf("hep: no address in %s -> %s", p.Src, p.Dst)
	}
	if p.isIPv4() {
		src, dstAddr = src.Unmap(), dstAddr.Unmap()
	}
	b := append(dst, "HEP3"...)
	b = binary.BigEndian.AppendUint16(b, uint16(size))
	if p.isIPv4() {
		b = appendChunk(b, ChunkIPFamily, FamilyIPv4)
		b = appendChunk(b, ChunkIPProto, p.Proto)
		s4, d4 := src.As4(), dstAddr.As4()
		b = appendChunk(b, ChunkSrcIPv4, s4[:]...)
		b = appendChunk(b, ChunkDstIPv4, d4[:]...)
	} else {
		b = appendChunk(b, ChunkIPFamily, FamilyIPv6)
		b = appendChunk(b, ChunkIPProto, p.Proto)
		s16, d16 := src.As16(), dstAddr.As16()
		b = appendChunk(b, ChunkSrcIPv6, s16[:]...)
		b = appendChunk(b, ChunkDstIPv6, d16[:]...)
	}
	b = appendChunk(b, ChunkSrcPort, byte(p.Src.Port()>>8), byte(p.Src.Port()))
	b = appendChunk(b, ChunkDstPort, byte(p.Dst.Port()>>8), byte(p.Dst.Port()))
	b = appendUint32Chunk(b, ChunkTimeSec, uint32(p.Time.Unix()))
	b = appendUint32Chunk(b, ChunkTimeUsec, uint32(p.Time.Nanosecond()/1000))
	b = appendChunk(b, ChunkProtoType, TypeSIP)
	b = appendUint32Chunk(b, ChunkAgentID, p.AgentID)
	if p.AuthKey != "" {
		b = appendStringChunk(b, ChunkAuthKey, p.AuthKey)
	}
	if p.CorrelationID != "" {
		b = appendStringChunk(b, ChunkCorrelationID, p.CorrelationID)
	}
	b = appendChunkHeader(b, ChunkPayload, len(p.Payload))
	return append(b, p.Payload...), nil
}

func appendChunkHeader(b []byte, typ uint16, valueLen int) []byte {
	b = binary.BigEndian.AppendUint16(b, 0) // generic vendor
	b = binary.BigEndian.AppendUint16(b, typ)
	return binary.BigEndian.AppendUint16(b, uint16(chunkHeaderLen+valueLen))
}

func appendChunk(b []byte, typ uint16, value ...byte) []byte {
	return append(appendChunkHeader(b, typ, len(value)), value...)
}

func appendUint32Chunk(b []byte, typ uint16, v uint32) []byte {
	return binary.BigEndian.AppendUint32(appendChunkHeader(b, typ, 4), v)
}

func appendStringChunk(b []byte, typ uint16, s string) []byte {
	return append(appendChunkHeader(b, typ, len(s)), s...)
}
