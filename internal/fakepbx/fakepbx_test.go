package fakepbx

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/testutil"
)

var transports = []string{"UDP", "TCP"}

// newClient returns a plain sipgo client bound to 127.0.0.1.
func newClient(t *testing.T) *sipgo.Client {
	t.Helper()
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("fakepbx-test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	c, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientConnectionAddr("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// call describes one request of a test; request() builds a fresh
// *sip.Request each time (sipgo mutates what it sends).
type call struct {
	method    sip.RequestMethod
	ruri      string
	transport string
	dst       string
	callID    string
	cseq      uint32
	body      []byte
	headers   []sip.Header
}

func newCall(pbx *Server, method sip.RequestMethod, transport string) *call {
	return &call{
		method:    method,
		ruri:      fmt.Sprintf("sip:100@%s", pbx.Addr()),
		transport: transport,
		dst:       pbx.Addr(),
		callID:    sip.GenerateTagN(20) + "@test",
		cseq:      1,
	}
}

func (c *call) request(t *testing.T, extra ...sip.Header) *sip.Request {
	t.Helper()
	var u sip.Uri
	if err := sip.ParseUri(c.ruri, &u); err != nil {
		t.Fatal(err)
	}
	req := sip.NewRequest(c.method, u)
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "alice", Host: "127.0.0.1"}}
	from.Params.Add("tag", "fromtag1")
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: u.User, Host: u.Host, Port: u.Port}}
	cid := sip.CallIDHeader(c.callID)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: c.cseq, MethodName: c.method})
	for _, h := range c.headers {
		req.AppendHeader(h)
	}
	for _, h := range extra {
		req.AppendHeader(h)
	}
	if c.body != nil {
		req.AppendHeader(sip.NewHeader("Content-Type", "text/plain"))
	}
	req.SetBody(c.body)
	req.SetTransport(c.transport)
	req.SetDestination(c.dst)
	return req
}

// do sends req in a client transaction and returns the final response.
func do(t *testing.T, c *sipgo.Client, req *sip.Request) *sip.Response {
	t.Helper()
	res, err := tryDo(c, req, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", req.Method, err)
	}
	return res
}

func tryDo(c *sipgo.Client, req *sip.Request, timeout time.Duration) (*sip.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tx, err := c.TransactionRequest(ctx, req)
	if err != nil {
		return nil, err
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.IsProvisional() {
				continue
			}
			return res, nil
		case <-tx.Done():
			return nil, fmt.Errorf("transaction ended: %w", tx.Err())
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func wantStatus(t *testing.T, res *sip.Response, code int) {
	t.Helper()
	if res.StatusCode != code {
		t.Fatalf("got %d %s, want %d\n%s", res.StatusCode, res.Reason, code, res.String())
	}
}

// challengesOf parses every challenge header of a 401/407.
func challengesOf(t *testing.T, res *sip.Response) []*testChallenge {
	t.Helper()
	name := "Proxy-Authenticate"
	if res.StatusCode == 401 {
		name = "WWW-Authenticate"
	}
	var out []*testChallenge
	for _, h := range res.GetHeaders(name) {
		c, err := parseTestChallenge(h.Value())
		if err != nil {
			t.Fatalf("%s %q: %v", name, h.Value(), err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("no %s in\n%s", name, res.String())
	}
	return out
}

// answer returns the Authorization (for a 401) or Proxy-Authorization (407)
// header answering chal for req.
func answer(t *testing.T, code int, chal *testChallenge, req *sip.Request, user, pass string, nc int) sip.Header {
	t.Helper()
	return answerHeader(code, digestAnswer(t, chal, req.Method.String(), req.Recipient.String(), req.Body(), user, pass, nc))
}

func findChallenge(t *testing.T, chals []*testChallenge, realm, alg string) *testChallenge {
	t.Helper()
	for _, c := range chals {
		if c.Realm == realm && strings.EqualFold(c.Algorithm, alg) {
			return c
		}
	}
	t.Fatalf("no challenge for realm %q algorithm %q", realm, alg)
	return nil
}

func TestUnauthenticatedGets407(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Name: "pbx1", Host: "127.0.0.2", Accounts: map[string]string{"alice": "pw"}})
			c := newClient(t)
			call := newCall(pbx, sip.OPTIONS, tp)
			res := do(t, c, call.request(t))
			wantStatus(t, res, 407)
			if res.Reason != "Proxy Authentication Required" {
				t.Errorf("reason %q", res.Reason)
			}
			if res.GetHeader("WWW-Authenticate") != nil {
				t.Error("407 carries WWW-Authenticate")
			}
			raw := res.GetHeader("Proxy-Authenticate").Value()
			for _, want := range []string{`Digest realm="asterisk"`, `,nonce="`, `,opaque="`, `,algorithm=MD5`, `,qop="auth"`} {
				if !strings.Contains(raw, want) {
					t.Errorf("challenge %q lacks %q", raw, want)
				}
			}
			if strings.Contains(raw, "stale") {
				t.Errorf("first challenge mentions stale: %q", raw)
			}
			chals := challengesOf(t, res)
			if len(chals) != 1 {
				t.Fatalf("%d challenges", len(chals))
			}
			ch := chals[0]
			if ch.Realm != "asterisk" || ch.Nonce == "" || ch.Opaque == "" || ch.Algorithm != "MD5" || !slices.Equal(ch.QOP, []string{"auth"}) || ch.Stale {
				t.Errorf("challenge %+v", ch)
			}
			if got := res.GetHeader("Server"); got == nil || got.Value() != "FakePBX pbx1" {
				t.Errorf("Server header %v", got)
			}

			// A second challenge carries a fresh nonce and opaque.
			call.cseq++
			res2 := do(t, c, call.request(t))
			wantStatus(t, res2, 407)
			ch2 := challengesOf(t, res2)[0]
			if ch2.Nonce == ch.Nonce || ch2.Opaque == ch.Opaque {
				t.Errorf("nonce/opaque reused: %q %q", ch2.Nonce, ch2.Opaque)
			}

			reqs := pbx.Requests()
			if len(reqs) != 2 {
				t.Fatalf("%d requests recorded", len(reqs))
			}
			r := reqs[0]
			if r.Method != "OPTIONS" || r.Transport != tp || r.CallID != call.callID || r.CSeq != 1 ||
				r.RequestURI != call.ruri || r.Authenticated || r.AuthUsername != "" || len(r.Authorization) != 0 {
				t.Errorf("recorded %+v", r)
			}
			if !strings.HasPrefix(r.Raw, "OPTIONS "+call.ruri+" SIP/2.0\r\n") {
				t.Errorf("raw %q", r.Raw)
			}
			if !strings.HasPrefix(r.Source, "127.0.0.1:") {
				t.Errorf("source %q", r.Source)
			}
			if pbx.Challenges() != 2 {
				t.Errorf("Challenges() = %d", pbx.Challenges())
			}
			if !strings.HasPrefix(pbx.Addr(), "127.0.0.2:") || pbx.Port() == 0 {
				t.Errorf("Addr %q Port %d", pbx.Addr(), pbx.Port())
			}
		})
	}
}

func TestAuthenticatedGets200(t *testing.T) {
	algs := []string{"MD5", "SHA-256", "SHA-512-256", "MD5-sess", "SHA-256-sess", "SHA-512-256-sess"}
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Host: "127.0.0.3", Accounts: map[string]string{"alice": "pw", "bob": "pw2"}, Algorithms: algs})
			c := newClient(t)
			for i, alg := range algs {
				call := newCall(pbx, sip.MESSAGE, tp)
				call.body = []byte("hello")
				res := do(t, c, call.request(t))
				wantStatus(t, res, 407)
				if n := len(res.String()); tp == "UDP" && n <= 1300 {
					// Meant to exercise the fallback for responses sipgo
					// refuses to send over UDP (sip.UDPMTUSize-200).
					t.Errorf("407 is only %d bytes", n)
				}
				chals := challengesOf(t, res)
				if len(chals) != len(algs) {
					t.Fatalf("%d challenges, want %d", len(chals), len(algs))
				}
				for j, ch := range chals {
					if ch.Algorithm != algs[j] {
						t.Errorf("challenge %d algorithm %q, want %q", j, ch.Algorithm, algs[j])
					}
				}
				call.cseq++
				req := call.request(t)
				req.AppendHeader(answer(t, 407, findChallenge(t, chals, "asterisk", alg), req, "bob", "pw2", 1))
				res = do(t, c, req)
				wantStatus(t, res, 200)

				reqs := pbx.Requests()
				last := reqs[len(reqs)-1]
				if !last.Authenticated || last.AuthUsername != "bob" || last.CSeq != 2 || len(last.Authorization) != 1 ||
					!strings.Contains(last.Raw, "Proxy-Authorization: Digest ") || string(last.Body) != "hello" {
					t.Errorf("%s: recorded %+v", alg, last)
				}
				if len(reqs) != 2*(i+1) {
					t.Errorf("%d requests recorded", len(reqs))
				}
			}
			if got := pbx.AuthUsernames(); len(got) != len(algs) || got[0] != "bob" {
				t.Errorf("AuthUsernames %v", got)
			}
		})
	}
}

func TestRejectedCredentialsGetFreshChallenge(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
	c := newClient(t)

	type tamper func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header
	cases := map[string]tamper{
		"wrong password": func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header {
			return answer(t, 407, ch, req, "alice", "nope", 1)
		},
		"unknown user": func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header {
			return answer(t, 407, ch, req, "mallory", "pw", 1)
		},
		"nonce not issued": func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header {
			forged := *ch
			forged.Nonce = "1700000000/00000000000000000000000000000000"
			return answer(t, 407, &forged, req, "alice", "pw", 1)
		},
		"wrong realm": func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header {
			other := *ch
			other.Realm = "elsewhere"
			return answer(t, 407, &other, req, "alice", "pw", 1)
		},
		"wrong header": func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header {
			return answer(t, 401, ch, req, "alice", "pw", 1) // Authorization instead of Proxy-Authorization
		},
		"uri without parameters": func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header {
			return answerHeader(407, digestAnswer(t, ch, "OPTIONS", req.Recipient.Addr(), nil, "alice", "pw", 1))
		},
		"wrong method": func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header {
			return answerHeader(407, digestAnswer(t, ch, "INVITE", req.Recipient.String(), nil, "alice", "pw", 1))
		},
		"opaque dropped": func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header {
			cred := digestAnswer(t, ch, "OPTIONS", req.Recipient.String(), nil, "alice", "pw", 1)
			cred.Opaque = ""
			return answerHeader(407, cred)
		},
		"algorithm switched": func(t *testing.T, req *sip.Request, ch *testChallenge) sip.Header {
			other := *ch
			other.Algorithm = "SHA-256"
			return answer(t, 407, &other, req, "alice", "pw", 1)
		},
	}
	for name, tamper := range cases {
		t.Run(name, func(t *testing.T) {
			call := newCall(pbx, sip.OPTIONS, "UDP")
			call.ruri += ";transport=udp"
			res := do(t, c, call.request(t))
			wantStatus(t, res, 407)
			ch := challengesOf(t, res)[0]
			call.cseq++
			req := call.request(t)
			req.AppendHeader(tamper(t, req, ch))
			res = do(t, c, req)
			wantStatus(t, res, 407)
			ch2 := challengesOf(t, res)[0]
			if ch2.Stale || ch2.Nonce == ch.Nonce {
				t.Errorf("re-challenge %+v", ch2)
			}
			reqs := pbx.Requests()
			if last := reqs[len(reqs)-1]; last.Authenticated || len(last.Authorization) != 1 {
				t.Errorf("recorded %+v", last)
			}

			// The untampered answer to the fresh challenge still works.
			call.cseq++
			req = call.request(t)
			req.AppendHeader(answer(t, 407, ch2, req, "alice", "pw", 1))
			wantStatus(t, do(t, c, req), 200)
		})
	}
	if got := pbx.AuthUsernames(); !slices.Contains(got, "mallory") {
		t.Errorf("AuthUsernames %v lacks the rejected mallory", got)
	}
}

func TestNonceCountMustIncrease(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
	c := newClient(t)
	call := newCall(pbx, sip.OPTIONS, "TCP")
	ch := challengesOf(t, do(t, c, call.request(t)))[0]

	call.cseq++
	req := call.request(t)
	auth := answer(t, 407, ch, req, "alice", "pw", 1)
	req.AppendHeader(auth)
	wantStatus(t, do(t, c, req), 200)

	// The same answer (nc=1) again is a replay.
	call.cseq++
	wantStatus(t, do(t, c, call.request(t, sip.NewHeader("Proxy-Authorization", auth.Value()))), 407)

	// nc=3 on the original nonce is fine (pre-emptive auth), nc=2 afterwards is not.
	call.cseq++
	req = call.request(t)
	req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 3))
	wantStatus(t, do(t, c, req), 200)
	call.cseq++
	req = call.request(t)
	req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 2))
	wantStatus(t, do(t, c, req), 407)
}

func TestStaleOnce(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Host: "127.0.0.4", Accounts: map[string]string{"alice": "pw"}, StaleOnce: true, Algorithms: []string{"SHA-256"}})
			c := newClient(t)
			call := newCall(pbx, sip.INVITE, tp)
			ch := challengesOf(t, do(t, c, call.request(t)))[0]
			if ch.Stale {
				t.Fatal("first challenge is stale")
			}

			call.cseq++
			req := call.request(t)
			req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 1))
			res := do(t, c, req)
			wantStatus(t, res, 407)
			ch2 := challengesOf(t, res)[0]
			if !ch2.Stale || ch2.Nonce == ch.Nonce {
				t.Fatalf("second challenge %+v, want stale with a new nonce", ch2)
			}
			if !strings.Contains(res.GetHeader("Proxy-Authenticate").Value(), ",stale=true,") {
				t.Errorf("header %q", res.GetHeader("Proxy-Authenticate").Value())
			}

			// The stale nonce stays refused (still with stale=true).
			call.cseq++
			req = call.request(t)
			req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 2))
			res = do(t, c, req)
			wantStatus(t, res, 407)
			if !challengesOf(t, res)[0].Stale {
				t.Error("reuse of the stale nonce: challenge not stale")
			}

			call.cseq++
			req = call.request(t)
			req.AppendHeader(answer(t, 407, ch2, req, "alice", "pw", 1))
			wantStatus(t, do(t, c, req), 200)
			if pbx.Challenges() != 3 {
				t.Errorf("Challenges() = %d", pbx.Challenges())
			}
		})
	}
}

func TestTwoRealms(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, ExtraRealms: []string{"pbx2.example"}, Algorithms: []string{"MD5", "SHA-256"}})
	c := newClient(t)
	call := newCall(pbx, sip.OPTIONS, "UDP")
	res := do(t, c, call.request(t))
	wantStatus(t, res, 407)
	chals := challengesOf(t, res)
	var got []string
	for _, ch := range chals {
		got = append(got, ch.Realm+"/"+ch.Algorithm)
	}
	if want := []string{"asterisk/MD5", "asterisk/SHA-256", "pbx2.example/MD5", "pbx2.example/SHA-256"}; !slices.Equal(got, want) {
		t.Fatalf("challenges %v, want %v", got, want)
	}

	// One realm answered is not enough.
	call.cseq++
	req := call.request(t)
	req.AppendHeader(answer(t, 407, findChallenge(t, chals, "asterisk", "SHA-256"), req, "alice", "pw", 1))
	res = do(t, c, req)
	wantStatus(t, res, 407)
	chals = challengesOf(t, res)

	call.cseq++
	req = call.request(t)
	req.AppendHeader(answer(t, 407, findChallenge(t, chals, "asterisk", "SHA-256"), req, "alice", "pw", 1))
	req.AppendHeader(answer(t, 407, findChallenge(t, chals, "pbx2.example", "MD5"), req, "alice", "pw", 1))
	wantStatus(t, do(t, c, req), 200)
	reqs := pbx.Requests()
	if last := reqs[len(reqs)-1]; !last.Authenticated || len(last.Authorization) != 2 || last.AuthUsername != "alice" {
		t.Errorf("recorded %+v", last)
	}
}

func TestCSeqMustIncrease(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
			c := newClient(t)
			call := newCall(pbx, sip.OPTIONS, tp)
			call.cseq = 5
			wantStatus(t, do(t, c, call.request(t)), 407)
			for _, n := range []uint32{5, 4} {
				call.cseq = n
				res := do(t, c, call.request(t))
				wantStatus(t, res, 500)
				if res.Reason != "CSeq out of order" {
					t.Errorf("reason %q", res.Reason)
				}
			}
			// Other Call-IDs are independent; the same one continues above 5.
			other := newCall(pbx, sip.OPTIONS, tp)
			wantStatus(t, do(t, c, other.request(t)), 407)
			call.cseq = 6
			wantStatus(t, do(t, c, call.request(t)), 407)

			// INVITE refused for CSeq: the client's automatic ACK is
			// recorded and exempt from the check.
			inv := newCall(pbx, sip.INVITE, tp)
			inv.callID = call.callID
			inv.cseq = 6
			wantStatus(t, do(t, c, inv.request(t)), 500)
			pbx.WaitFor(t, 5*time.Second, func(reqs []Request) bool {
				last := reqs[len(reqs)-1]
				return last.Method == "ACK" && last.CSeq == 6 && last.CallID == call.callID
			})
		})
	}
}

func TestRegister(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
			c := newClient(t)
			call := newCall(pbx, sip.REGISTER, tp)
			call.ruri = "sip:" + pbx.Addr()
			contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "alice", Host: "127.0.0.1", Port: 5070}}
			call.headers = []sip.Header{contact, sip.NewHeader("Expires", "120")}
			res := do(t, c, call.request(t))
			wantStatus(t, res, 401)
			if res.Reason != "Unauthorized" || res.GetHeader("Proxy-Authenticate") != nil {
				t.Errorf("401: %s", res.String())
			}
			ch := challengesOf(t, res)[0]

			// The answer belongs in Authorization, not Proxy-Authorization.
			call.cseq++
			req := call.request(t)
			req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 1))
			res = do(t, c, req)
			wantStatus(t, res, 401)
			ch = challengesOf(t, res)[0]

			call.cseq++
			req = call.request(t)
			req.AppendHeader(answer(t, 401, ch, req, "alice", "pw", 1))
			res = do(t, c, req)
			wantStatus(t, res, 200)
			got := res.GetHeader("Contact")
			if got == nil || got.Value() != "<sip:alice@127.0.0.1:5070>;expires=120" {
				t.Errorf("Contact %v", got)
			}
		})
	}
}

func TestAuthInt(t *testing.T) {
	for _, qop := range []string{"auth-int", "auth,auth-int"} {
		t.Run(qop, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, QOP: qop, Algorithms: []string{"SHA-512-256", "MD5-sess"}})
			c := newClient(t)
			call := newCall(pbx, sip.MESSAGE, "TCP")
			call.body = []byte("body\r\nwith CRLF\r\n")
			res := do(t, c, call.request(t))
			wantStatus(t, res, 407)
			chals := challengesOf(t, res)
			if !slices.Equal(chals[0].QOP, strings.Split(qop, ",")) {
				t.Fatalf("qop %v", chals[0].QOP)
			}
			for _, alg := range []string{"SHA-512-256", "MD5-sess"} {
				ch := findChallenge(t, chals, "asterisk", alg)

				// An answer over another body is refused.
				call.cseq++
				req := call.request(t)
				other := call.request(t)
				other.SetBody([]byte("other"))
				cred := authIntCred(t, ch, other, "alice", "pw")
				res = do(t, c, call.request(t, sip.NewHeader("Proxy-Authorization", cred)))
				wantStatus(t, res, 407)
				chals = challengesOf(t, res)
				ch = findChallenge(t, chals, "asterisk", alg)

				call.cseq++
				req = call.request(t)
				req.AppendHeader(sip.NewHeader("Proxy-Authorization", authIntCred(t, ch, req, "alice", "pw")))
				wantStatus(t, do(t, c, req), 200)
			}
		})
	}
}

// authIntCred answers ch with qop=auth-int over req's body.
func authIntCred(t *testing.T, ch *testChallenge, req *sip.Request, user, pass string) string {
	t.Helper()
	return digestAnswerQOP(t, ch, "auth-int", req.Method.String(), req.Recipient.String(), req.Body(), user, pass, 1).String()
}

func TestQOPNoneAndAnonymous(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"anonymous": ""}, QOP: "none"})
	c := newClient(t)
	call := newCall(pbx, sip.SUBSCRIBE, "UDP")
	call.headers = []sip.Header{sip.NewHeader("Event", "presence"), sip.NewHeader("Expires", "600")}
	res := do(t, c, call.request(t))
	wantStatus(t, res, 407)
	ch := challengesOf(t, res)[0]
	if len(ch.QOP) != 0 || strings.Contains(res.GetHeader("Proxy-Authenticate").Value(), "qop") {
		t.Fatalf("qop offered: %v", res.GetHeader("Proxy-Authenticate"))
	}
	call.cseq++
	req := call.request(t)
	req.AppendHeader(answer(t, 407, ch, req, "anonymous", "", 0))
	res = do(t, c, req)
	wantStatus(t, res, 200)
	if h := res.GetHeader("Expires"); h == nil || h.Value() != "600" {
		t.Errorf("Expires %v", h)
	}
	if res.GetHeader("Contact") == nil {
		t.Error("no Contact in 200 to SUBSCRIBE")
	}
	if u := pbx.AuthUsernames(); !slices.Equal(u, []string{"anonymous"}) {
		t.Errorf("AuthUsernames %v", u)
	}
}

func TestInviteFinalCodeAndAcks(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, FinalCode: 486})
			c := newClient(t)
			call := newCall(pbx, sip.INVITE, tp)
			call.body = []byte("v=0\r\n")
			ch := challengesOf(t, do(t, c, call.request(t)))[0]
			// sipgo's client transaction ACKs the 407 itself.
			pbx.WaitFor(t, 5*time.Second, func(reqs []Request) bool {
				return len(reqs) == 2 && reqs[1].Method == "ACK" && reqs[1].CSeq == 1
			})

			call.cseq++
			req := call.request(t)
			req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 1))
			wantStatus(t, do(t, c, req), 486)
			reqs := pbx.WaitFor(t, 5*time.Second, func(reqs []Request) bool {
				return len(reqs) == 4 && reqs[3].Method == "ACK" && reqs[3].CSeq == 2
			})
			if !reqs[2].Authenticated || reqs[3].Authenticated {
				t.Errorf("recorded %+v", reqs)
			}
		})
	}
}

func TestInvite200AndAck(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
	c := newClient(t)
	call := newCall(pbx, sip.INVITE, "UDP")
	ch := challengesOf(t, do(t, c, call.request(t)))[0]
	call.cseq++
	req := call.request(t)
	auth := answer(t, 407, ch, req, "alice", "pw", 1)
	req.AppendHeader(auth)
	res := do(t, c, req)
	wantStatus(t, res, 200)
	if h := res.GetHeader("Contact"); h == nil || !strings.Contains(h.Value(), pbx.Addr()) {
		t.Errorf("Contact %v", h)
	}

	// The 2xx ACK is a new transaction; it is recorded, never challenged.
	ack := call.request(t, sip.NewHeader("Proxy-Authorization", auth.Value()))
	ack.Method = sip.ACK
	ack.CSeq().MethodName = sip.ACK
	ack.ReplaceHeader(res.To())
	if err := c.WriteRequest(ack); err != nil {
		t.Fatal(err)
	}
	reqs := pbx.WaitFor(t, 5*time.Second, func(reqs []Request) bool {
		return reqs[len(reqs)-1].Method == "ACK" && reqs[len(reqs)-1].CSeq == 2
	})
	if n := pbx.Challenges(); n != 1 {
		t.Errorf("Challenges() = %d", n)
	}
	_ = reqs
}

func TestCustomChallengeCode(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, ChallengeCode: func(string) int { return 401 }})
	c := newClient(t)
	call := newCall(pbx, sip.OPTIONS, "UDP")
	res := do(t, c, call.request(t))
	wantStatus(t, res, 401)
	ch := challengesOf(t, res)[0]
	call.cseq++
	req := call.request(t)
	req.AppendHeader(answer(t, 401, ch, req, "alice", "pw", 1))
	wantStatus(t, do(t, c, req), 200)
}

func TestSilent(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Silent: true})
			c := newClient(t)
			for _, m := range []sip.RequestMethod{sip.OPTIONS, sip.INVITE} {
				call := newCall(pbx, m, tp)
				// Longer than sipgo's 200ms automatic 100 Trying and than
				// the first UDP retransmission (500ms).
				res, err := tryDo(c, call.request(t), 800*time.Millisecond)
				if err == nil {
					t.Fatalf("%s: got %d from a silent fake", m, res.StatusCode)
				}
				reqs := pbx.WaitFor(t, 5*time.Second, func(reqs []Request) bool {
					return len(reqs) > 0 && reqs[len(reqs)-1].Method == m.String()
				})
				if reqs[len(reqs)-1].CallID != call.callID {
					t.Errorf("recorded %+v", reqs[len(reqs)-1])
				}
			}
			if pbx.Challenges() != 0 {
				t.Error("silent fake challenged")
			}
		})
	}
}

func TestUnmatchedCancel(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
	c := newClient(t)
	call := newCall(pbx, sip.CANCEL, "TCP")
	res := do(t, c, call.request(t))
	wantStatus(t, res, 481)
	r := pbx.Requests()[0]
	if r.Method != "CANCEL" || !strings.HasPrefix(r.Raw, "CANCEL ") || !strings.Contains(r.Raw, "\r\nVia: SIP/2.0/TCP ") {
		t.Errorf("recorded %+v", r)
	}
}

// Everything Start and the traffic started is gone after cleanup.
func TestNoGoroutineOutlivesTheFake(t *testing.T) {
	_, maxBefore := goroutines()
	t.Run("traffic", func(t *testing.T) {
		pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
		c := newClient(t)
		for _, tp := range transports {
			call := newCall(pbx, sip.INVITE, tp)
			ch := challengesOf(t, do(t, c, call.request(t)))[0]
			call.cseq++
			req := call.request(t)
			req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 1))
			wantStatus(t, do(t, c, req), 200) // its handler waits for an ACK until cleanup
		}
	})
	noGoroutineAfter(t, maxBefore)
}

// noGoroutineAfter waits for every goroutine started after the one
// numbered maxBefore to end, and fails the test naming those still
// running if they do not.
func noGoroutineAfter(t *testing.T, maxBefore int) {
	t.Helper()
	var leaked []string
	err := testutil.Wait(t.Context(), testutil.EventuallyLimit, func() bool {
		all, _ := goroutines()
		leaked = leaked[:0]
		for id, stack := range all {
			if id > maxBefore {
				leaked = append(leaked, stack)
			}
		}
		return len(leaked) == 0
	})
	if err != nil {
		t.Errorf("%d goroutines started during the test are still running:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	}
}

// goroutines returns the stack of every other goroutine by id, and the
// highest id.
func goroutines() (map[int]string, int) {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	out, maxID := map[int]string{}, 0
	for i, g := range strings.Split(string(buf), "\n\n") {
		var id int
		if _, err := fmt.Sscanf(g, "goroutine %d ", &id); err != nil || i == 0 { // 0: this one
			continue
		}
		out[id] = g
		maxID = max(maxID, id)
	}
	return out, maxID
}

// rawOptions is an OPTIONS with compact header names, as a non-sipgo client
// could send it.
func rawOptions(laddr, ruri, branch, callID string, cseq int) string {
	return fmt.Sprintf("OPTIONS %s SIP/2.0\r\n"+
		"v: SIP/2.0/%s %s;branch=%s;rport\r\n"+
		"f: <sip:alice@127.0.0.1>;tag=abc\r\n"+
		"t: <sip:100@127.0.0.1>\r\n"+
		"i: %s\r\n"+
		"CSeq: %d OPTIONS\r\n"+
		"Max-Forwards: 70\r\n"+
		"l: 0\r\n\r\n", ruri, map[bool]string{true: "TCP", false: "UDP"}[strings.Contains(branch, "tcp")], laddr, branch, callID, cseq)
}

// Raw and RequestURI are the bytes on the wire, not sipgo's re-rendering.
func TestRawIsWhatWasReceived(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}})
	ruri := "sip:%61lice@" + pbx.Addr() + ";Transport=udp;x"

	conn, err := net.Dial("udp4", pbx.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := rawOptions(conn.LocalAddr().String(), ruri, "z9hG4bK-udp-1", "raw-udp", 1)
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65535)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(buf[:n]), "SIP/2.0 407 ") {
		t.Fatalf("response %q", buf[:n])
	}
	r := pbx.Requests()[0]
	if r.Raw != msg || r.RequestURI != ruri {
		t.Errorf("Raw %q\nRequestURI %q", r.Raw, r.RequestURI)
	}

	// TCP: a keep-alive and two pipelined requests in one write.
	tc, err := net.Dial("tcp4", pbx.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	m1 := rawOptions(tc.LocalAddr().String(), ruri, "z9hG4bK-tcp-1", "raw-tcp", 1)
	m2 := rawOptions(tc.LocalAddr().String(), ruri, "z9hG4bK-tcp-2", "raw-tcp", 2)
	if _, err := tc.Write([]byte("\r\n\r\n" + m1 + m2)); err != nil {
		t.Fatal(err)
	}
	reqs := pbx.WaitFor(t, 5*time.Second, func(reqs []Request) bool { return len(reqs) == 3 })
	// Recorded, and CSeq-checked, in wire order although sipgo handles
	// the two in concurrent goroutines.
	if reqs[1].Raw != m1 || reqs[2].Raw != m2 {
		t.Errorf("TCP raws %q, %q", reqs[1].Raw, reqs[2].Raw)
	}
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	for strings.Count(string(got), "SIP/2.0 ") < 2 {
		n, err := tc.Read(buf)
		if err != nil {
			t.Fatalf("read: %v (got %q)", err, got)
		}
		got = append(got, buf[:n]...)
	}
	if strings.Count(string(got), "SIP/2.0 407 ") != 2 {
		t.Errorf("responses %q", got)
	}
}

// A CANCEL for an INVITE the fake already answered is answered by sipgo's
// transaction layer (200); the fake still records it.
func TestLateCancelRecorded(t *testing.T) {
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			pbx := Start(t, Config{Accounts: map[string]string{"anonymous": ""}})
			c := newClient(t)
			call := newCall(pbx, sip.INVITE, tp)
			ch := challengesOf(t, do(t, c, call.request(t)))[0]
			call.cseq++
			inv := call.request(t)
			inv.AppendHeader(answer(t, 407, ch, inv, "anonymous", "", 1))
			wantStatus(t, do(t, c, inv), 200)

			cancel := call.request(t)
			cancel.Method = sip.CANCEL
			cancel.CSeq().MethodName = sip.CANCEL
			cancel.PrependHeader(inv.Via().Clone())
			noBuild := func(*sipgo.Client, *sip.Request) error { return nil }
			tx, err := c.TransactionRequest(context.Background(), cancel, noBuild)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Terminate()
			select {
			case res := <-tx.Responses():
				wantStatus(t, res, 200)
			case <-time.After(5 * time.Second):
				t.Fatal("no response to CANCEL")
			}
			reqs := pbx.WaitFor(t, 5*time.Second, func(reqs []Request) bool {
				return reqs[len(reqs)-1].Method == "CANCEL"
			})
			if last := reqs[len(reqs)-1]; last.CSeq != 2 || !strings.HasPrefix(last.Raw, "CANCEL ") || last.Transport != tp {
				t.Errorf("recorded %+v", last)
			}
		})
	}
}

// TestIPv6 serves on ::1: a request over UDP and TCP is challenged and
// recorded with its IPv6 source.
func TestIPv6(t *testing.T) {
	pbx := Start(t, Config{Name: "pbx6", Host: "::1", Accounts: map[string]string{"alice": "pw"}})
	if !strings.HasPrefix(pbx.Addr(), "[::1]:") {
		t.Fatalf("Addr %q, want [::1]:port", pbx.Addr())
	}
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("fakepbx-test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	c, err := sipgo.NewClient(ua, sipgo.WithClientHostname("::1"), sipgo.WithClientConnectionAddr("[::1]:0"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range transports {
		t.Run(tp, func(t *testing.T) {
			call := newCall(pbx, sip.OPTIONS, tp)
			wantStatus(t, do(t, c, call.request(t)), 407)
			reqs := pbx.Requests()
			if r := reqs[len(reqs)-1]; !strings.HasPrefix(r.Source, "[::1]:") || r.Transport != tp {
				t.Errorf("recorded source %q transport %q", r.Source, r.Transport)
			}
		})
	}
}
