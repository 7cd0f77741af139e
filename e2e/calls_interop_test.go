package e2e

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
)

// The calls interop topology (TestCallsThroughKamailio, TestBaresipCall):
//
//	client (SIPp UAC or baresip) 127.0.0.1
//	  → authproxy 127.0.0.1 (UDP and TCP listeners, one port)
//	  → Kamailio in relay mode: challenges the INVITE with 407, then
//	    Record-Routes and relays it
//	  → SIPp UAS 127.0.0.4, the callee
//
// The client holds no password; authproxy answers the challenge with the
// credential scoped to the upstream and the caller's SIP user.
const (
	callsInteropUASHost = "127.0.0.4"
	callsInteropCaller  = "1001" // From user: the credential is picked by it
	callsInteropCallee  = "1002" // Request-URI user, the UAS's [service]
)

// callsInteropPBX is one relay-mode Kamailio with the upstream it plays.
type callsInteropPBX struct {
	p         upstreamPBX
	k         *peers.Kamailio
	transport string // authproxy → Kamailio
}

// username is the auth username authproxy must use for the caller on p.
func (x callsInteropPBX) username(t *testing.T) string {
	t.Helper()
	for _, a := range x.p.accounts {
		if a.user == callsInteropCaller {
			return a.username
		}
	}
	t.Fatalf("%s has no account for %s", x.p.name, callsInteropCaller)
	return ""
}

// callsInteropKind is what a call does after the INVITE.
type callsInteropKind int

const (
	callsInteropCallerBye callsInteropKind = iota // caller hangs up
	callsInteropCancel                            // caller cancels while it rings
	callsInteropCalleeBye                         // callee hangs up
)

// TestKamailioRelayFixture proves the calls harness without authproxy: a
// SIPp UAC that knows the password calls straight into Kamailio in relay
// mode, which must challenge the INVITE, relay the authenticated one to the
// SIPp UAS (over UDP or TCP), and relay the ACK and BYE along the route set
// unchallenged.
func TestKamailioRelayFixture(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	p := upstreamA
	var acct pbxAccount
	for _, a := range p.accounts {
		if a.user == callsInteropCaller {
			acct = a
		}
	}
	uasPort := peers.FreePort(t, callsInteropUASHost)
	uasAddr := fmt.Sprintf("%s:%d", callsInteropUASHost, uasPort)
	kUDP := peers.StartKamailio(t, peers.KamailioConfig{
		Host: p.host, Users: p.users(), StrictURI: true, RelayTo: uasAddr,
	})
	kTCP := peers.StartKamailio(t, peers.KamailioConfig{
		Host: upstreamB.host, Users: p.users(), StrictURI: true, RelayTo: uasAddr, RelayTransport: "tcp",
	})
	for _, tc := range []struct {
		name       string
		k          *peers.Kamailio
		uac, uasTr string // SIPp transports of caller and callee
	}{
		{"udp", kUDP, "u1", "u1"},
		{"tcp", kUDP, "t1", "u1"},
		{"tcp-to-callee", kTCP, "u1", "t1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uas := peers.StartSipp(t, peers.SippRun{
				Scenario: sippScenario("uas.xml"), Local: callsInteropUASHost, LocalPort: uasPort,
				Transport: tc.uasTr, Service: callsInteropCallee, Timeout: 15 * time.Second,
			})
			uac := peers.RunSipp(t, peers.SippRun{
				Scenario: sippScenario("call_auth.xml"), Remote: tc.k.Addr(), Transport: tc.uac,
				Service: callsInteropCallee, Domain: p.domain,
				Keys:     map[string]string{"caller": callsInteropCaller},
				AuthUser: acct.username, AuthPass: acct.password,
				// SIPp's digest uri defaults to remote_ip:port; StrictURI
				// wants the Request-URI.
				Extra:   []string{"-auth_uri", callsInteropCallee + "@" + p.domain},
				Timeout: 10 * time.Second,
			})
			if !uac.OK() {
				uas.Stop()
			}
			uasRes := uas.Wait()
			if !uac.OK() {
				t.Errorf("caller: want the call to succeed\n%v", uac)
			}
			if !uasRes.OK() {
				t.Errorf("callee: want the call to succeed\n%v", uasRes)
			}
			var got []string
			for _, e := range eventsForCall(tc.k, firstCallID(uac)) {
				got = append(got, fmt.Sprintf("%s/%s/%d/%s", e.Method, e.Result, e.CSeq, e.Username))
			}
			// SIPp's ACK carries no credentials; its BYE is CSeq 3.
			want := []string{"INVITE/challenge/1/", "INVITE/ok/2/" + acct.username, "ACK/relay/2/", "BYE/relay/3/"}
			if !slices.Equal(got, want) {
				t.Errorf("Kamailio logged %q, want %q\n%s", got, want, tc.k.Log())
			}
		})
	}
}

// TestCallsThroughKamailio places whole calls from a SIP client with no
// password (SIPp) through authproxy to a real PBX trunk (Kamailio in relay
// mode: it challenges the INVITE, Record-Routes it and relays it to a SIPp
// UAS), and checks what every hop saw: the calls complete on both ends,
// the PBX accepted the INVITE with the caller's credential, the ACK and BYE
// reached it with the CSeq shifted by the answered challenge (RFC 3261
// §12.2.1.1) and the INVITE's credentials on the ACK, a CANCEL names the
// authenticated INVITE (§9.1), a callee BYE reaches the client intact, and
// no password shows up in authproxy's logs or any SIP trace.
//
// pbx-a is reached over UDP and relays in-dialog requests unchallenged, as
// most PBX trunks do; pbx-b is reached over TCP and also challenges the
// caller's BYE, which authproxy must answer with CSeq+1 once more.
func TestCallsThroughKamailio(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")

	// Every call's UAS listens on the same port, one call after the other,
	// so each Kamailio can be told where to relay when it starts.
	uasPort := peers.FreePort(t, callsInteropUASHost)
	uasAddr := fmt.Sprintf("%s:%d", callsInteropUASHost, uasPort)

	pbxA := callsInteropPBX{p: upstreamA, transport: "udp"}
	pbxA.k = peers.StartKamailio(t, peers.KamailioConfig{
		Host: pbxA.p.host, Users: pbxA.p.users(), StrictURI: true, RelayTo: uasAddr,
	})
	pbxB := callsInteropPBX{p: upstreamB, transport: "tcp"}
	pbxB.k = peers.StartKamailio(t, peers.KamailioConfig{
		Host: pbxB.p.host, Users: pbxB.p.users(), StrictURI: true, RelayTo: uasAddr, ChallengeBYE: true,
	})

	listen := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: authproxyTOML(listen, []upstreamConf{
		{pbxA.p, pbxA.k.Addr(), pbxA.transport},
		{pbxB.p, pbxB.k.Addr(), pbxB.transport},
	}, append(credentialsFor(pbxA.p), credentialsFor(pbxB.p)...))})

	var (
		tracesMu sync.Mutex
		traces   []string
	)
	keepTraces := func(rs ...peers.SippResult) {
		tracesMu.Lock()
		defer tracesMu.Unlock()
		for _, r := range rs {
			traces = append(traces, r.Messages, r.Errors)
		}
	}

	cases := []struct {
		name  string
		pbx   callsInteropPBX
		kind  callsInteropKind
		sippT string // client transport, SIPp's -t
	}{
		{"full/udp", pbxA, callsInteropCallerBye, "u1"},
		{"full/tcp", pbxA, callsInteropCallerBye, "t1"},
		{"cancel/udp", pbxA, callsInteropCancel, "u1"},
		{"cancel/tcp", pbxA, callsInteropCancel, "t1"},
		{"callee-bye/udp", pbxA, callsInteropCalleeBye, "u1"},
		{"callee-bye/tcp", pbxA, callsInteropCalleeBye, "t1"},
		{"bye-challenged/udp", pbxB, callsInteropCallerBye, "u1"},
		{"bye-challenged/tcp", pbxB, callsInteropCallerBye, "t1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if done, err := ap.Exited(); done {
				t.Fatalf("authproxy has exited: %v", err)
			}
			uacFile, uasFile := "call.xml", "uas.xml"
			switch tc.kind {
			case callsInteropCancel:
				uacFile, uasFile = "call_cancel.xml", "uas_ring.xml"
			case callsInteropCalleeBye:
				uacFile, uasFile = "call_callee_bye.xml", "uas_bye.xml"
			}
			uas := peers.StartSipp(t, peers.SippRun{
				Scenario:  sippScenario(uasFile),
				Local:     callsInteropUASHost,
				LocalPort: uasPort,
				Service:   callsInteropCallee,
				Timeout:   15 * time.Second,
			})
			uac := peers.RunSipp(t, peers.SippRun{
				Scenario:  sippScenario(uacFile),
				Remote:    listen,
				Transport: tc.sippT,
				Service:   callsInteropCallee,
				Domain:    tc.pbx.p.domain,
				Keys:      map[string]string{"caller": callsInteropCaller},
				Timeout:   10 * time.Second,
			})
			if !uac.OK() {
				// The UAS is still waiting for what never came: stop it now.
				uas.Stop()
			}
			uasRes := uas.Wait()
			keepTraces(uac, uasRes)
			if !uac.OK() {
				t.Errorf("client (SIPp UAC %s): want the call to succeed\n%v", uacFile, uac)
			}
			if !uasRes.OK() {
				t.Errorf("callee (SIPp UAS %s): want the call to succeed\n%v", uasFile, uasRes)
			}
			checkCallsInteropClient(t, uac)
			checkCallsInteropPBX(t, tc.pbx, tc.kind, uac, uasRes)
			if t.Failed() {
				t.Logf("--- client trace ---\n%s\n--- callee trace ---\n%s", uac.Messages, uasRes.Messages)
			}
		})
	}

	t.Run("OnlyOwnUsernames", func(t *testing.T) {
		for _, x := range []callsInteropPBX{pbxA, pbxB} {
			for _, u := range x.k.SeenUsernames() {
				if !slices.Contains(x.p.usernames(), u) {
					t.Errorf("%s received username %q, which belongs to another server", x.p.name, u)
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
		for _, s := range append(pbxA.p.passwords(), pbxB.p.passwords()...) {
			if i := strings.Index(logs, s); i >= 0 {
				t.Errorf("authproxy's logs contain a password: ...%s...", testutil.Excerpt(logs, i))
			}
			if i := strings.Index(all, s); i >= 0 {
				t.Errorf("a SIPp trace contains a password: ...%s...", testutil.Excerpt(all, i))
			}
		}
	})
	if t.Failed() {
		t.Logf("authproxy config:\n%s", fileText(t, ap.ConfigPath()))
	}
}

// checkCallsInteropClient asserts what the calling client saw: no 401/407
// (authproxy answers them), and every response carries a CSeq the client
// sent (authproxy translates the upstream's numbering back). Requests it
// received (a callee BYE) are checked by the caller.
func checkCallsInteropClient(t *testing.T, res peers.SippResult) {
	t.Helper()
	sent := map[string]bool{}
	for _, m := range parseSippTrace(res.Messages) {
		if m.sent {
			sent[traceHeader(m.text, "CSeq")] = true
			continue
		}
		status := callsInteropStartLine(m.text)
		if !strings.HasPrefix(status, "SIP/2.0 ") {
			continue
		}
		if strings.HasPrefix(status, "SIP/2.0 401") || strings.HasPrefix(status, "SIP/2.0 407") {
			t.Errorf("client received a challenge authproxy should have answered: %s", status)
		}
		if cseq := traceHeader(m.text, "CSeq"); !sent[cseq] {
			t.Errorf("client received %q with CSeq %q, which it never sent (sent: %v)", status, cseq, sent)
		}
	}
}

// callsInteropStartLine returns the first line of a traced message.
func callsInteropStartLine(msg string) string {
	line, _, _ := strings.Cut(msg, "\n")
	return strings.TrimSpace(line)
}

// callsInteropCSeq splits a CSeq header value.
func callsInteropCSeq(v string) (int, string) {
	num, method, _ := strings.Cut(strings.TrimSpace(v), " ")
	n, _ := strconv.Atoi(num)
	return n, strings.TrimSpace(method)
}

// callsInteropMessages returns the traced messages (sent or received) whose
// start line begins with prefix, e.g. "BYE " or "SIP/2.0 200".
func callsInteropMessages(res peers.SippResult, sent bool, prefix string) []string {
	var out []string
	for _, m := range parseSippTrace(res.Messages) {
		if m.sent == sent && strings.HasPrefix(callsInteropStartLine(m.text), prefix) {
			out = append(out, m.text)
		}
	}
	return out
}

// callsInteropTag returns the tag parameter of a From or To value.
func callsInteropTag(v string) string {
	for _, p := range strings.Split(v, ";")[1:] {
		if k, val, ok := strings.Cut(strings.TrimSpace(p), "="); ok && strings.EqualFold(k, "tag") {
			return val
		}
	}
	return ""
}

// checkCallsInteropPBX asserts what the PBX (Kamailio) and the callee (the
// SIPp UAS) saw of one call, against what the client sent.
func checkCallsInteropPBX(t *testing.T, x callsInteropPBX, kind callsInteropKind, uac, uas peers.SippResult) {
	t.Helper()
	want := x.username(t)
	callID := firstCallID(uac)
	if callID == "" {
		t.Fatalf("no Call-ID in the client's trace")
	}
	clientCSeq := map[string]int{} // method → CSeq number the client sent
	for _, m := range parseSippTrace(uac.Messages) {
		if !m.sent || strings.HasPrefix(callsInteropStartLine(m.text), "SIP/2.0 ") {
			continue
		}
		n, method := callsInteropCSeq(traceHeader(m.text, "CSeq"))
		clientCSeq[method] = n
	}
	inv := clientCSeq["INVITE"]

	evs := eventsForCall(x.k, callID)
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s/%s/%d/%s", e.Method, e.Result, e.CSeq, e.Username))
		if e.Username != "" && e.Username != want {
			t.Errorf("%s received username %q for caller %s, want %q: %+v", x.p.name, e.Username, callsInteropCaller, want, e)
		}
		if e.Result == "fail" {
			t.Errorf("%s rejected credentials (code %d: -2 wrong password, -10 digest uri is not the Request-URI): %+v", x.p.name, e.Code, e)
		}
		if e.Result == "stray" {
			t.Errorf("%s got a request that matched no transaction and no route set: %+v", x.p.name, e)
		}
	}

	// The INVITE: challenged once, then accepted with CSeq+1 (RFC 3261
	// §22.1, §8.1.3.5). After that every request of the client in this
	// dialog is one higher upstream than the client numbered it.
	wantEvs := []string{
		fmt.Sprintf("INVITE/challenge/%d/", inv),
		fmt.Sprintf("INVITE/ok/%d/%s", inv+1, want),
	}
	const offset = 1
	switch kind {
	case callsInteropCallerBye:
		// The ACK for the 2xx is end to end, in the INVITE's CSeq space
		// upstream, with the INVITE's credentials (§22.1): the username is
		// logged from them.
		wantEvs = append(wantEvs, fmt.Sprintf("ACK/relay/%d/%s", clientCSeq["ACK"]+offset, want))
		bye := clientCSeq["BYE"] + offset
		if x.k.Config().ChallengeBYE {
			wantEvs = append(wantEvs,
				fmt.Sprintf("BYE/challenge/%d/", bye),
				fmt.Sprintf("BYE/ok/%d/%s", bye+1, want))
		} else {
			wantEvs = append(wantEvs, fmt.Sprintf("BYE/relay/%d/", bye))
		}
	case callsInteropCancel:
		// §9.1: the CANCEL names the INVITE authproxy has outstanding, the
		// authenticated one. The ACK for the 487 stays hop by hop (Kamailio
		// absorbs it unlogged).
		wantEvs = append(wantEvs, fmt.Sprintf("CANCEL/relay/%d/", inv+offset))
	case callsInteropCalleeBye:
		wantEvs = append(wantEvs, fmt.Sprintf("ACK/relay/%d/%s", clientCSeq["ACK"]+offset, want))
		// The callee's BYE, in the callee's own CSeq space, relayed by
		// the PBX from the UAS toward authproxy.
		byes := callsInteropMessages(uas, true, "BYE ")
		if len(byes) == 0 {
			t.Fatalf("the callee sent no BYE")
		}
		n, _ := callsInteropCSeq(traceHeader(byes[0], "CSeq"))
		wantEvs = append(wantEvs, fmt.Sprintf("BYE/relay/%d/", n))
		for _, e := range evs {
			if e.Method == "BYE" && e.Source != callsInteropUASHost {
				t.Errorf("%s saw a BYE from %s, want only the callee's (from %s): %+v", x.p.name, e.Source, callsInteropUASHost, e)
			}
		}
		checkCallsInteropCalleeBye(t, uac, byes[0])
	}
	if !slices.Equal(got, wantEvs) {
		t.Errorf("%s logged (method/result/CSeq/username)\n  %q\nwant\n  %q\nclient CSeqs %v; all events: %+v",
			x.p.name, got, wantEvs, clientCSeq, evs)
	}

	// What reached the callee: the authenticated INVITE, without the
	// credentials (the PBX consumed them), then the dialog's requests with
	// the shifted CSeq.
	invs := callsInteropMessages(uas, false, "INVITE ")
	if len(invs) == 0 {
		t.Fatalf("the callee received no INVITE")
	}
	if n, _ := callsInteropCSeq(traceHeader(invs[0], "CSeq")); n != inv+offset {
		t.Errorf("callee's INVITE has CSeq %d, want %d", n, inv+offset)
	}
	switch kind {
	case callsInteropCallerBye, callsInteropCalleeBye:
		contact := callsInteropContactURI(callsInteropMessages(uas, true, "SIP/2.0 200"))
		for _, m := range callsInteropMessages(uas, false, "ACK ") {
			// The ACK for the 2xx goes to the remote target along the
			// route set, which the PBX and authproxy consumed.
			if got := strings.Fields(callsInteropStartLine(m))[1]; contact != "" && got != contact {
				t.Errorf("callee's ACK has Request-URI %s, want the callee's Contact %s", got, contact)
			}
			if r := traceHeader(m, "Route"); r != "" {
				t.Errorf("callee's ACK still has Route %s", r)
			}
		}
	}
}

// callsInteropContactURI returns the Contact URI of the first message.
func callsInteropContactURI(msgs []string) string {
	if len(msgs) == 0 {
		return ""
	}
	c := traceHeader(msgs[0], "Contact")
	if i, j := strings.Index(c, "<"), strings.Index(c, ">"); i >= 0 && j > i {
		return c[i+1 : j]
	}
	return c
}

// checkCallsInteropCalleeBye asserts the BYE the client received from the
// callee: the dialog's tags the other way round, the callee's own CSeq
// untouched (authproxy shifts only the client's numbering), addressed to
// the client's Contact, and no Route left (the entries that named the PBX
// and authproxy were consumed on the way).
func checkCallsInteropCalleeBye(t *testing.T, uac peers.SippResult, sentBye string) {
	t.Helper()
	got := callsInteropMessages(uac, false, "BYE ")
	if len(got) == 0 {
		t.Errorf("the client received no BYE")
		return
	}
	bye := got[0]
	invs := callsInteropMessages(uac, true, "INVITE ")
	oks := callsInteropMessages(uac, false, "SIP/2.0 200")
	if len(invs) == 0 || len(oks) == 0 {
		t.Errorf("client trace lacks the INVITE or its 200")
		return
	}
	if a, b := callsInteropTag(traceHeader(bye, "From")), callsInteropTag(traceHeader(oks[0], "To")); a == "" || a != b {
		t.Errorf("BYE to the client has From tag %q, want the callee's tag %q", a, b)
	}
	if a, b := callsInteropTag(traceHeader(bye, "To")), callsInteropTag(traceHeader(invs[0], "From")); a == "" || a != b {
		t.Errorf("BYE to the client has To tag %q, want the caller's tag %q", a, b)
	}
	if a, b := traceHeader(bye, "CSeq"), traceHeader(sentBye, "CSeq"); a != b {
		t.Errorf("BYE to the client has CSeq %q, the callee sent %q", a, b)
	}
	if a, b := strings.Fields(callsInteropStartLine(bye))[1], callsInteropContactURI(invs); a != b {
		t.Errorf("BYE to the client has Request-URI %s, want the client's Contact %s", a, b)
	}
	if r := traceHeader(bye, "Route"); r != "" {
		t.Errorf("BYE to the client still has Route %s", r)
	}
}
