package proxy

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
)

// growSocketBuffers raises pc's buffers toward udpSocketBuffer; a refusal
// only costs headroom, so it is logged, not returned.
func growSocketBuffers(pc net.PacketConn, log *slog.Logger) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return
	}
	if err := uc.SetReadBuffer(udpSocketBuffer); err != nil {
		log.Warn("cannot grow the UDP receive buffer", "address", pc.LocalAddr().String(), "error", err)
	}
	if err := uc.SetWriteBuffer(udpSocketBuffer); err != nil {
		log.Warn("cannot grow the UDP send buffer", "address", pc.LocalAddr().String(), "error", err)
	}
}

func (p *Proxy) bind() ([]*boundListener, error) {
	var out []*boundListener
	for _, l := range p.cfg.Listeners {
		tp, _ := listenTransport(l.Transport)
		bl := &boundListener{Listener: l, transport: tp}
		var laddr net.Addr
		switch tp {
		case "UDP":
			pc, err := net.ListenPacket("udp", l.Address)
			if err != nil {
				closeAll(out)
				return nil, fmt.Errorf("listen udp %s: %w", l.Address, err)
			}
			growSocketBuffers(pc, p.log)
			bl.udp, bl.sock, bl.closer, laddr = pc, p.newLaneSocket(pc), pc, pc.LocalAddr()
		case "TCP", "TLS":
			ln, err := net.Listen("tcp", l.Address)
			if err != nil {
				closeAll(out)
				return nil, fmt.Errorf("listen %s %s: %w", strings.ToLower(tp), l.Address, err)
			}
			var tlsConf *tls.Config
			if tp == "TLS" {
				tlsConf = l.TLS
			}
			// The guard accepts (retrying when out of descriptors), refuses
			// and caps; sipgo serves what it lets through.
			gl := p.tcp.Listen(ln, tlsConf)
			bl.tcp, bl.closer, laddr = gl, gl, ln.Addr()
		case "WS", "WSS":
			ln, err := net.Listen("tcp", l.Address)
			if err != nil {
				closeAll(out)
				return nil, fmt.Errorf("listen %s %s: %w", strings.ToLower(tp), l.Address, err)
			}
			wl := p.ws.Listen(ln, webSocketListenerConfig(tp, l))
			bl.tcp, bl.closer, laddr = wl, wl, ln.Addr()
		}
		host, portStr, _ := net.SplitHostPort(laddr.String())
		bl.ip = net.ParseIP(host)
		bl.port, _ = strconv.Atoi(portStr)
		bl.local = laddr.String()
		bl.advertise = l.Advertise
		if bl.advertise == "" {
			bl.advertise = host
		}
		out = append(out, bl)
	}
	return out, nil
}

// firstTCPAddr is the bound address of the first TCP listener, nil
// without one.
func firstTCPAddr(ls []*boundListener) net.Addr {
	for _, l := range ls {
		if l.transport == "TCP" {
			return l.tcp.Addr()
		}
	}
	return nil
}

func closeAll(ls []*boundListener) {
	for _, l := range ls {
		_ = l.closer.Close()
	}
}
