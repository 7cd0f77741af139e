package scenarios

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/metrics"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// refusalCounter is the metrics Observer (so that it has every method
// the proxy calls) also counting refusals by reason and finished requests
// by outcome.
type refusalCounter struct {
	*metrics.Metrics
	mu       sync.Mutex
	refused  map[string]int
	outcomes map[string]int
}

func newRefusalCounter() *refusalCounter {
	return &refusalCounter{Metrics: metrics.New("test"), refused: map[string]int{}, outcomes: map[string]int{}}
}

func (o *refusalCounter) Refused(reason string) {
	o.Metrics.Refused(reason)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refused[reason]++
}

func (o *refusalCounter) RequestDone(method, upstream string, status int, outcome string, total, nextHop time.Duration) {
	o.Metrics.RequestDone(method, upstream, status, outcome, total, nextHop)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.outcomes[outcome]++
}

func (o *refusalCounter) counts(reason string) (refused, done int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refused[reason], o.outcomes[reason]
}

// rawClient is a UDP socket that sends requests to the proxy as bytes and
// reads every datagram that comes back.
type rawClient struct {
	t    *testing.T
	pc   net.PacketConn
	host string
	port int
	dst  *net.UDPAddr
}

func newRawClient(t *testing.T, host, proxyAddr string) *rawClient {
	t.Helper()
	pc, err := net.ListenPacket("udp4", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	dst, err := net.ResolveUDPAddr("udp4", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	return &rawClient{t: t, pc: pc, host: host, port: pc.LocalAddr().(*net.UDPAddr).Port, dst: dst}
}

// send sends c with a Via naming this socket (with rport) and returns its
// Call-ID.
func (rc *rawClient) send(c siptest.Request) string {
	rc.t.Helper()
	req := c.Build(rc.t)
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP", Host: rc.host, Port: rc.port, Params: sip.NewParams()}
	via.Params.Add("branch", sip.GenerateBranch())
	via.Params.Add("rport", "")
	req.PrependHeader(via)
	if c.Method == sip.INVITE {
		req.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: c.FromUser, Host: rc.host, Port: rc.port}})
	}
	if _, err := rc.pc.WriteTo([]byte(req.String()), rc.dst); err != nil {
		rc.t.Fatal(err)
	}
	return req.CallID().Value()
}

// sendRaw sends text, in which %[1]s stands for this socket's host:port.
func (rc *rawClient) sendRaw(text string) {
	rc.t.Helper()
	msg := strings.ReplaceAll(text, "%[1]s", net.JoinHostPort(rc.host, strconv.Itoa(rc.port)))
	if _, err := rc.pc.WriteTo([]byte(msg), rc.dst); err != nil {
		rc.t.Fatal(err)
	}
}

// readUntilFinal reads datagrams until the final response for callID and
// returns it, with the Call-IDs and statuses of every other response read
// before it.
func (rc *rawClient) readUntilFinal(callID string) (final *sip.Response, others []string) {
	rc.t.Helper()
	buf := make([]byte, 65535)
	_ = rc.pc.SetReadDeadline(time.Now().Add(testutil.EventuallyLimit))
	for {
		n, _, err := rc.pc.ReadFrom(buf)
		if err != nil {
			rc.t.Fatalf("no final response for %s: %v", callID, err)
		}
		res, ok := parseResponse(buf[:n])
		if !ok {
			continue
		}
		id := res.CallID().Value()
		if id != callID {
			others = append(others, id+" "+strconv.Itoa(res.StatusCode))
			continue
		}
		if res.StatusCode >= 200 {
			return res, others
		}
	}
}

// queued returns the datagrams already waiting on the socket, without
// waiting (a read deadline in the past would not even look).
func (rc *rawClient) queued() []string {
	rc.t.Helper()
	sc, err := rc.pc.(*net.UDPConn).SyscallConn()
	if err != nil {
		rc.t.Fatal(err)
	}
	var out []string
	buf := make([]byte, 65535)
	for {
		var n int
		var rerr error
		if err := sc.Read(func(fd uintptr) bool {
			n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
			return true // never wait for more
		}); err != nil {
			rc.t.Fatal(err)
		}
		if errors.Is(rerr, syscall.EAGAIN) {
			return out
		}
		if rerr != nil {
			rc.t.Fatal(rerr)
		}
		out = append(out, string(buf[:n]))
	}
}

func parseResponse(b []byte) (*sip.Response, bool) {
	msg, err := sip.ParseMessage(append([]byte(nil), b...))
	if err != nil {
		return nil, false
	}
	res, ok := msg.(*sip.Response)
	return res, ok && res.CallID() != nil
}

// TestDenyDrop: with limits.deny = "drop", a refused UDP request gets no
// answer at all (not even 100 Trying), is counted as refused, and reaches
// no upstream. Silence is proven with a barrier: once the refused request
// is finished (counted), a request the client group admits is sent, and
// its answer arrives while the refused one's never does; a response to
// the refused request would have been sent before it finished.
func TestDenyDrop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		reason string
		method sip.RequestMethod
		// from is the refused request's source; the barrier comes from
		// 127.0.0.1, which the group admits to pbx-b only.
		from string
	}{
		{"scope-denied/MESSAGE", "scope-denied", sip.MESSAGE, "127.0.0.1"},
		{"scope-denied/INVITE", "scope-denied", sip.INVITE, "127.0.0.1"},
		{"source-denied/MESSAGE", "source-denied", sip.MESSAGE, "127.0.0.9"},
		{"source-denied/INVITE", "source-denied", sip.INVITE, "127.0.0.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := newRefusalCounter()
			h := startHarness(t, harnessOptions{
				Observer: obs,
				Limits:   proxy.Limits{Drop: true},
				Clients:  []proxy.ClientGroup{{Name: "b-only", Networks: prefixes("127.0.0.1/32"), Upstreams: []string{"pbx-b"}}},
			})
			refusedClient := newRawClient(t, tc.from, h.Addr["udp"])
			barrierClient := refusedClient
			if tc.from != "127.0.0.1" {
				barrierClient = newRawClient(t, "127.0.0.1", h.Addr["udp"])
			}
			refusedID := refusedClient.send(siptest.Request{Method: tc.method, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"})
			testutil.Eventually(t, "the refused request counted and finished", func() bool {
				refused, done := obs.counts(tc.reason)
				return refused == 1 && done == 1
			})
			barrierID := barrierClient.send(siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:2002@pbx-b.example.com", FromUser: "2001"})
			_, others := barrierClient.readUntilFinal(barrierID)
			for _, id := range others {
				t.Errorf("the client got a response before the barrier's: %s (the refused request is %s)", id, refusedID)
			}
			if refusedClient != barrierClient {
				if got := refusedClient.queued(); len(got) > 0 {
					t.Errorf("the refused source got an answer: %q", got)
				}
			}
			if refused, _ := obs.counts(tc.reason); refused != 1 {
				t.Errorf("refusals %q counted %d, want 1", tc.reason, refused)
			}
			if n := len(h.A.Requests()); n != 0 {
				t.Errorf("pbx-a received %d requests", n)
			}
		})
	}
}
