package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
)

// upstreamS is the registrar of the state tests: three phones, a trunk
// registration's account and a caller.
var upstreamS = upstreamPBX{
	name: "pbx-s", host: "127.0.0.2", domain: "pbx-s.example.com",
	accounts: []pbxAccount{
		{"3001", "s-3001", "pwS-3001-Hk2!"},
		{"3002", "s-3002", "pwS-3002-Jq7%"},
		{"3003", "s-3003", "pwS-3003-Lm4#"},
		{"3004", "s-3004", "pwS-3004-Np9&"},
		{"3009", "s-3009", "pwS-3009-Zr5*"},
	},
}

const stateCaller, stateTrunkUser = "3009", "3004"

// stateStatus is the part of GET /status the state tests read.
type stateStatus struct {
	TrunkRegistrations []struct {
		Name, Upstream, State, Holder string
	} `json:"trunk_registrations"`
	State struct {
		Backend  string `json:"backend"`
		Instance string `json:"instance"`
		Up       bool   `json:"up"`
		Pending  int    `json:"pending"`
		Members  []struct {
			ID string `json:"id"`
		} `json:"members"`
		TrunkHolders map[string]string `json:"trunk_holders"`
	} `json:"state"`
}

func stateStatusOf(admin string) (st stateStatus, ok bool) {
	c := http.Client{Timeout: 5 * time.Second}
	res, err := c.Get("http://" + admin + "/status")
	if err != nil {
		return st, false
	}
	defer res.Body.Close()
	return st, res.StatusCode == http.StatusOK && json.NewDecoder(res.Body).Decode(&st) == nil
}

// stateTOML is an authproxy in front of k with an admin listener, a
// [state] table and a trunk registration of stateTrunkUser whose target
// is trunkTarget.
func stateTOML(listen, admin, kAddr, stateTable, trunkTarget string) string {
	return authproxyTOML(listen, []upstreamConf{{upstreamS, kAddr, "udp"}}, credentialsFor(upstreamS)) +
		fmt.Sprintf("[admin]\naddress = %s\n\n%s\n", tomlString(admin), stateTable) +
		fmt.Sprintf("[[registration]]\nupstream = %q\naor = %q\nexpires = 120\ntarget = %s\n",
			upstreamS.name, "sip:"+stateTrunkUser+"@"+upstreamS.domain, tomlString(trunkTarget))
}

// trunkRegisters counts the REGISTERs of the trunk registration Kamailio
// accepted.
func trunkRegisters(k *peers.Kamailio) int {
	n := 0
	for _, e := range k.Events() {
		if e.Method == "REGISTER" && e.Result == "ok" && e.Username == "s-"+stateTrunkUser {
			n++
		}
	}
	return n
}

// TestStateFileSurvivesSIGKILL: three phones register through authproxy
// (file backend) at a Kamailio registrar, and authproxy registers a trunk
// itself. Once /status shows the state committed to the file, authproxy
// is killed with SIGKILL and started again on the same directory. Without
// any phone registering again, an INVITE from Kamailio reaches each phone
// through the restarted authproxy; the trunk registration resumes its
// schedule ("registration resumed", no REGISTER at start) and its target
// is reachable too.
func TestStateFileSurvivesSIGKILL(t *testing.T) {
	peers.Require(t, "kamailio", "sipp")
	p := upstreamS
	k := peers.StartKamailio(t, peers.KamailioConfig{Host: p.host, Users: p.users(), Registrar: true})
	listen, admin := faultsAddrs(t)
	dir := t.TempDir()
	trunkPort := peers.FreePort(t, callsInteropUASHost)
	conf := stateTOML(listen, admin, k.Addr(), fmt.Sprintf("[state]\nbackend = \"file\"\ndir = %s\n", tomlString(dir)),
		fmt.Sprintf("%s:%d", callsInteropUASHost, trunkPort))
	ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: conf})

	phones := []string{"3001", "3002", "3003"}
	ports := map[string]int{}
	for _, user := range phones {
		ports[user] = peers.FreePort(t, "127.0.0.1")
		reg := peers.RunSipp(t, peers.SippRun{
			Scenario: sippScenario("register.xml"), Remote: listen, Local: "127.0.0.1", LocalPort: ports[user],
			Transport: "u1", Service: user, Domain: p.domain, Timeout: 10 * time.Second,
		})
		if !reg.OK() {
			t.Fatalf("REGISTER %s through authproxy: %v\n--- authproxy ---\n%s", user, reg, ap.Logs())
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	if _, err := ap.Process().WaitLine(ctx, func(l string) bool { return strings.Contains(l, `"msg":"registered"`) }); err != nil {
		t.Fatalf("trunk not registered: %v\n%s", err, ap.Logs())
	}
	testutil.Eventually(t, "the state committed to the file", func() bool {
		st, ok := stateStatusOf(admin)
		return ok && st.State.Backend == "file" && st.State.Pending == 0
	})
	before := trunkRegisters(k)
	if err := ap.Kill(); err != nil {
		t.Fatal(err)
	}

	ap = peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: conf})
	logs := ap.Logs()
	if !strings.Contains(logs, `"msg":"bindings restored from the state store"`) || !strings.Contains(logs, `"bindings":3`) {
		t.Fatalf("the restarted authproxy did not restore 3 bindings:\n%s", logs)
	}
	testutil.Eventually(t, "the trunk registration resumed", func() bool {
		return strings.Contains(ap.Logs(), `"msg":"registration resumed from the state store"`)
	})
	for _, user := range phones {
		callViaKamailio(t, "phone "+user+" after the restart", k, ap, p, stateCaller, user, "127.0.0.1", ports[user])
	}
	callViaKamailio(t, "the trunk's target after the restart", k, ap, p, stateCaller, stateTrunkUser, callsInteropUASHost, trunkPort)
	if after := trunkRegisters(k); after != before {
		t.Errorf("Kamailio accepted %d trunk REGISTERs before the restart and %d after it: the restart re-registered instead of resuming", before, after)
	}
	if strings.Contains(ap.Logs(), `"msg":"registered"`) {
		t.Errorf("the restarted authproxy registered the trunk again instead of resuming:\n%s", ap.Logs())
	}
}
