package scenarios

import (
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/proxy"
)

// TestOfficeBehindNAT: an office's phones share one source address, listed
// in Limits.Exempt. One phone (1002) keeps answering authproxy's challenge
// with a wrong password: after UserAuthFailures tries it is refused with
// 403 before its password is checked, even when it finally sends the
// right one, and nothing of it reaches the upstream. Its neighbour (1001),
// behind the same address, keeps working: past the source's own
// auth_failures and past its token bucket, neither of which applies to
// the exempt address.
func TestOfficeBehindNAT(t *testing.T) {
	groups := []proxy.ClientGroup{{Name: "office", Networks: prefixes("127.0.0.0/8"), Upstreams: []string{"*"},
		Users: map[string]credentials.Secret{
			"1001": credentials.NewSecret(localPassword),
			"1002": credentials.NewSecret(localPassword + "-1002"),
		}}}
	h := startHarness(t, harnessOptions{Clients: groups, Limits: proxy.Limits{
		Rate: 0.001, Burst: 2, // a bucket the office would empty at once
		AuthFailures: 2, BlockFor: 3600e9,
		UserAuthFailures: 3, UserBlockFor: 3600e9,
		Exempt: prefixes("127.0.0.0/8"),
	}})

	// 1002 with a wrong password: challenged three times, then refused.
	bad := siptest.Request{Method: sip.REGISTER, RequestURI: "sip:pbx-a.example.com", FromUser: "1002", CallID: "nat-1002", FromTag: "t1002"}
	res := h.final(t, "udp", bad)
	for i := range 3 {
		bad.CSeq++
		bad.Headers = []sip.Header{sip.NewHeader("Proxy-Authorization", answerLocal(t, res, bad.Build(t), "1002", "stale-password"))}
		res = h.final(t, "udp", bad)
		if res.StatusCode != 407 {
			t.Fatalf("wrong password #%d: %d, want 407", i+1, res.StatusCode)
		}
	}
	bad.CSeq++
	bad.Headers = []sip.Header{sip.NewHeader("Proxy-Authorization", answerLocal(t, res, bad.Build(t), "1002", localPassword+"-1002"))}
	if res := h.final(t, "udp", bad); res.StatusCode != 403 {
		t.Fatalf("1002 after %d failures, now with its right password: %d, want 403 (user blocked)", 3, res.StatusCode)
	}
	if n := requests(h.A); n != 0 {
		t.Fatalf("the upstream saw %d requests of the blocked phone", n)
	}

	// 1001 behind the same address: challenged, then admitted, as many
	// times as it likes.
	for i := range 3 {
		good := siptest.Request{Method: sip.REGISTER, RequestURI: "sip:pbx-a.example.com", FromUser: "1001", CallID: "nat-1001-" + string(rune('a'+i)), FromTag: "t1001"}
		res := h.final(t, "udp", good)
		if res.StatusCode != 407 {
			t.Fatalf("1001 round %d, first try: %d, want authproxy's 407", i, res.StatusCode)
		}
		good.CSeq++
		good.Headers = []sip.Header{sip.NewHeader("Proxy-Authorization", answerLocal(t, res, good.Build(t), "1001", localPassword))}
		if res := h.final(t, "udp", good); res.StatusCode != 200 {
			t.Fatalf("1001 round %d behind the blocked phone's address: %d, want 200", i, res.StatusCode)
		}
	}

	logs := h.Logs.String()
	for _, want := range []string{"user blocked from source after failed authentications", `"client_user":"1002"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q", want)
		}
	}
	if strings.Contains(logs, "source blocked after failed authentications") {
		t.Error("the exempt office address was blocked")
	}
	for _, text := range []string{logs, sipTrace.String()} {
		if strings.Contains(text, localPassword) {
			t.Fatal("a local password reached a log")
		}
	}
}
