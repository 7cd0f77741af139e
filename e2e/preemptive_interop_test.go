package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

// TestPreemptiveThroughKamailio: with preemptive = "all", authproxy answers
// Kamailio's first 407 and then sends credentials with every MESSAGE before
// being asked, with counts Kamailio accepts although it checks them
// (nonce_count on: a repeated nc is refused as a replay). Once the nonce
// expires (nonce_expire 2 s), Kamailio answers the preemptive credentials
// with a stale challenge; authproxy answers it transparently, the client
// still sees only 200s, and the fresh nonce is reused from then on.
func TestPreemptiveThroughKamailio(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	p := upstreamA
	k := peers.StartKamailio(t, peers.KamailioConfig{Host: p.host, Users: p.users(), StrictURI: true, NonceCount: true, NonceExpire: 2 * time.Second})
	listen := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	conf := authproxyTOML(listen, []upstreamConf{{p, k.Addr(), "udp"}}, credentialsFor(p))
	conf = strings.Replace(conf, `preemptive = "off"`, `preemptive = "all"`, 1)
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: conf})
	acct := p.accounts[0]

	send := func(n int) {
		t.Helper()
		// A burst: requests overlap, so preemptive answers with the same
		// nonce race each other (and the one that answered the challenge).
		res := peers.RunSipp(t, peers.SippRun{Scenario: sippScenario("message.xml"), Remote: listen, Service: acct.user,
			Domain: p.domain, Calls: n, Rate: 200, Timeout: 20 * time.Second})
		if !res.OK() {
			t.Fatalf("MESSAGEs through authproxy: %v\n--- authproxy ---\n%s", res, ap.Logs())
		}
	}
	count := func(evs []peers.AuthEvent) map[string]int {
		m := map[string]int{}
		for _, e := range evs {
			m[e.Result]++
			if e.Username != "" && e.Username != acct.username {
				t.Errorf("Kamailio saw username %q, want only %q", e.Username, acct.username)
			}
		}
		return m
	}

	const first = 40
	send(first)
	got := count(k.Events())
	// Every MESSAGE accepted once; challenges only while the first answer
	// was not yet accepted (authproxy keeps a challenge for reuse only
	// then), never a replayed count.
	if got["ok"] != first || got["fail"] != 0 || got["challenge"] >= first/2 {
		t.Fatalf("first burst: Kamailio decisions %v, want %d ok, no fail and few challenges", got, first)
	}
	t.Logf("first burst of %d: Kamailio decisions %v", first, got)
	before := len(k.Events())

	time.Sleep(3 * time.Second) // the nonce expires
	const second = 10
	send(second)
	evs := k.Events()[before:]
	got = count(evs)
	if got["ok"] != second || got["fail"] != 0 || got["expired"] == 0 {
		t.Fatalf("after the nonce expired: Kamailio decisions %v, want %d ok, no fail and a stale (expired) challenge answered", got, second)
	}
	// After the stale round, the new nonce carries the rest: far fewer
	// challenges than requests.
	if got["challenge"]+got["expired"] >= second {
		t.Errorf("after the nonce expired: %v: every request was challenged, the fresh nonce was not reused", got)
	}
	if strings.Contains(ap.Logs(), acct.password) {
		t.Error("authproxy logged the password")
	}
}
