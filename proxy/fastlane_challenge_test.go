package proxy_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// challengeStep is what the upstream does with the re-send it holds.
type challengeStep struct {
	status string   // status line to answer with
	extra  []string // header lines to add
}

// A 401/407 to a request on the fast lane is answered on the lane (RFC
// 3261 §22.2): the re-send goes to the same target from the lane's socket,
// with credentials, CSeq+1 and a new branch, and the lane waits for its
// response under that branch (no client transaction of sipgo's); the
// client's retransmission meanwhile goes on as the re-send; a challenge
// with stale=true is answered again; one without it ends with the
// challenge relayed (the credentials were rejected, §22.1); the client
// gets one final response, and the lane keeps nothing afterwards.
func TestFastLaneChallengeOnLane(t *testing.T) {
	ok200 := challengeStep{status: "200 OK"}
	stale := challengeStep{status: "407 Proxy Authentication Required", extra: []string{
		`Proxy-Authenticate: Digest realm="bench", nonce="n2", qop="auth", algorithm=MD5, stale=true`}}
	again := challengeStep{status: "407 Proxy Authentication Required", extra: []string{
		`Proxy-Authenticate: Digest realm="bench", nonce="n2", qop="auth", algorithm=MD5`}}
	n := 0
	for _, tc := range []struct {
		name       string
		steps      []challengeStep // answers to the re-sends, in order
		retransmit bool            // the client retransmits while the first re-send waits
		final      string          // the client's final response
		outcome    string          // the request's outcome
		rounds     int             // challenges answered
	}{
		{name: "answered", steps: []challengeStep{ok200}, final: "SIP/2.0 200 OK", outcome: "relayed", rounds: 1},
		{name: "client retransmits", steps: []challengeStep{ok200}, retransmit: true, final: "SIP/2.0 200 OK", outcome: "relayed", rounds: 1},
		{name: "stale nonce", steps: []challengeStep{stale, ok200}, final: "SIP/2.0 200 OK", outcome: "relayed", rounds: 2},
		{name: "rejected", steps: []challengeStep{again}, final: "SIP/2.0 407 Proxy Authentication Required", outcome: "rejected", rounds: 1},
		{name: "stale then rejected", steps: []challengeStep{stale, again}, retransmit: true, final: "SIP/2.0 407 Proxy Authentication Required", outcome: "rejected", rounds: 2},
	} {
		n++
		eachHandOff(t, tc.name, func(t *testing.T, handOffAt int64) {

			up := startScriptedUpstream(t)
			p, addr, obs := startLaneProxy(t, up.conn.LocalAddr().String(), 0)
			callID := fmt.Sprintf("lane-ch-%d-%d", n, handOffAt)
			c := newLaneClient(t, addr, callID)
			c.send(t)
			sent := up.next(t, hostileWait)
			if bytes.Contains(sent.data, []byte("Proxy-Authorization:")) {
				t.Fatalf("first request carries credentials with preemptive off:\n%s", sent.data)
			}
			up.answer(t, sent, "407 Proxy Authentication Required",
				`Proxy-Authenticate: Digest realm="bench", nonce="n1", qop="auth", algorithm=MD5`)

			for i, step := range tc.steps {
				resent := up.next(t, hostileWait)
				checkResend(t, sent.data, resent.data, i+2)
				nonce := []byte(`nonce="n1"`)
				if i > 0 {
					nonce = []byte(`nonce="n2"`)
				}
				if !bytes.Contains(resent.data, nonce) {
					t.Errorf("re-send %d does not answer %s:\n%s", i+1, nonce, resent.data)
				}
				// On the lane: it waits for the response under the
				// re-send's branch, not in a client transaction.
				if branches, _ := proxy.LaneState(p); !slices.Equal(branches, []string{topBranch(t, resent.data)}) {
					t.Fatalf("re-send %d: the lane waits under %v, want the re-send's branch %s", i+1, branches, topBranch(t, resent.data))
				}
				if tc.retransmit && i == 0 {
					c.send(t)
					if d := up.next(t, hostileWait); !bytes.Equal(d.data, resent.data) {
						t.Fatalf("client's retransmission went on as\n%s\nwant the re-send\n%s", d.data, resent.data)
					}
				}
				up.answer(t, resent, step.status, step.extra...)
				sent = resent
			}

			res := c.readMessage(t, hostileWait)
			if got := firstLine(res); got != tc.final {
				t.Fatalf("client got %q, want %q:\n%s", got, tc.final, res)
			}
			if !bytes.Contains(res, []byte("\r\nCSeq: 1 MESSAGE\r\n")) {
				t.Errorf("final response lacks the client's CSeq:\n%s", res)
			}
			// The client's next request is answered next: no second
			// final response to the first, and nothing more went
			// upstream for it.
			barrier := c.other(callID + "-b")
			barrier.send(t)
			b := up.next(t, hostileWait)
			if !bytes.Contains(b.data, []byte("\r\nCall-ID: "+callID+"-b\r\n")) {
				t.Fatalf("upstream got %q after the final response, want the next request", firstLine(b.data))
			}
			up.answer(t, b, "202 Accepted")
			if got := c.read(t, hostileWait); got != "SIP/2.0 202 Accepted" {
				t.Fatalf("client got %q after its final response, want only the next request's 202", got)
			}
			testutil.Eventually(t, "the lane to hold nothing", func() bool {
				branches, requests := proxy.LaneState(p)
				return len(branches) == 0 && requests == 0
			})
			d := obs.challenged(t)
			if d.outcome != tc.outcome || d.status != statusOf(tc.final) {
				t.Errorf("request ended %d %q, want %d %q", d.status, d.outcome, statusOf(tc.final), tc.outcome)
			}
			if n := obs.answered(); n != tc.rounds {
				t.Errorf("%d challenges answered, want %d", n, tc.rounds)
			}
		})
	}
}

// An authenticated re-send on the fast lane the upstream never answers
// ends at Timer F (UpstreamTimeout, from the re-send): 408 to the client,
// and the lane keeps nothing.
func TestFastLaneChallengeTimerF(t *testing.T) {
	up := startScriptedUpstream(t)
	p, addr, obs := startLaneProxy(t, up.conn.LocalAddr().String(), 200*time.Millisecond)
	c := newLaneClient(t, addr, "lane-ch-timer-f")
	c.send(t)
	sent := up.next(t, hostileWait)
	up.answer(t, sent, "407 Proxy Authentication Required",
		`Proxy-Authenticate: Digest realm="bench", nonce="n1", qop="auth", algorithm=MD5`)
	resent := up.next(t, hostileWait)
	checkResend(t, sent.data, resent.data, 2)
	if got := c.read(t, hostileWait); got != "SIP/2.0 408 Request Timeout" {
		t.Fatalf("client got %q, want 408", got)
	}
	testutil.Eventually(t, "the lane to hold nothing", func() bool {
		branches, requests := proxy.LaneState(p)
		return len(branches) == 0 && requests == 0
	})
	var d requestEnd
	testutil.Eventually(t, "the request to end", func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		if len(obs.ended) > 0 {
			d = obs.ended[0]
		}
		return len(obs.ended) > 0
	})
	if d.status != 408 || d.outcome != "timeout" {
		t.Errorf("request ended %d %q, want 408 timeout", d.status, d.outcome)
	}
}

// checkResend fails the test unless resent is prev sent again with
// credentials, CSeq seq and a new branch.
func checkResend(t *testing.T, prev, resent []byte, seq int) {
	t.Helper()
	for _, want := range []string{"\r\nProxy-Authorization: Digest ", fmt.Sprintf("\r\nCSeq: %d MESSAGE\r\n", seq), "\r\nMax-Forwards: 69\r\n", "\r\n\r\nhello"} {
		if !bytes.Contains(resent, []byte(want)) {
			t.Errorf("re-send lacks %q:\n%s", want, resent)
		}
	}
	if n := bytes.Count(resent, []byte("Proxy-Authorization:")); n != 1 {
		t.Errorf("re-send carries %d Proxy-Authorization headers, want 1:\n%s", n, resent)
	}
	if topBranch(t, prev) == topBranch(t, resent) {
		t.Errorf("re-send with the challenged request's branch %s", topBranch(t, prev))
	}
}

func statusOf(line string) int {
	var code int
	_, _ = fmt.Sscanf(line, "SIP/2.0 %d", &code)
	return code
}

// readMessage returns the next datagram the client receives.
func (c *laneClient) readMessage(t *testing.T, wait time.Duration) []byte {
	t.Helper()
	buf := make([]byte, 65535)
	_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	n, _, err := c.conn.ReadFrom(buf)
	if err != nil {
		t.Fatalf("client received nothing: %v", err)
	}
	return bytes.Clone(buf[:n])
}

// startLaneProxy starts a proxy as startLoopbackProxy does (preemptive
// off), with an observer of how requests end; upstreamTimeout 0 keeps the
// default.
func startLaneProxy(t *testing.T, upstream string, upstreamTimeout time.Duration) (*proxy.Proxy, string, *doneObserver) {
	t.Helper()
	store, err := credentials.NewStore([]credentials.Entry{{Username: "bench", Password: credentials.NewSecret("bench-secret"), Server: upstream}})
	if err != nil {
		t.Fatal(err)
	}
	obs := &doneObserver{countingObserver: newCountingObserver()}
	ready := make(chan struct{})
	p, err := proxy.New(proxy.Config{
		Listeners:       []proxy.Listener{{Transport: "udp", Address: "127.0.0.1:0"}},
		Upstreams:       []proxy.Upstream{{Name: "pbx", Address: upstream, Transport: "udp", Domains: []string{"pbx.example.com"}, Preemptive: proxy.PreemptiveOff}},
		Credentials:     store,
		Clients:         []proxy.ClientGroup{{Name: "loopback", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Upstreams: []string{"*"}}},
		ShutdownGrace:   time.Second,
		UpstreamTimeout: upstreamTimeout,
		Observer:        obs,
		Logger:          slog.New(slog.DiscardHandler),
		Ready:           func() { close(ready) },
	})
	if err != nil {
		t.Fatal(err)
	}
	runProxy(t, p, ready, nil)
	return p, p.ListenAddrs()["udp"], obs
}

// doneObserver records how the requests ended and the challenges
// answered.
type doneObserver struct {
	*countingObserver
	mu     sync.Mutex
	ended  []requestEnd
	rounds int
}

type requestEnd struct {
	status  int
	outcome string
}

func (o *doneObserver) RequestDone(_, _ string, status int, outcome string, _, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ended = append(o.ended, requestEnd{status, outcome})
}

func (o *doneObserver) ChallengeAnswered(string, string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rounds++
}

// challenged waits for the challenged request and the barrier after it
// (answered 202) to end, and returns how the challenged one did.
func (o *doneObserver) challenged(t *testing.T) requestEnd {
	t.Helper()
	var end requestEnd
	testutil.Eventually(t, "both requests to end", func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		if len(o.ended) < 2 {
			return false
		}
		for _, e := range o.ended {
			if e.status != 202 {
				end = e
			}
		}
		return true
	})
	return end
}

func (o *doneObserver) answered() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.rounds
}
