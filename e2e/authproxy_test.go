package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
)

// upstreamConf is one [[upstream]] of an authproxy test config.
type upstreamConf struct {
	p         upstreamPBX
	addr      string // Kamailio's host:port
	transport string // "udp" or "tcp"
}

// credentialConf is one [[credential]], scoped to server, realm and user.
type credentialConf struct {
	username, password, server, realm, user string
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// authproxyTOML renders a config that listens on UDP and TCP at listen and
// logs JSON at debug level with the SIP trace on, so the no-secrets checks
// see as much as authproxy can print.
func authproxyTOML(listen string, ups []upstreamConf, creds []credentialConf) string {
	var b strings.Builder
	b.WriteString("[log]\nlevel = \"debug\"\nformat = \"json\"\nsip_trace = true\n\n")
	b.WriteString("[proxy]\nshutdown_grace = \"1s\"\n\n")
	for _, tr := range []string{"udp", "tcp"} {
		fmt.Fprintf(&b, "[[listen]]\ntransport = %q\naddress = %s\n\n", tr, tomlString(listen))
	}
	for _, u := range ups {
		// preemptive = "off": these tests pin the challenge exchange on the
		// wire (proxy/scenarios/preemptive_test.go and bench/ cover preemptive answers).
		fmt.Fprintf(&b, "[[upstream]]\nname = %s\naddress = %s\ntransport = %q\ndomains = [%s]\npreemptive = \"off\"\n\n",
			tomlString(u.p.name), tomlString(u.addr), u.transport, tomlString(u.p.domain))
	}
	for _, c := range creds {
		fmt.Fprintf(&b, "[[credential]]\nusername = %s\npassword = %s\nserver = %s\nrealm = %s\nuser = %s\n\n",
			tomlString(c.username), tomlString(c.password), tomlString(c.server), tomlString(c.realm), tomlString(c.user))
	}
	return b.String()
}

// credentialsFor scopes every pbxAccount of p to p's server, realm "asterisk"
// and the pbxAccount's SIP user.
func credentialsFor(p upstreamPBX) []credentialConf {
	var out []credentialConf
	for _, a := range p.accounts {
		out = append(out, credentialConf{a.username, a.password, p.name, "asterisk", a.user})
	}
	return out
}

// sippMessage is one message of a SIPp -trace_msg log.
type sippMessage struct {
	sent bool
	text string
}

// parseSippTrace splits a SIPp message trace into messages.
func parseSippTrace(trace string) []sippMessage {
	var out []sippMessage
	for _, block := range strings.Split(trace, "\n----------------------------------------------- ")[0:] {
		// Each block: "<timestamp>\n<UDP|TCP> message sent|received ...:\n\n<message>"
		_, rest, ok := strings.Cut(block, "\n")
		if !ok {
			continue
		}
		head, msg, ok := strings.Cut(rest, "\n")
		if !ok || !strings.Contains(head, " message ") {
			continue
		}
		out = append(out, sippMessage{
			sent: strings.Contains(head, "message sent"),
			text: strings.TrimLeft(msg, "\r\n"),
		})
	}
	return out
}

// headerOf returns a header value from a trace message (SIPp writes LF or
// CRLF line ends).
func traceHeader(msg, name string) string {
	for _, l := range strings.Split(msg, "\n") {
		k, v, ok := strings.Cut(strings.TrimRight(l, "\r"), ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
		if strings.TrimSpace(l) == "" {
			break
		}
	}
	return ""
}

// checkClientView asserts what the SIPp client saw: no 401/407 (authproxy
// answers challenges itself, RFC 3261 §22 from the client's view), and
// every response carries a CSeq the client actually sent (the upstream's
// CSeq+1 must be translated back, RFC 3261 §8.1.3.3 / §17.1.3 matching).
func checkClientView(t *testing.T, res peers.SippResult) {
	t.Helper()
	sent := map[string]bool{}
	for _, m := range parseSippTrace(res.Messages) {
		if m.sent {
			sent[traceHeader(m.text, "CSeq")] = true
			continue
		}
		status, _, _ := strings.Cut(m.text, "\n")
		status = strings.TrimSpace(status)
		if strings.HasPrefix(status, "SIP/2.0 401") || strings.HasPrefix(status, "SIP/2.0 407") {
			t.Errorf("client received a challenge authproxy should have answered: %s", status)
		}
		if cseq := traceHeader(m.text, "CSeq"); !sent[cseq] {
			t.Errorf("client received %q with CSeq %q, which it never sent (sent: %v)", status, cseq, sent)
		}
	}
}

// firstCallID returns the Call-ID of the first message SIPp sent.
func firstCallID(res peers.SippResult) string {
	for _, m := range parseSippTrace(res.Messages) {
		if m.sent {
			return traceHeader(m.text, "Call-ID")
		}
	}
	return ""
}

// eventsForCall returns k's auth events for one Call-ID.
func eventsForCall(k *peers.Kamailio, callID string) []peers.AuthEvent {
	var out []peers.AuthEvent
	for _, e := range k.Events() {
		if e.CallID == callID {
			out = append(out, e)
		}
	}
	return out
}

// TestKamailioThroughAuthproxy runs SIP clients that have no passwords
// (SIPp) through authproxy to two real PBXs (Kamailio) that both challenge
// with realm "asterisk" and have different accounts — including one for SIP
// user 1001 on each — under the default configuration (preemptive answers)
// and with preemptive off. Every request must succeed, each PBX must see
// only its own usernames, and no password may appear in authproxy's debug
// logs or in anything the client received.
func TestKamailioThroughAuthproxy(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	for _, pm := range preemptiveModes(t) {
		t.Run(pm.name, func(t *testing.T) { testKamailioThroughAuthproxy(t, pm) })
	}
}

// testKamailioThroughAuthproxy is one case of TestKamailioThroughAuthproxy.
func testKamailioThroughAuthproxy(t *testing.T, pm preemptiveMode) {

	// pbx-c challenges with SHA-256; pbx-d answers the first valid
	// credentials of each Call-ID with stale=true.
	upstreamC := upstreamPBX{name: "pbx-c", host: "127.0.0.4", domain: "pbx-c.example.com",
		accounts: []pbxAccount{{"4001", "c-4001", "pwC-4001-v6Hn"}}}
	upstreamD := upstreamPBX{name: "pbx-d", host: "127.0.0.5", domain: "pbx-d.example.com",
		accounts: []pbxAccount{{"5001", "d-5001", "pwD-5001-r2Jm"}}}
	// On pbx-b, SIP user 3001 exists, but authproxy is given the wrong
	// password for it: the loop breaker must stop after one rejection.
	const wrongUser, wrongUsername, rightPassword, wrongPassword = "3001", "b-3001", "pwB-3001-k9Fs", "pwB-3001-WRONG"

	bUsers := upstreamB.users()
	bUsers[wrongUsername] = rightPassword
	ka := peers.StartKamailio(t, peers.KamailioConfig{Host: upstreamA.host, Users: upstreamA.users(), StrictURI: true})
	kb := peers.StartKamailio(t, peers.KamailioConfig{Host: upstreamB.host, Users: bUsers, StrictURI: true})
	kc := peers.StartKamailio(t, peers.KamailioConfig{Host: upstreamC.host, Users: upstreamC.users(), StrictURI: true, Algorithm: "SHA-256"})
	kd := peers.StartKamailio(t, peers.KamailioConfig{Host: upstreamD.host, Users: upstreamD.users(), StrictURI: true, StaleOnce: true})

	listen := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	creds := append(credentialsFor(upstreamA), credentialsFor(upstreamB)...)
	creds = append(creds, credentialsFor(upstreamC)...)
	creds = append(creds, credentialsFor(upstreamD)...)
	creds = append(creds, credentialConf{wrongUsername, wrongPassword, upstreamB.name, "asterisk", wrongUser})
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: pm.applyTOML(authproxyTOML(listen, []upstreamConf{
		{upstreamA, ka.Addr(), "udp"},
		{upstreamB, kb.Addr(), "tcp"},
		{upstreamC, kc.Addr(), "udp"},
		{upstreamD, kd.Addr(), "udp"},
	}, creds))})

	secrets := []string{rightPassword, wrongPassword}
	for _, p := range []upstreamPBX{upstreamA, upstreamB, upstreamC, upstreamD} {
		secrets = append(secrets, p.passwords()...)
	}
	var (
		tracesMu sync.Mutex
		traces   []string
	)
	runSipp := func(t *testing.T, run peers.SippRun) peers.SippResult {
		t.Helper()
		if done, err := ap.Exited(); done {
			t.Fatalf("authproxy has exited: %v", err)
		}
		run.Remote = listen
		run.Timeout = 10 * time.Second
		res := peers.RunSipp(t, run)
		tracesMu.Lock()
		traces = append(traces, res.Messages, res.Errors)
		tracesMu.Unlock()
		return res
	}

	type target struct {
		p upstreamPBX
		k *peers.Kamailio
		a pbxAccount
	}
	targets := []target{
		{upstreamA, ka, upstreamA.accounts[0]}, // 1001 on pbx-a ...
		{upstreamA, ka, upstreamA.accounts[1]},
		{upstreamB, kb, upstreamB.accounts[0]}, // ... and 1001 on pbx-b: same realm, same user
		{upstreamB, kb, upstreamB.accounts[1]},
		{upstreamC, kc, upstreamC.accounts[0]},
		{upstreamD, kd, upstreamD.accounts[0]},
	}
	scenarios := []struct {
		file, method string
		oks          int // accepted requests per call upstream
	}{
		{"register.xml", "REGISTER", 2}, // initial + refresh on the same Call-ID
		{"options.xml", "OPTIONS", 1},
		{"message.xml", "MESSAGE", 1},
		{"invite.xml", "INVITE", 1}, // 407 answered by authproxy, then 486 relayed and ACKed
	}

	t.Run("group", func(t *testing.T) {
		for _, tg := range targets {
			for _, sc := range scenarios {
				for _, tr := range sippTransports {
					name := fmt.Sprintf("%s/%s/%s/%s", tg.p.name, tg.a.user, strings.TrimSuffix(sc.file, ".xml"), tr.name)
					t.Run(name, func(t *testing.T) {
						t.Parallel()
						res := runSipp(t, peers.SippRun{
							Scenario:  sippScenario(sc.file),
							Transport: tr.sipp,
							Service:   tg.a.user,
							Domain:    tg.p.domain,
						})
						if !res.OK() {
							t.Errorf("want every call to succeed\n%v", res)
						}
						checkClientView(t, res)

						callID := firstCallID(res)
						evs := eventsForCall(tg.k, callID)
						var oks, lastCSeq int
						for _, e := range evs {
							if e.Username != "" && e.Username != tg.a.username {
								t.Errorf("%s got username %q for SIP user %s, want %q: %+v",
									tg.p.name, e.Username, tg.a.user, tg.a.username, e)
							}
							if e.Result == "fail" {
								t.Errorf("%s rejected credentials (code %d: -2 wrong password, -10 digest uri is not the Request-URI): %+v",
									tg.p.name, e.Code, e)
							}
							if e.Result == "ok" && e.Method == sc.method {
								oks++
							}
							// RFC 3261 §8.1.3.5, §10.3 step 7: every new request
							// on the Call-ID has a higher CSeq.
							if e.CSeq <= lastCSeq {
								t.Errorf("upstream CSeq did not increase: %d after %d: %+v", e.CSeq, lastCSeq, e)
							}
							lastCSeq = e.CSeq
						}
						if oks != sc.oks {
							t.Errorf("%s accepted %d %s requests of Call-ID %q, want %d; events: %+v",
								tg.p.name, oks, sc.method, callID, sc.oks, evs)
						}
					})
				}
			}
		}

		// RFC 3261 §22.1: credentials that were just rejected must not be
		// sent again (no stale=true here), so one rejection, then the final
		// answer reaches the client.
		for _, tr := range sippTransports {
			t.Run("wrong-password/"+tr.name, func(t *testing.T) {
				t.Parallel()
				res := runSipp(t, peers.SippRun{
					Scenario:  sippScenario("message_rejected.xml"),
					Transport: tr.sipp,
					Service:   wrongUser,
					Domain:    upstreamB.domain,
				})
				if !res.OK() {
					t.Errorf("want a final 401, 403 or 407 for rejected credentials\n%v", res)
				}
				var fails int
				for _, e := range eventsForCall(kb, firstCallID(res)) {
					switch {
					case e.Result == "ok":
						t.Errorf("wrong password accepted?! %+v", e)
					case e.Result == "fail" && e.Username == wrongUsername:
						fails++
					case e.Result == "fail":
						t.Errorf("unexpected rejection: %+v", e)
					}
				}
				if fails != 1 {
					t.Errorf("pbx-b rejected %s's credentials %d times on one request, want 1 (RFC 3261 §22.1)", wrongUsername, fails)
				}
			})
		}
	})
	if t.Failed() {
		t.Logf("authproxy config:\n%s", fileText(t, ap.ConfigPath()))
	}

	if pm.on {
		t.Run("PreemptiveAnswersAccepted", func(t *testing.T) {
			// Under the default, the isolation below must hold for answers
			// sent before any challenge too: some must have been sent.
			for _, k := range []*peers.Kamailio{ka, kb} {
				if n := preemptiveAccepted(k.Events()); n == 0 {
					t.Errorf("%s accepted no request whose Call-ID had not been challenged first", k.Addr())
				}
			}
		})
	}
	t.Run("OnlyOwnUsernames", func(t *testing.T) {
		for _, c := range []struct {
			p    upstreamPBX
			k    *peers.Kamailio
			want []string
		}{
			{upstreamA, ka, upstreamA.usernames()},
			{upstreamB, kb, append(upstreamB.usernames(), wrongUsername)},
			{upstreamC, kc, upstreamC.usernames()},
			{upstreamD, kd, upstreamD.usernames()},
		} {
			for _, u := range c.k.SeenUsernames() {
				if !slices.Contains(c.want, u) {
					t.Errorf("%s received username %q, which belongs to another server", c.p.name, u)
				}
			}
		}
	})

	t.Run("NoSecretsInLogsOrTraces", func(t *testing.T) {
		logs := ap.Logs()
		if !strings.Contains(logs, `"level":"DEBUG"`) {
			t.Errorf("authproxy logged nothing at debug level; the check below proves little")
		}
		tracesMu.Lock()
		all := strings.Join(traces, "\n")
		tracesMu.Unlock()
		for _, s := range secrets {
			if i := strings.Index(logs, s); i >= 0 {
				t.Errorf("authproxy's logs contain a password: ...%s...", testutil.Excerpt(logs, i))
			}
			if i := strings.Index(all, s); i >= 0 {
				t.Errorf("a SIP client received a password: ...%s...", testutil.Excerpt(all, i))
			}
		}
	})
}

// preemptiveAccepted counts the Call-IDs whose first authentication event
// is an accepted request: credentials sent before any challenge.
func preemptiveAccepted(evs []peers.AuthEvent) int {
	first := map[string]string{}
	for _, e := range evs {
		if _, ok := first[e.CallID]; !ok && e.Result != "relay" && e.Result != "stray" {
			first[e.CallID] = e.Result
		}
	}
	n := 0
	for _, r := range first {
		if r == "ok" {
			n++
		}
	}
	return n
}

func fileText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
