package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
)

const stateRedisPasswordEnv = "E2E_STATE_REDIS_PASSWORD"

// stateTrunkName is the trunk registration as /status names it.
var stateTrunkName = upstreamS.name + " sip:" + stateTrunkUser + "@" + upstreamS.domain

// clusterNode is one authproxy of a cluster test.
type clusterNode struct {
	name, listen, admin, conf string
	ap                        *peers.Authproxy
}

// startClusterNode starts authproxy instance name on the Redis at
// redisAddr, with a 3 s trunk lease and preemptive answers (so that a
// REGISTER refresh carries credentials at once, and a CSeq the registrar
// already saw is refused rather than challenged).
func startClusterNode(t *testing.T, name, kAddr, redisAddr, password, trunkTarget string) *clusterNode {
	t.Helper()
	listen, admin := faultsAddrs(t)
	table := fmt.Sprintf("[state]\nbackend = \"redis\"\ninstance = %q\nlease = \"3s\"\n\n[state.redis]\naddress = %s\npassword_env = %q\nprefix = \"e2e:\"\n",
		name, tomlString(redisAddr), stateRedisPasswordEnv)
	conf := strings.ReplaceAll(stateTOML(listen, admin, kAddr, table, trunkTarget), `preemptive = "off"`, `preemptive = "all"`)
	n := &clusterNode{name: name, listen: listen, admin: admin, conf: conf}
	n.start(t, password)
	return n
}

func (n *clusterNode) start(t *testing.T, password string) {
	t.Helper()
	n.ap = peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: n.conf, Env: []string{stateRedisPasswordEnv + "=" + password}})
}

func (n *clusterNode) status(t *testing.T) stateStatus {
	t.Helper()
	st, ok := stateStatusOf(n.admin)
	if !ok {
		return stateStatus{}
	}
	return st
}

// trunkState is the node's own state of the trunk registration.
func (n *clusterNode) trunkState(t *testing.T) string {
	for _, r := range n.status(t).TrunkRegistrations {
		return r.State
	}
	return ""
}

// registerVia sends ph's REGISTER (Call-ID callID, CSeq cseq) through
// authproxy at via and returns the final status.
func registerVia(t *testing.T, ph *siptest.Phone, via, callID, tag string, cseq uint32) int {
	t.Helper()
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: upstreamS.domain})
	aor := sip.Uri{Scheme: "sip", User: ph.User, Host: upstreamS.domain}
	from := &sip.FromHeader{Address: aor, Params: sip.NewParams()}
	from.Params.Add("tag", tag)
	cid := sip.CallIDHeader(callID)
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(from)
	req.AppendHeader(&sip.ToHeader{Address: aor, Params: sip.NewParams()})
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: sip.REGISTER})
	req.AppendHeader(&mf)
	req.AppendHeader(ph.Contact())
	req.AppendHeader(sip.NewHeader("Expires", "300"))
	res, err := siptest.Send(ph.Client, via, "udp", req)
	if err != nil {
		t.Fatalf("REGISTER %s CSeq %d via %s: %v", ph.User, cseq, via, err)
	}
	return res.StatusCode
}

// registeredContacts asks Kamailio (a REGISTER without Contact, RFC 3261
// §10.2.3, with user's own credentials) which contacts user has.
func registeredContacts(t *testing.T, kAddr, user string) []string {
	t.Helper()
	var acct pbxAccount
	for _, a := range upstreamS.accounts {
		if a.user == user {
			acct = a
		}
	}
	callID := peers.NewToken(8) + "@state-query"
	query := func(cseq int, auth string) string {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		resp, err := peers.UDPExchange(ctx, kAddr, true, func(local string) string {
			return "REGISTER sip:" + upstreamS.domain + " SIP/2.0\r\n" +
				"Via: SIP/2.0/UDP " + local + ";branch=z9hG4bK-" + peers.NewToken(6) + ";rport\r\n" +
				"Max-Forwards: 70\r\n" +
				"From: <sip:" + user + "@" + upstreamS.domain + ">;tag=" + callID[:8] + "\r\n" +
				"To: <sip:" + user + "@" + upstreamS.domain + ">\r\n" +
				"Call-ID: " + callID + "\r\n" +
				fmt.Sprintf("CSeq: %d REGISTER\r\n", cseq) + auth +
				"Content-Length: 0\r\n\r\n"
		})
		if err != nil {
			t.Fatalf("query the contacts of %s: %v", user, err)
		}
		return resp
	}
	c := digestClient{t: t}
	chal := c.challenge(query(1, ""), 401)
	resp := query(2, "Authorization: "+digestCredentials(chal, "REGISTER", "sip:"+upstreamS.domain, acct.username, acct.password, "", "")+"\r\n")
	if peers.StatusCode(resp) != 200 {
		t.Fatalf("query the contacts of %s: %s", user, resp)
	}
	var out []string
	head, _, _ := strings.Cut(resp, "\r\n\r\n")
	for _, line := range strings.Split(head, "\r\n") {
		name, v, ok := strings.Cut(line, ":")
		if !ok || (!strings.EqualFold(strings.TrimSpace(name), "contact") && strings.TrimSpace(name) != "m") {
			continue
		}
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" {
				out = append(out, c)
			}
		}
	}
	return out
}

// TestStateRedisCluster: two authproxy instances share a redis-server.
//   - The trunk registration both configure is held by exactly one of
//     them (the other stands by), and Kamailio holds one contact for it.
//   - A phone registered through A is reachable through B: an INVITE the
//     carrier sends to B reaches the phone.
//   - REGISTER refreshes on one Call-ID alternate between A and B, with
//     preemptive credentials, and Kamailio's registrar, which refuses a
//     CSeq not higher than the last, accepts every one.
//   - The holder of the trunk is killed (SIGKILL): the other takes the
//     lease and registers, replacing the dead holder's contact in the same
//     REGISTER, so Kamailio again holds exactly one contact for the trunk.
func TestStateRedisCluster(t *testing.T) {
	peers.Require(t, "kamailio", "sipp", "redis-server")
	const password = "e2e-redis-Pw7"
	rd := peers.StartRedis(t, peers.RedisConfig{Password: password})
	k := peers.StartKamailio(t, peers.KamailioConfig{Host: upstreamS.host, Users: upstreamS.users(), Registrar: true})
	target := siptest.StartPhone(t, stateTrunkUser, "udp", "")
	a := startClusterNode(t, "a", k.Addr(), rd.Addr(), password, target.Addr)
	b := startClusterNode(t, "b", k.Addr(), rd.Addr(), password, target.Addr)
	nodes := map[string]*clusterNode{"a": a, "b": b}

	var holder string
	testutil.Eventually(t, "one instance to hold and register the trunk, the other to stand by", func() bool {
		sa, sb := a.status(t), b.status(t)
		holder = sa.State.TrunkHolders[stateTrunkName]
		if holder == "" || sb.State.TrunkHolders[stateTrunkName] != holder || len(sa.State.Members) != 2 {
			return false
		}
		states := []string{a.trunkState(t), b.trunkState(t)}
		slices.Sort(states)
		return states[0] == "registered" && states[1] == "standby"
	})
	if cs := registeredContacts(t, k.Addr(), stateTrunkUser); len(cs) != 1 || !strings.Contains(cs[0], nodes[holder].listen) {
		t.Fatalf("Kamailio's contacts for the trunk: %q; want one, at the holder %s (%s)", cs, holder, nodes[holder].listen)
	}

	// The phone registered through B before (another Call-ID: it
	// rebooted since), so B answers its REGISTERs preemptively: a CSeq B
	// does not shift by A's offset reaches the registrar unchallenged, and
	// is refused.
	phone := siptest.StartPhone(t, "3001", "udp", a.listen)
	if code := registerVia(t, phone, b.listen, peers.NewToken(8)+"@before", "oldtag", 1); code != 200 {
		t.Fatalf("REGISTER 3001 through B: %d", code)
	}
	callID, tag := peers.NewToken(10)+"@phone", "phonetag1"
	if code := registerVia(t, phone, a.listen, callID, tag, 1); code != 200 {
		t.Fatalf("REGISTER 3001 through A: %d\n%s", code, a.ap.Logs())
	}

	// The carrier (from Kamailio's address) sends an INVITE for the
	// phone's contact to B.
	carrier := peers.RunSipp(t, peers.SippRun{
		Scenario: sippScenario("call_contact.xml"), Remote: b.listen, Local: upstreamS.host, Transport: "u1",
		Service: phone.User, Domain: upstreamS.domain, Timeout: 15 * time.Second,
		Keys: map[string]string{"caller": "carrier", "target": phone.Contact().Address.String()},
	})
	if !carrier.OK() {
		t.Fatalf("call to the phone through B: %v\n--- b ---\n%s", carrier, b.ap.Logs())
	}
	if phone.WaitReceived(sip.INVITE, 5*time.Second) == nil {
		t.Fatal("the phone registered through A got no INVITE through B")
	}

	for i, via := range []*clusterNode{b, a, b, a} {
		cseq := uint32(i + 2)
		if code := registerVia(t, phone, via.listen, callID, tag, cseq); code != 200 {
			t.Fatalf("REGISTER refresh CSeq %d through %s: %d\n--- kamailio ---\n%s", cseq, via.name, code, k.Log())
		}
	}
	var seqs []int
	for _, e := range k.Events() {
		if e.Method == "REGISTER" && e.CallID == callID && e.Result == "ok" {
			seqs = append(seqs, e.CSeq)
		}
	}
	increasing := len(seqs) == 5
	for i := 1; i < len(seqs); i++ {
		increasing = increasing && seqs[i] > seqs[i-1]
	}
	if !increasing {
		t.Fatalf("Kamailio accepted the phone's REGISTERs with CSeq %v; want 5, strictly increasing", seqs)
	}

	// Kill the holder: the other takes the trunk over.
	dead := nodes[holder]
	survivor := a
	if dead == a {
		survivor = b
	}
	if err := dead.ap.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	testutil.Eventually(t, "the survivor to hold and register the trunk", func() bool {
		st := survivor.status(t)
		return st.State.TrunkHolders[stateTrunkName] == survivor.name && survivor.trunkState(t) == "registered"
	})
	t.Logf("trunk registration taken over by %s %v after %s was killed (lease 3s)", survivor.name, time.Since(killed).Round(time.Millisecond), dead.name)
	if cs := registeredContacts(t, k.Addr(), stateTrunkUser); len(cs) != 1 || !strings.Contains(cs[0], survivor.listen) {
		t.Fatalf("Kamailio's contacts for the trunk after the takeover: %q; want one, at %s (%s)", cs, survivor.name, survivor.listen)
	}
}

// registersAnswered counts the REGISTERs authproxy answered 200.
func registersAnswered(logs string) int {
	n := 0
	for line := range strings.SplitSeq(logs, "\n") {
		if strings.Contains(line, `"msg":"request"`) && strings.Contains(line, `"method":"REGISTER"`) && strings.Contains(line, `"status":200`) {
			n++
		}
	}
	return n
}

// TestStateRedisOutage: SIPp registers (and refreshes) through A, two
// instances sharing a redis-server, while redis-server is stopped for
// as long as A takes to answer 400 REGISTERs (about 10 s at this rate) and
// started again, empty (no persistence). No REGISTER fails: A serves from
// its own memory, /status says the store is down, and once it is back both
// instances write their state again: a phone that registered through A
// during the outage is reachable through B, and the trunk registration
// has one holder again.
func TestStateRedisOutage(t *testing.T) {
	peers.Require(t, "kamailio", "sipp", "redis-server")
	const password = "e2e-redis-Pw8"
	const calls, rate = 400, 20 // two REGISTERs each: about 20 s
	rd := peers.StartRedis(t, peers.RedisConfig{Password: password})
	k := peers.StartKamailio(t, peers.KamailioConfig{Host: upstreamS.host, Users: upstreamS.users(), Registrar: true})
	target := siptest.StartPhone(t, stateTrunkUser, "udp", "")
	a := startClusterNode(t, "a", k.Addr(), rd.Addr(), password, target.Addr)
	b := startClusterNode(t, "b", k.Addr(), rd.Addr(), password, target.Addr)
	testutil.Eventually(t, "the trunk registered by one instance", func() bool {
		return a.status(t).State.TrunkHolders[stateTrunkName] != "" && (a.trunkState(t) == "registered" || b.trunkState(t) == "registered")
	})

	done := runSippAsync(t, peers.SippRun{
		Scenario: sippScenario("register.xml"), Remote: a.listen, Service: "3002", Domain: upstreamS.domain,
		Calls: calls, Rate: rate, Timeout: 2 * time.Minute, NoMessageTrace: true, Extra: sippTolerant,
	})
	testutil.Eventually(t, "A to answer 100 REGISTERs", func() bool { return registersAnswered(a.ap.Logs()) >= 100 })
	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	testutil.Eventually(t, "A to report the store down", func() bool {
		st := a.status(t)
		return st.State.Backend == "redis" && !st.State.Up
	})
	phone := siptest.StartPhone(t, "3001", "udp", a.listen)
	if code := registerVia(t, phone, a.listen, peers.NewToken(10)+"@outage", "outagetag", 1); code != 200 {
		t.Fatalf("REGISTER through A while the store is down: %d", code)
	}
	mark := registersAnswered(a.ap.Logs())
	testutil.Eventually(t, "A to answer 400 more REGISTERs with the store down", func() bool {
		return registersAnswered(a.ap.Logs()) >= mark+400
	})
	rd.Start()
	t.Logf("redis-server was down %v", time.Since(stopped).Round(time.Millisecond))
	for _, n := range []*clusterNode{a, b} {
		testutil.Eventually(t, n.name+" to find the store again and write its state back", func() bool {
			st := n.status(t)
			return st.State.Up && st.State.Pending == 0 && len(st.State.Members) == 2
		})
	}
	res := <-done
	if res.Failed != 0 || res.Successful != calls {
		t.Errorf("SIPp: %d registrations succeeded, %d failed; want all %d to succeed\n%s", res.Successful, res.Failed, calls, lastLinesOf(res.Output, 30))
	}
	// What A learnt during the outage is in the store again.
	carrier := peers.RunSipp(t, peers.SippRun{
		Scenario: sippScenario("call_contact.xml"), Remote: b.listen, Local: upstreamS.host, Transport: "u1",
		Service: phone.User, Domain: upstreamS.domain, Timeout: 15 * time.Second,
		Keys: map[string]string{"caller": "carrier", "target": phone.Contact().Address.String()},
	})
	if !carrier.OK() {
		t.Fatalf("call through B to the phone registered through A during the outage: %v\n--- b ---\n%s", carrier, b.ap.Logs())
	}
	testutil.Eventually(t, "one holder of the trunk again, seen by both", func() bool {
		ha, hb := a.status(t).State.TrunkHolders[stateTrunkName], b.status(t).State.TrunkHolders[stateTrunkName]
		return ha != "" && ha == hb
	})
	if cs := registeredContacts(t, k.Addr(), stateTrunkUser); len(cs) != 1 {
		t.Fatalf("Kamailio's contacts for the trunk after the outage: %q; want one", cs)
	}
	for _, n := range []*clusterNode{a, b} {
		if c := strings.Count(n.ap.Logs(), `"msg":"state store unreachable; serving from local state"`); c > 1 {
			t.Errorf("%s logged the store unreachable %d times; want once per outage", n.name, c)
		}
	}
}

// TestStateRedisTLS: the binary reaches a TLS-only redis-server with
// [state.redis] tls, ca_file and a password from password_file: the
// store is up, the instance is a member and holds the trunk.
func TestStateRedisTLS(t *testing.T) {
	peers.Require(t, "kamailio", "redis-server")
	const password = "e2e-redis-Pw9"
	rd := peers.StartRedis(t, peers.RedisConfig{Password: password, TLS: true})
	k := peers.StartKamailio(t, peers.KamailioConfig{Host: upstreamS.host, Users: upstreamS.users(), Registrar: true})
	target := siptest.StartPhone(t, stateTrunkUser, "udp", "")
	pwFile := filepath.Join(t.TempDir(), "redis-password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	listen, admin := faultsAddrs(t)
	table := fmt.Sprintf("[state]\nbackend = \"redis\"\ninstance = \"tls\"\n\n[state.redis]\naddress = %s\npassword_file = %s\ntls = true\nca_file = %s\n",
		tomlString(rd.Addr()), tomlString(pwFile), tomlString(rd.CAFile()))
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: stateTOML(listen, admin, k.Addr(), table, target.Addr)})
	testutil.Eventually(t, "the store up over TLS, this instance a member holding the trunk", func() bool {
		st, ok := stateStatusOf(admin)
		return ok && st.State.Up && len(st.State.Members) == 1 && st.State.TrunkHolders[stateTrunkName] == "tls"
	})
	if strings.Contains(ap.Logs(), password) {
		t.Fatal("the Redis password appears in the log")
	}
}
