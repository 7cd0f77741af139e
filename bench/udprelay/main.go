// Command udprelay is the least a Go process can do between a SIP client
// and its upstream: it passes each datagram on unchanged (no parsing, no
// transaction, no allocation), requests to the upstream and everything the
// upstream sends back to the client that sent last. bench's TestLatency
// runs it as the floor against which authproxy's added latency is read:
// what one extra Go process hop costs on the same machine. Flags add
// authproxy's costs one at a time, to find which of them makes the tail:
// -parse parses each datagram with sipgo's parser (its allocations, so
// its GC cycles), -handoff passes each datagram to a worker goroutine
// over a channel and from there to a goroutine of its own, as sipgo does;
// -work spins the CPU for that long per datagram and -garbage allocates
// that many bytes per datagram in 64-byte objects kept until it is sent
// (authproxy's CPU and allocation per message, as budgets to try).
//
//	udprelay -listen 127.0.0.6:5060 -upstream 127.0.0.2:5060
package main

import (
	"flag"
	"log"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

func main() {
	listen := flag.String("listen", "127.0.0.6:5060", "address to receive on")
	upstream := flag.String("upstream", "", "upstream address (host:port)")
	parse := flag.Bool("parse", false, "parse each datagram with sipgo's parser")
	handoff := flag.Bool("handoff", false, "relay each datagram from a goroutine of its own, reached through a worker")
	work := flag.Duration("work", 0, "CPU time to spend per datagram")
	garbage := flag.Int("garbage", 0, "bytes to allocate per datagram, in 64-byte objects")
	flag.Parse()
	up, err := netip.ParseAddrPort(*upstream)
	if err != nil {
		log.Fatalf("-upstream: %v", err)
	}
	la, err := net.ResolveUDPAddr("udp", *listen)
	if err != nil {
		log.Fatalf("-listen: %v", err)
	}
	conn, err := net.ListenUDP("udp", la)
	if err != nil {
		log.Fatal(err)
	}
	_ = conn.SetReadBuffer(4 << 20)
	parser := sip.NewParser()
	relay := func(data []byte, dst netip.AddrPort) {
		var kept [][]byte
		for range *garbage / 64 {
			kept = append(kept, make([]byte, 64))
		}
		if *work > 0 {
			for start := time.Now(); time.Since(start) < *work; {
			}
		}
		if *parse {
			if _, err := parser.ParseSIP(data); err != nil {
				log.Print(err)
			}
		}
		if _, err := conn.WriteToUDPAddrPort(data, dst); err != nil {
			log.Print(err)
		}
		runtime.KeepAlive(kept)
	}
	type datagram struct {
		data []byte
		dst  netip.AddrPort
	}
	queue := make(chan datagram, 256)
	if *handoff {
		go func() {
			for d := range queue {
				go relay(d.data, d.dst)
			}
		}()
	}
	pool := sync.Pool{New: func() any { return make([]byte, 65535) }}
	var client netip.AddrPort
	for {
		buf := pool.Get().([]byte)
		n, src, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			log.Fatal(err)
		}
		dst := up
		if src == up {
			dst = client
		} else {
			client = src
		}
		if !dst.IsValid() {
			pool.Put(buf)
			continue
		}
		if *handoff {
			queue <- datagram{append([]byte(nil), buf[:n]...), dst}
		} else {
			relay(buf[:n], dst)
		}
		pool.Put(buf)
	}
}
