package fakepbx

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// challenge sends call's request and returns the challenge status and the
// first challenge.
func challenge(t *testing.T, c *sipgo.Client, call *call) (int, *testChallenge) {
	t.Helper()
	res := do(t, c, call.request(t))
	if res.StatusCode != 401 && res.StatusCode != 407 {
		t.Fatalf("%s: %d, want a challenge", call.method, res.StatusCode)
	}
	return res.StatusCode, challengesOf(t, res)[0]
}

// Strict fills every strict knob with a real server's default, and keeps
// the knobs set explicitly.
func TestStrictDefaults(t *testing.T) {
	got := Config{Strict: true}
	got.applyStrict()
	if !got.FirstCredentialOnly || !got.StrictQuoting || !got.CheckDialogTarget || !got.ListAllBindings ||
		got.NonceLifetime != StrictNonceLifetime || got.MinExpires != StrictMinExpires || got.MaxExpires != StrictMaxExpires ||
		got.ChallengeCode == nil || got.ChallengeCode("INVITE") != 401 {
		t.Errorf("Strict gave %+v", got)
	}
	kept := Config{Strict: true, NonceLifetime: time.Minute, MinExpires: 1, MaxExpires: 10, ChallengeCode: DefaultChallengeCode}
	kept.applyStrict()
	if kept.NonceLifetime != time.Minute || kept.MinExpires != 1 || kept.MaxExpires != 10 || kept.ChallengeCode("INVITE") != 407 {
		t.Errorf("Strict overrode explicit knobs: %+v", kept)
	}
	lenient := Config{}
	lenient.applyStrict()
	if lenient.FirstCredentialOnly || lenient.StrictQuoting || lenient.CheckDialogTarget || lenient.ListAllBindings ||
		lenient.NonceLifetime != 0 || lenient.ChallengeCode != nil {
		t.Errorf("no Strict gave %+v", lenient)
	}
}

// Asterisk's PJSIP challenges every method with 401 and WWW-Authenticate
// and reads only Authorization; Proxy-Authorization is ignored.
func TestStrictChallenges401ForEveryMethod(t *testing.T) {
	pbx := Start(t, Config{Strict: true, Accounts: map[string]string{"alice": "pw"}})
	c := newClient(t)
	for _, m := range []sip.RequestMethod{sip.REGISTER, sip.INVITE, sip.OPTIONS, sip.MESSAGE, sip.SUBSCRIBE, sip.NOTIFY, sip.PUBLISH, sip.REFER, sip.INFO} {
		t.Run(m.String(), func(t *testing.T) {
			call := newCall(pbx, m, "UDP")
			res := do(t, c, call.request(t))
			wantStatus(t, res, 401)
			if res.GetHeader("Proxy-Authenticate") != nil || res.GetHeader("WWW-Authenticate") == nil {
				t.Fatalf("401 headers:\n%s", res.String())
			}
			ch := challengesOf(t, res)[0]

			call.cseq++
			req := call.request(t)
			req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 1)) // the wrong header
			res = do(t, c, req)
			wantStatus(t, res, 401)
			ch = challengesOf(t, res)[0]

			call.cseq++
			req = call.request(t)
			req.AppendHeader(answer(t, 401, ch, req, "alice", "pw", 1))
			wantStatus(t, do(t, c, req), 200)
		})
	}
}

// Asterisk and Kamailio judge the first credential for their realm only:
// a wrong one followed by a right one fails, where a lenient fake would
// accept any.
func TestStrictFirstCredentialOnly(t *testing.T) {
	for _, tc := range []struct {
		name       string
		strict     bool
		rightFirst bool
		want       int
	}{
		{"strict/right first", true, true, 200},
		{"strict/wrong first", true, false, 407},
		{"lenient/wrong first", false, false, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pbx := Start(t, Config{FirstCredentialOnly: tc.strict, Accounts: map[string]string{"alice": "pw"}})
			c := newClient(t)
			call := newCall(pbx, sip.MESSAGE, "TCP")
			code, ch := challenge(t, c, call)
			call.cseq++
			req := call.request(t)
			right := answer(t, code, ch, req, "alice", "pw", 1)
			wrong := answer(t, code, ch, req, "alice", "not-pw", 2)
			if tc.rightFirst {
				req.AppendHeader(right)
				req.AppendHeader(wrong)
			} else {
				req.AppendHeader(wrong)
				req.AppendHeader(right)
			}
			wantStatus(t, do(t, c, req), tc.want)
		})
	}
}

// A nonce lives NonceLifetime on the fake's clock; a correct answer with
// an older one gets a fresh challenge with stale=true, a wrong one a plain
// challenge, and the fresh nonce works.
func TestStrictNonceLifetime(t *testing.T) {
	for _, tc := range []struct {
		name      string
		advance   time.Duration
		password  string
		wantCode  int
		wantStale bool
	}{
		{"within the lifetime", StrictNonceLifetime, "pw", 200, false},
		{"expired", StrictNonceLifetime + time.Second, "pw", 401, true},
		{"expired, wrong password", StrictNonceLifetime + time.Second, "nope", 401, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := NewManualClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
			pbx := Start(t, Config{Strict: true, Clock: clock.Now, Accounts: map[string]string{"alice": "pw"}})
			c := newClient(t)
			call := newCall(pbx, sip.OPTIONS, "UDP")
			code, ch := challenge(t, c, call)
			clock.Advance(tc.advance)
			call.cseq++
			req := call.request(t)
			req.AppendHeader(answer(t, code, ch, req, "alice", tc.password, 1))
			res := do(t, c, req)
			wantStatus(t, res, tc.wantCode)
			if res.StatusCode == 200 {
				return
			}
			fresh := challengesOf(t, res)[0]
			if fresh.Stale != tc.wantStale || fresh.Nonce == ch.Nonce {
				t.Fatalf("challenge %+v, want stale=%v with a new nonce", fresh, tc.wantStale)
			}
			call.cseq++
			req = call.request(t)
			req.AppendHeader(answer(t, code, fresh, req, "alice", "pw", 1))
			wantStatus(t, do(t, c, req), 200)
		})
	}
}

// The registrar bounds what it grants: below MinExpires (but not 0) is
// 423 with Min-Expires and binds nothing, above MaxExpires is capped, and
// the 200's Contact says what was granted.
func TestStrictRegistrarExpires(t *testing.T) {
	for _, tc := range []struct {
		name          string
		header        string // Expires header, "" for none
		param         string // the Contact's expires parameter, "" for none
		wantCode      int
		wantGranted   string // the 200's Contact expires ("" for no Contact)
		wantBindingOf int    // expiry of the binding afterwards, 0 for none
	}{
		{"as asked", "120", "", 200, "120", 120},
		{"at the minimum", "60", "", 200, "60", 60},
		{"too brief", "30", "", 423, "", 0},
		{"too brief in the Contact", "600", "10", 423, "", 0},
		{"capped", "7200", "", 200, "3600", 3600},
		{"capped in the Contact", "60", "86400", 200, "3600", 3600},
		{"none named", "", "", 200, "3600", 3600},
		{"removal", "0", "", 200, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pbx := Start(t, Config{Strict: true, Accounts: map[string]string{"alice": "pw"}})
			c := newClient(t)
			call := newCall(pbx, sip.REGISTER, "UDP")
			call.ruri = "sip:" + pbx.Addr()
			contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "alice", Host: "127.0.0.1", Port: 5070}, Params: sip.NewParams()}
			if tc.param != "" {
				contact.Params.Add("expires", tc.param)
			}
			call.headers = []sip.Header{contact}
			if tc.header != "" {
				call.headers = append(call.headers, sip.NewHeader("Expires", tc.header))
			}
			code, ch := challenge(t, c, call)
			call.cseq++
			req := call.request(t)
			req.AppendHeader(answer(t, code, ch, req, "alice", "pw", 1))
			res := do(t, c, req)
			wantStatus(t, res, tc.wantCode)
			if tc.wantCode == 423 {
				if h := res.GetHeader("Min-Expires"); h == nil || h.Value() != "60" {
					t.Errorf("423 Min-Expires %v, want 60", h)
				}
			}
			got := ""
			if h := res.Contact(); h != nil {
				got, _ = h.Params.Get("expires")
			}
			if got != tc.wantGranted {
				t.Errorf("granted %q, want %q", got, tc.wantGranted)
			}
			bs := pbx.Bindings("") // the To of call.request copies the Request-URI, which has no user
			switch {
			case tc.wantBindingOf == 0 && len(bs) != 0:
				t.Errorf("bindings %+v, want none", bs)
			case tc.wantBindingOf != 0 && (len(bs) != 1 || bs[0].Expires != tc.wantBindingOf):
				t.Errorf("bindings %+v, want one for %ds", bs, tc.wantBindingOf)
			}
		})
	}
}

// RFC 7616 §3.4 quoting: Kamailio refuses credentials it cannot parse
// with 400; the strict fake refuses every quoting violation so. A lenient
// fake accepts what it can read.
func TestStrictQuoting(t *testing.T) {
	requote := func(k string, quoted bool) func(string, map[string]string) string {
		return func(v string, p map[string]string) string {
			if quoted {
				return strings.Replace(v, k+"="+p[k], k+"="+quote(p[k]), 1)
			}
			return strings.Replace(v, k+"="+quote(p[k]), k+"="+p[k], 1)
		}
	}
	for _, tc := range []struct {
		name    string
		edit    func(string, map[string]string) string
		strict  int // status with StrictQuoting
		lenient int // status without
	}{
		{"as RFC 7616 writes it", func(v string, _ map[string]string) string { return v }, 200, 200},
		{"username unquoted", requote("username", false), 400, 200},
		{"realm unquoted", requote("realm", false), 400, 200},
		{"uri unquoted", requote("uri", false), 400, 200},
		{"response unquoted", requote("response", false), 400, 200},
		{"cnonce unquoted", requote("cnonce", false), 400, 200},
		{"opaque unquoted", requote("opaque", false), 400, 200},
		{"algorithm quoted", requote("algorithm", true), 400, 200},
		{"qop quoted", requote("qop", true), 400, 200},
		{"nc quoted", requote("nc", true), 400, 200},
		{"unparsable", func(v string, _ map[string]string) string { return v + `, broken="` }, 400, 407},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, strict := range []bool{true, false} {
				pbx := Start(t, Config{StrictQuoting: strict, Accounts: map[string]string{"alice": "pw"}})
				c := newClient(t)
				call := newCall(pbx, sip.OPTIONS, "UDP")
				code, ch := challenge(t, c, call)
				call.cseq++
				req := call.request(t)
				cred := digestAnswer(t, ch, "OPTIONS", req.Recipient.String(), nil, "alice", "pw", 1)
				p := map[string]string{"username": cred.Username, "realm": cred.Realm, "uri": cred.URI, "response": cred.Response,
					"cnonce": cred.Cnonce, "opaque": cred.Opaque, "algorithm": cred.Algorithm, "qop": cred.QOP, "nc": "00000001"}
				value := tc.edit(cred.String(), p)
				if value == cred.String() && tc.name != "as RFC 7616 writes it" {
					t.Fatalf("edit changed nothing in %q", value)
				}
				req.AppendHeader(sip.NewHeader(authHeaderFor(code), value))
				want := tc.lenient
				if strict {
					want = tc.strict
				}
				res := do(t, c, req)
				if res.StatusCode != want {
					t.Errorf("StrictQuoting=%v: %d for %q, want %d", strict, res.StatusCode, value, want)
				}
			}
		})
	}
}

// In a dialog the strict UA takes only requests sent to its Contact,
// without a Route other than one naming it, from the route set's adjacent
// hop; others get 404 and are errors of the call. The lenient UA takes
// them all.
func TestStrictDialogTarget(t *testing.T) {
	for _, tc := range []struct {
		name string
		rr   string                         // Record-Route of the INVITE, "" for none
		edit func(l *leg, req *sip.Request) // makes the BYE wrong (or not)
		want int
	}{
		{name: "to the Contact", want: 200},
		{name: "with a Route naming the fake", edit: func(l *leg, req *sip.Request) {
			req.PrependHeader(&sip.RouteHeader{Address: sip.Uri{Scheme: "sip", Host: l.pbx.cfg.Host, Port: l.pbx.Port(), UriParams: sip.HeaderParams{{K: "lr"}}}})
		}, want: 200},
		{name: "from the recorded route's host", rr: "<sip:127.0.0.1:5999;lr>", want: 200},
		{name: "Request-URI not the Contact", edit: func(l *leg, req *sip.Request) {
			req.Recipient = *l.ruri.Clone()
		}, want: 404},
		{name: "Request-URI on another port", edit: func(l *leg, req *sip.Request) {
			req.Recipient.Port++
		}, want: 404},
		{name: "a Route to elsewhere left", edit: func(l *leg, req *sip.Request) {
			req.PrependHeader(&sip.RouteHeader{Address: sip.Uri{Scheme: "sip", Host: "127.0.0.9", Port: 5060, UriParams: sip.HeaderParams{{K: "lr"}}}})
		}, want: 404},
		{name: "around the recorded route", rr: "<sip:127.0.0.9:5060;lr>", want: 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, strict := range []bool{true, false} {
				pbx := Start(t, Config{CheckDialogTarget: strict, Accounts: map[string]string{"alice": "pw"}})
				l := startCaller(t, "UDP").newLeg(pbx)
				if tc.rr != "" {
					l.extra = []sip.Header{sip.NewHeader("Record-Route", tc.rr)}
				}
				l.invite()
				res := l.waitFinal(l.tx)
				wantStatus(t, res, 200)
				l.learn(res)
				l.ack(l.cseq, true)
				pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return len(cs) == 1 && cs[0].Acked })
				l.cseq++
				bye := l.request(sip.BYE, l.cseq)
				if tc.edit != nil {
					tc.edit(l, bye)
				}
				want := tc.want
				if !strict {
					want = 200
				}
				wantStatus(t, l.do(bye), want)
				c := oneCall(t, pbx)
				if bad := want != 200; bad != slices.ContainsFunc(c.Errors, func(e string) bool { return strings.Contains(e, "BYE") }) {
					t.Errorf("CheckDialogTarget=%v: errors %q", strict, c.Errors)
				}
			}
		})
	}
}

// The ACK for a 2xx must go to the dialog's Contact too; a strict UA
// records one that does not (an ACK has no response).
func TestStrictDialogTargetAck(t *testing.T) {
	pbx := Start(t, Config{Strict: true, Accounts: map[string]string{"alice": "pw"}})
	l := startCaller(t, "UDP").newLeg(pbx)
	l.invite()
	res := l.waitFinal(l.tx)
	wantStatus(t, res, 200)
	l.learn(res)
	ack := l.request(sip.ACK, l.cseq)
	ack.Recipient = *l.ruri.Clone()
	ack.AppendHeader(sip.HeaderClone(l.auth))
	if err := l.c.client.WriteRequest(ack, sipgo.ClientRequestAddVia); err != nil {
		t.Fatal(err)
	}
	c := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return len(cs) == 1 && cs[0].Acked })[0]
	if !slices.ContainsFunc(c.Errors, func(e string) bool { return strings.Contains(e, "ACK") && strings.Contains(e, "Contact") }) {
		t.Errorf("errors %q, want the ACK's Request-URI", c.Errors)
	}
}

// A registrar's 200 lists every binding of the AOR (RFC 3261 §10.3 step
// 8), each with its own expiry; a lenient fake lists the request's only.
func TestStrictListAllBindings(t *testing.T) {
	for _, strict := range []bool{true, false} {
		pbx := Start(t, Config{ListAllBindings: strict, Accounts: map[string]string{"alice": "pw"}})
		c := newClient(t)
		register := func(cseq uint32, port int, expires string) *sip.Response {
			t.Helper()
			call := newCall(pbx, sip.REGISTER, "UDP")
			call.callID = fmt.Sprintf("reg-%d@test", port) // one Call-ID per contact, as two phones
			call.cseq = cseq
			call.ruri = "sip:" + pbx.Addr()
			call.headers = []sip.Header{
				&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "alice", Host: "127.0.0.1", Port: port}},
				sip.NewHeader("Expires", expires),
			}
			code, ch := challenge(t, c, call)
			call.cseq++
			req := call.request(t)
			req.AppendHeader(answer(t, code, ch, req, "alice", "pw", 1))
			res := do(t, c, req)
			wantStatus(t, res, 200)
			return res
		}
		listed := func(res *sip.Response) []string {
			var out []string
			for _, h := range res.GetHeaders("Contact") {
				out = append(out, h.Value())
			}
			return out
		}
		register(1, 5071, "600")
		got := listed(register(1, 5072, "120"))
		want := []string{"<sip:alice@127.0.0.1:5071>;expires=600", "<sip:alice@127.0.0.1:5072>;expires=120"}
		if !strict {
			want = want[1:]
		}
		if !slices.Equal(got, want) {
			t.Errorf("ListAllBindings=%v: 200 lists %q, want %q", strict, got, want)
		}
		got = listed(register(3, 5071, "0"))
		want = []string{"<sip:alice@127.0.0.1:5072>;expires=120"}
		if !strict {
			want = nil
		}
		if !slices.Equal(got, want) {
			t.Errorf("ListAllBindings=%v: 200 to the removal lists %q, want %q", strict, got, want)
		}
	}
}

// A CANCEL must carry its INVITE's Request-URI (RFC 3261 §9.1); the strict
// UA records one that does not as an error of the call.
func TestStrictCancelTarget(t *testing.T) {
	for _, tc := range []struct {
		name      string
		strict    bool
		otherURI  bool
		wantError bool
	}{
		{"strict/same Request-URI", true, false, false},
		{"strict/another Request-URI", true, true, true},
		{"lenient/another Request-URI", false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pbx := Start(t, Config{CheckDialogTarget: tc.strict, Accounts: map[string]string{"alice": "pw"}, Call: CallConfig{NoAnswer: true}})
			l := startCaller(t, "UDP").newLeg(pbx)
			l.invite()
			l.learn(l.next(l.tx))
			ruri := *l.inv.Recipient.Clone()
			if tc.otherURI {
				ruri.User = "999"
			}
			wantStatus(t, l.cancelTo(ruri), 200)
			wantStatus(t, l.waitFinal(l.tx), 487)
			c := pbx.WaitCall(t, 5*time.Second, func(cs []Call) bool { return len(cs) == 1 && cs[0].Cancelled })[0]
			got := slices.ContainsFunc(c.Errors, func(e string) bool { return strings.Contains(e, "CANCEL Request-URI") })
			if got != tc.wantError {
				t.Errorf("errors %q, want a CANCEL Request-URI error: %v", c.Errors, tc.wantError)
			}
		})
	}
}
