package e2e

// Hostile input against the built binary, as an attacker on the network
// would send it: a spoofed response, a CANCEL from another source, a flood
// of datagrams the parser refuses carrying a client's digest response, and
// malformed requests. The upstream is a UDP socket the test answers by
// hand, so that every byte authproxy sends it is seen.

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/testutil"
)

// Secrets the binary's output must never show.
const (
	hostileTrunkPassword = "e2e-hostile-trunk-password"
	hostileDigest        = "feedfacefeedfacefeedfacefeedface"
	hostileCnonce        = "e2e-client-cnonce"
)

// rawPeer is a UDP socket the test speaks SIP through byte by byte.
type rawPeer struct {
	conn net.PacketConn
	mu   sync.Mutex
	got  [][]byte
}

func newRawPeer(t *testing.T, host string) *rawPeer {
	t.Helper()
	conn, err := net.ListenPacket("udp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{conn: conn}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			p.mu.Lock()
			p.got = append(p.got, bytes.Clone(buf[:n]))
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return p
}

func (p *rawPeer) addr() string { return p.conn.LocalAddr().String() }

func (p *rawPeer) send(t *testing.T, to string, msg []byte) {
	t.Helper()
	dst, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.conn.WriteTo(msg, dst); err != nil {
		t.Fatal(err)
	}
}

// find returns the first datagram received that starts with prefix and
// contains all of subs, waiting for it.
func (p *rawPeer) find(t *testing.T, prefix string, subs ...string) []byte {
	t.Helper()
	var found []byte
	testutil.Eventually(t, fmt.Sprintf("%s receiving %q %q", p.addr(), prefix, subs), func() bool {
		found = p.lookup(prefix, subs...)
		return found != nil
	})
	return found
}

func (p *rawPeer) lookup(prefix string, subs ...string) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
next:
	for _, d := range p.got {
		if !bytes.HasPrefix(d, []byte(prefix)) {
			continue
		}
		for _, s := range subs {
			if !bytes.Contains(d, []byte(s)) {
				continue next
			}
		}
		return d
	}
	return nil
}

// rawRequest is a request from client to pbx-a with a Proxy-Authorization
// for authproxy's realm (never to be logged nor forwarded).
func rawRequest(method, client, callID string) []byte {
	return []byte(fmt.Sprintf("%s sip:1002@pbx-a.example.com SIP/2.0\r\n"+
		"Via: SIP/2.0/UDP %s;branch=z9hG4bK-%s;rport\r\nMax-Forwards: 70\r\n"+
		"From: <sip:1001@pbx-a.example.com>;tag=f-%s\r\nTo: <sip:1002@pbx-a.example.com>\r\n"+
		"Call-ID: %s\r\nCSeq: 1 %s\r\nContact: <sip:1001@%s>\r\n"+
		`Proxy-Authorization: Digest username="1001", realm="authproxy", nonce="n", uri="sip:1002@pbx-a.example.com", response="%s", cnonce="%s", nc=00000001, qop=auth`+"\r\n"+
		"Content-Length: 0\r\n\r\n", method, client, callID, callID, callID, method, client, hostileDigest, hostileCnonce))
}

// rawResponse answers req with status, copying Via, From, To (tagged),
// Call-ID and CSeq.
func rawResponse(req []byte, status string, extra ...string) []byte {
	out := []byte("SIP/2.0 " + status + "\r\n")
	for _, h := range extra {
		out = append(out, h+"\r\n"...)
	}
	for _, line := range strings.Split(string(req), "\r\n")[1:] {
		if line == "" {
			break
		}
		name, _, _ := strings.Cut(line, ":")
		switch strings.ToLower(name) {
		case "via", "from", "call-id", "cseq":
			out = append(out, line+"\r\n"...)
		case "to":
			out = append(out, line+";tag=up\r\n"...)
		}
	}
	return append(out, "Content-Length: 0\r\n\r\n"...)
}

func TestBinaryHostileInput(t *testing.T) {
	upstream := newRawPeer(t, "127.0.0.2")
	b := startOpsBinary(t, fmt.Sprintf(`[log]
level = "info"
format = "json"

[admin]
address = "127.0.0.1:0"

[limits]
rate = 0
max_per_source = 0
auth_failures = 0

[[listen]]
transport = "udp"
address = "127.0.0.1:0"

[[upstream]]
name = "pbx-a"
address = %s
domains = ["pbx-a.example.com"]

[[credential]]
username = "trunk"
password = %s
server = "pbx-a"

[[client]]
name = "lan"
networks = ["127.0.0.1/32"]
upstreams = ["*"]
`, tomlString(upstream.addr()), tomlString(hostileTrunkPassword)))
	proxyAddr := b.sipAddr["udp"]
	metric := func(name, reason string) float64 {
		code, body := testutil.HTTPGet(t, b.admin+"/metrics")
		if code != 200 {
			t.Fatalf("/metrics: %d", code)
		}
		v, _ := testutil.Metrics(testutil.ParseMetrics(t, body)).Sum(name, map[string]string{"reason": reason})
		return v
	}

	t.Run("spoofed 407 from a third host", func(t *testing.T) {
		client := newRawPeer(t, "127.0.0.1")
		client.send(t, proxyAddr, rawRequest("MESSAGE", client.addr(), "spoof"))
		sent := upstream.find(t, "MESSAGE ", "Call-ID: spoof")
		newRawPeer(t, "127.0.0.66").send(t, proxyAddr, rawResponse(sent, "407 Proxy Authentication Required",
			`Proxy-Authenticate: Digest realm="asterisk", nonce="attacker-chosen", qop="auth", algorithm=MD5`))
		testutil.Eventually(t, "the spoofed response counted", func() bool {
			return metric("authproxy_messages_discarded_total", "response-source") == 1 || upstream.lookup("MESSAGE ", "attacker-chosen") != nil
		})
		upstream.send(t, proxyAddr, rawResponse(sent, "200 OK"))
		client.find(t, "SIP/2.0 200 ", "Call-ID: spoof")
		if upstream.lookup("", "attacker-chosen") != nil {
			t.Fatal("authproxy answered the spoofed challenge")
		}
	})

	t.Run("CANCEL from a refused source", func(t *testing.T) {
		client := newRawPeer(t, "127.0.0.1")
		invite := rawRequest("INVITE", client.addr(), "cancel")
		client.send(t, proxyAddr, invite)
		sent := upstream.find(t, "INVITE ", "Call-ID: cancel")
		upstream.send(t, proxyAddr, rawResponse(sent, "180 Ringing"))
		client.find(t, "SIP/2.0 180 ", "Call-ID: cancel")
		attacker := newRawPeer(t, "127.0.0.66")
		cancel := bytes.Replace(bytes.Replace(invite, []byte("INVITE sip:"), []byte("CANCEL sip:"), 1), []byte("CSeq: 1 INVITE"), []byte("CSeq: 1 CANCEL"), 1)
		attacker.send(t, proxyAddr, cancel)
		attacker.find(t, "SIP/2.0 403 ")
		upstream.send(t, proxyAddr, rawResponse(sent, "200 OK", "Contact: <sip:1002@"+upstream.addr()+">"))
		client.find(t, "SIP/2.0 200 ", "Call-ID: cancel")
		if client.lookup("SIP/2.0 487 ") != nil || upstream.lookup("CANCEL ") != nil {
			t.Fatal("the CANCEL from a refused source cancelled the call")
		}
	})

	t.Run("malformed requests", func(t *testing.T) {
		client := newRawPeer(t, "127.0.0.1")
		noCallID := bytes.Replace(rawRequest("MESSAGE", client.addr(), "m1"), []byte("Call-ID: m1\r\n"), nil, 1)
		client.send(t, proxyAddr, noCallID)
		client.find(t, "SIP/2.0 400 Bad Request (missing Call-ID)")
		badMF := bytes.Replace(rawRequest("MESSAGE", client.addr(), "m2"), []byte("Max-Forwards: 70"), []byte("Max-Forwards: -1"), 1)
		client.send(t, proxyAddr, badMF)
		client.find(t, "SIP/2.0 400 Bad Request (malformed Max-Forwards)")
		if upstream.lookup("", "branch=z9hG4bK-m1") != nil || upstream.lookup("", "Call-ID: m2") != nil {
			t.Fatal("a malformed request reached the upstream")
		}
	})

	t.Run("flood of unparsable datagrams", func(t *testing.T) {
		attacker := newRawPeer(t, "127.0.0.66")
		bad := bytes.Replace(rawRequest("MESSAGE", attacker.addr(), "flood"), []byte("MESSAGE sip:1002@pbx-a.example.com SIP/2.0"), []byte("MESSAGE <sip:1002@pbx-a.example.com> SIP/2.0"), 1)
		const flood, batch = 2000, 200
		start := time.Now()
		for sent := 0; sent < flood; sent += batch {
			for range batch {
				attacker.send(t, proxyAddr, bad)
			}
			testutil.Eventually(t, "the batch handled", func() bool {
				return metric("authproxy_requests_refused_total", "bad-request")+metric("authproxy_messages_discarded_total", "unparsable") >= float64(sent+batch)
			})
		}
		elapsed := time.Since(start)
		logs := b.Logs()
		lines := strings.Count(logs, `"msg":"failed to parse"`)
		if limit := 1 + int(elapsed/(10*time.Second)); lines < 1 || lines > limit {
			t.Errorf("%d \"failed to parse\" lines for %d datagrams in %v, want 1 to %d", lines, flood, elapsed, limit)
		}
		if strings.Contains(logs, `"level":"ERROR"`) {
			t.Errorf("bad input logged at ERROR:\n%s", logs)
		}
	})

	client := newRawPeer(t, "127.0.0.1")
	client.send(t, proxyAddr, rawRequest("OPTIONS", client.addr(), "after"))
	sent := upstream.find(t, "OPTIONS ", "Call-ID: after")
	upstream.send(t, proxyAddr, rawResponse(sent, "200 OK"))
	client.find(t, "SIP/2.0 200 ", "Call-ID: after")

	logs := b.Logs()
	for _, secret := range []string{hostileTrunkPassword, hostileDigest, hostileCnonce} {
		if strings.Contains(logs, secret) {
			t.Errorf("the output shows %q", secret)
		}
	}
	if upstream.lookup("", hostileDigest) != nil {
		t.Error("a client's Proxy-Authorization reached the upstream")
	}
}
