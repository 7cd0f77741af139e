package scenarios

import (
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// Scenarios only a strict upstream can fail: a registrar's bounds, nonces
// that expire, and the first credential per realm.

// TestStrictRegistrarBounds: a phone registering through authproxy with a
// strict registrar (minimum 60 s, maximum 3600 s) gets the registrar's
// 423 with its Min-Expires, then its binding for what the registrar
// granted, not for what it asked; its refresh and its un-REGISTER work
// the same.
func TestStrictRegistrarBounds(t *testing.T) {
	for _, profile := range strictProfiles {
		t.Run(profile.String(), func(t *testing.T) {
			h := startHarness(t, harnessOptions{Profile: profile})
			ph := startRegPhone(t, "1001", "udp", h.Addr["udp"])
			callID := uuid.NewString()

			res := ph.register(callID, "pbx-a.example.com", 1, "30")
			if res.StatusCode != 423 {
				t.Fatalf("REGISTER for 30 s: %d, want 423", res.StatusCode)
			}
			if m := res.GetHeader("Min-Expires"); m == nil || m.Value() != "60" {
				t.Fatalf("423 Min-Expires %v, want 60", m)
			}
			if n := len(h.Proxy.Bindings()); n != 0 {
				t.Fatalf("authproxy keeps %d bindings after a 423", n)
			}

			for i, tc := range []struct {
				asked   string
				granted int
			}{{"60", 60}, {"7200", 3600}} {
				asked, granted := tc.asked, tc.granted
				res = ph.register(callID, "pbx-a.example.com", uint32(2+i), asked)
				if res.StatusCode != 200 {
					t.Fatalf("REGISTER for %s s: %d", asked, res.StatusCode)
				}
				bs := h.Proxy.Bindings()
				if len(bs) != 1 {
					t.Fatalf("authproxy bindings %+v, want one", bs)
				}
				if left := time.Until(bs[0].Expires); left > time.Duration(granted)*time.Second || left < time.Duration(granted)*time.Second-time.Minute {
					t.Fatalf("asked %s s, granted %d s: authproxy keeps the binding %v", asked, granted, left.Round(time.Second))
				}
				if pb := h.A.Bindings("1001"); len(pb) != 1 || pb[0].Expires != granted {
					t.Fatalf("registrar bindings %+v", pb)
				}
			}
			if res = ph.register(callID, "pbx-a.example.com", 4, "0"); res.StatusCode != 200 {
				t.Fatalf("un-REGISTER: %d", res.StatusCode)
			}
			if n, pn := len(h.Proxy.Bindings()), len(h.A.Bindings("1001")); n != 0 || pn != 0 {
				t.Fatalf("after un-REGISTER: %d bindings in authproxy, %d at the registrar", n, pn)
			}
		})
	}
}

// TestStrictTrunkRegistrationBounds: authproxy's own registration asks a
// strict registrar for less than its minimum, gets 423, and registers
// again for Min-Expires; one asking for more than the maximum is granted
// the maximum and refreshes before that ends.
func TestStrictTrunkRegistrationBounds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		asked   time.Duration
		granted int
	}{
		{"below the minimum", 30 * time.Second, fakepbx.StrictMinExpires},
		{"above the maximum", 2 * time.Hour, fakepbx.StrictMaxExpires},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pbx := fakepbx.Start(t, fakepbx.Config{Name: "trunk", Host: "127.0.0.5", Strict: true, Accounts: map[string]string{"trunkuser": "right-password"}})
			creds := []credentials.Entry{{Username: "trunkuser", Password: credentials.NewSecret("right-password"), Server: pbx.Addr()}}
			tp := startTrunkProxy(t, pbx.Addr(), proxy.Registration{Upstream: "trunk", AOR: "sip:trunk1@127.0.0.5", Expires: tc.asked}, creds, nil)
			testutil.Eventually(t, "registered", func() bool {
				// Registrations start right after Ready: none may be listed yet.
				rs := tp.p.Registrations()
				return len(rs) == 1 && rs[0].State == proxy.RegStateRegistered
			})
			st := regState(t, tp.p)
			if left := time.Until(st.Expires); left > time.Duration(tc.granted)*time.Second || left < time.Duration(tc.granted)*time.Second-time.Minute {
				t.Fatalf("granted %d s: authproxy counts on %v", tc.granted, left.Round(time.Second))
			}
			if !st.NextAttempt.Before(st.Expires) {
				t.Fatalf("next refresh %v is not before the expiry %v", st.NextAttempt, st.Expires)
			}
			if bs := pbx.Bindings("trunk1"); len(bs) != 1 || bs[0].Expires != tc.granted {
				t.Fatalf("registrar bindings %+v, want one for %d s", bs, tc.granted)
			}
		})
	}
}

// TestStrictNonceExpiresUnderPreemptiveAuth: authproxy answers later
// requests with the nonce it keeps (preemptive); once the upstream's nonce
// outlived its lifetime the answer gets a 401 with stale=true, which
// authproxy answers with the fresh nonce, invisibly to the client.
func TestStrictNonceExpiresUnderPreemptiveAuth(t *testing.T) {
	for _, profile := range strictProfiles {
		t.Run(profile.String(), func(t *testing.T) {
			clock := fakepbx.NewManualClock(time.Now())
			h := startHarness(t, harnessOptions{Profile: profile, Preemptive: proxy.PreemptiveAll, A: fakepbx.Config{Clock: clock.Now}})
			send := func(what string) []fakepbx.Request {
				t.Helper()
				before := len(h.A.Requests())
				res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"})
				if res.StatusCode != 200 {
					t.Fatalf("%s: status %d", what, res.StatusCode)
				}
				return h.A.Requests()[before:]
			}
			send("first request")
			if rs := send("within the nonce's lifetime"); len(rs) != 1 || !rs[0].Authenticated {
				t.Fatalf("preemptive answer within the lifetime: %v", summarize(rs))
			}
			lifetime := fakepbx.StrictNonceLifetime
			if profile == kamailioProfile {
				lifetime = kamailioNonceExpire
			}
			clock.Advance(lifetime + time.Second)
			rs := send("after the nonce expired")
			if len(rs) != 2 || rs[0].Authenticated || !rs[1].Authenticated {
				t.Fatalf("after expiry: %v, want the stale answer then one with the fresh nonce", summarize(rs))
			}
		})
	}
}

// TestStrictFirstCredentialPerRealm: a challenge offering two algorithms
// for one realm gets one answer, the topmost (RFC 8760 §2.4); a server
// that judges only the first credential for its realm accepts it.
func TestStrictFirstCredentialPerRealm(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Algorithms: []string{"SHA-256", "MD5"}}})
	res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"})
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	rs := h.A.Requests()
	last := rs[len(rs)-1]
	if len(last.Authorization) != 1 || !strings.Contains(last.Authorization[0], "algorithm=SHA-256") {
		t.Fatalf("answers %q, want exactly the SHA-256 one", last.Authorization)
	}
}

// TestStrictRegistrarListsEveryBinding: two phones register the same AOR
// through authproxy; the registrar's 200 lists both bindings, each with
// its own expiry (RFC 3261 §10.3 step 8). authproxy keeps each phone's
// binding for its own granted expiry, and an un-REGISTER of one leaves
// the other, in both register modes.
func TestStrictRegistrarListsEveryBinding(t *testing.T) {
	for _, mode := range []string{proxy.RegisterPath, proxy.RegisterContact} {
		t.Run(mode, func(t *testing.T) {
			h := startHarness(t, harnessOptions{RegisterMode: mode})
			first := startRegPhone(t, "1001", "udp", h.Addr["udp"])
			second := startRegPhone(t, "1001", "tcp", h.Addr["tcp"])
			firstCall, secondCall := uuid.NewString(), uuid.NewString()
			if res := first.register(firstCall, "pbx-a.example.com", 1, "600"); res.StatusCode != 200 {
				t.Fatalf("first phone's REGISTER: %d", res.StatusCode)
			}
			res := second.register(secondCall, "pbx-a.example.com", 1, "120")
			if res.StatusCode != 200 || len(res.GetHeaders("Contact")) != 2 {
				t.Fatalf("second phone's REGISTER: %d with Contacts %v, want 200 listing both", res.StatusCode, res.GetHeaders("Contact"))
			}
			expiryOf := func(ph *regPhone) time.Duration {
				t.Helper()
				want := ph.Contact().Address.String()
				for _, b := range h.Proxy.Bindings() {
					if b.Contact == want {
						return time.Until(b.Expires)
					}
				}
				t.Fatalf("authproxy has no binding for %s: %+v", want, h.Proxy.Bindings())
				return 0
			}
			if got := expiryOf(first); got > 600*time.Second || got < 540*time.Second {
				t.Fatalf("first phone's binding ends in %v, want its 600 s", got.Round(time.Second))
			}
			if got := expiryOf(second); got > 120*time.Second || got < 60*time.Second {
				t.Fatalf("second phone's binding ends in %v, want its 120 s", got.Round(time.Second))
			}
			if res := first.register(firstCall, "pbx-a.example.com", 2, "0"); res.StatusCode != 200 {
				t.Fatalf("first phone's un-REGISTER: %d", res.StatusCode)
			}
			if bs := h.Proxy.Bindings(); len(bs) != 1 || bs[0].Contact != second.Contact().Address.String() {
				t.Fatalf("after the first phone's un-REGISTER authproxy keeps %+v, want the second phone's only", bs)
			}
			expiryOf(second)
		})
	}
}

// TestStrictNonceExpiresDuringCall: an upstream that challenges requests
// in dialogs too, with nonces that expire. The first call's BYE is
// challenged and answered; the second call's BYE, sent once that nonce
// expired, carries an answer with it (preemptive), gets a challenge with
// stale=true, and goes through with the fresh nonce.
func TestStrictNonceExpiresDuringCall(t *testing.T) {
	clock := fakepbx.NewManualClock(time.Now())
	h := startHarness(t, harnessOptions{Preemptive: proxy.PreemptiveAll,
		A: fakepbx.Config{Clock: clock.Now, Call: fakepbx.CallConfig{ChallengeInDialog: true}}})
	byesOf := func(c *siptest.Call) []fakepbx.Request {
		t.Helper()
		var out []fakepbx.Request
		for _, r := range waitCallState(t, h.A, c.CallID, fakepbx.StateTerminated).Requests {
			if r.Method == "BYE" {
				out = append(out, r)
			}
		}
		return out
	}
	first := answeredCall(t, h, "udp")
	waitAck(t, h.A, first.CallID)
	if res := first.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("first call's BYE: %d", res.StatusCode)
	}
	byesOf(first)

	second := answeredCall(t, h, "udp")
	waitAck(t, h.A, second.CallID)
	clock.Advance(fakepbx.StrictNonceLifetime + time.Second)
	if res := second.Request(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE after the nonce expired: %d", res.StatusCode)
	}
	byes := byesOf(second)
	if len(byes) != 2 || len(byes[0].Authorization) == 0 || byes[0].Authenticated || !byes[1].Authenticated {
		t.Fatalf("BYEs at the upstream: %v, want the preemptive answer refused as stale, then one accepted", summarize(byes))
	}
	assertNoCallErrors(t, h.A)
}
