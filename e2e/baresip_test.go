package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
)

// baresipModulePath is where Debian's baresip-core installs its modules.
const baresipModulePath = "/usr/lib/baresip/modules"

// baresipStepTimeout bounds each wait for baresip (ready, call established,
// call terminated, exit).
const baresipStepTimeout = 10 * time.Second

// baresipConfig is what testdata/baresip/*.tmpl see.
type baresipConfig struct {
	SIPPort     int    // baresip's own UDP/TCP port on 127.0.0.1
	ModulePath  string // module_path
	User        string // the account's SIP user
	Domain      string // the account's domain (an upstream's domain)
	Proxy       string // authproxy's host:port, the outbound proxy
	ProxyParams string // URI parameters of the outbound proxy, e.g. ";transport=tcp"
}

// writeBaresipConfig renders testdata/baresip/{config,accounts}.tmpl into a
// new directory for baresip's -f.
func writeBaresipConfig(t *testing.T, c baresipConfig) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "baresip")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"config", "accounts"} {
		tmpl, err := template.ParseFiles(filepath.Join("testdata", "baresip", name+".tmpl"))
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := tmpl.Execute(&b, c); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestBaresipCall has a real softphone, baresip, with an account that has
// no password, place one call through authproxy to a PBX trunk (Kamailio in
// relay mode, which challenges the INVITE) and a SIPp UAS behind it, and
// hang up: baresip is driven through its stdio console. The callee must see
// the whole call (INVITE, ACK, BYE), the PBX must have accepted the INVITE
// with the caller's credential and seen the ACK and BYE in its CSeq space,
// and baresip must never have seen a challenge.
func TestBaresipCall(t *testing.T) {
	peers.Require(t, "kamailio", "sipp", "baresip")
	if _, err := os.Stat(filepath.Join(baresipModulePath, "ausine.so")); err != nil {
		t.Fatalf("baresip's modules are not where Debian puts them: %v", err)
	}

	// The phone's transport to authproxy; authproxy reaches the PBX over
	// UDP either way (so TCP also means a double Record-Route).
	for _, tc := range []struct{ name, proxyParams string }{
		{"udp", ""},
		{"tcp", ";transport=tcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pbx := upstreamA
			uas := peers.StartSipp(t, peers.SippRun{
				Scenario: sippScenario("uas.xml"),
				Local:    callsInteropUASHost,
				Service:  callsInteropCallee,
				Timeout:  20 * time.Second,
			})
			k := peers.StartKamailio(t, peers.KamailioConfig{
				Host: pbx.host, Users: pbx.users(), StrictURI: true, RelayTo: uas.Addr(),
			})
			listen := fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t, "127.0.0.1"))
			ap := peers.StartAuthproxy(t, peers.AuthproxyConfig{Config: authproxyTOML(listen,
				[]upstreamConf{{pbx, k.Addr(), "udp"}}, credentialsFor(pbx))})

			dir := writeBaresipConfig(t, baresipConfig{
				SIPPort:     peers.FreePort(t, "127.0.0.1"),
				ModulePath:  baresipModulePath,
				User:        callsInteropCaller,
				Domain:      pbx.domain,
				Proxy:       listen,
				ProxyParams: tc.proxyParams,
			})
			bin, _ := peers.LookPath("baresip")
			// -v: verbose; -s: SIP trace on stdout.
			args := []string{"-f", dir, "-v", "-s"}
			if sb, err := exec.LookPath("stdbuf"); err == nil {
				// baresip prints with stdio, fully buffered into a pipe: the
				// line a step waits for could sit in the buffer until exit.
				args = append([]string{"-oL", "-eL", bin}, args...)
				bin = sb
			}
			phone := peers.StartProcess(t, peers.ProcessConfig{
				Name:      "baresip",
				Path:      bin,
				Args:      args,
				Dir:       dir,
				Env:       append(os.Environ(), "HOME="+dir),
				Stdin:     true,
				StopGrace: 3 * time.Second,
			})

			step := func(what string, cmd string, want string, bad ...string) {
				t.Helper()
				if cmd != "" {
					if err := phone.WriteStdin(cmd + "\n"); err != nil {
						t.Fatalf("baresip: write %q: %v\n%s", cmd, err, phone.Output())
					}
				}
				ctx, cancel := context.WithTimeout(t.Context(), baresipStepTimeout)
				defer cancel()
				line, err := phone.WaitLine(ctx, func(l string) bool {
					if strings.Contains(l, want) {
						return true
					}
					return slices.ContainsFunc(bad, func(b string) bool { return strings.Contains(l, b) })
				})
				if err != nil || !strings.Contains(line, want) {
					uasRes := uas.Stop()
					t.Fatalf("baresip: %s: want a line with %q, got %q (%v)\n--- baresip ---\n%s\n--- callee ---\n%v\n--- pbx ---\n%+v",
						what, want, line, err, phone.Output(), uasRes, k.Events())
				}
			}
			step("start", "", "baresip is ready.")
			step("dial", "/dial sip:"+callsInteropCallee+"@"+pbx.domain, "Call established",
				"session closed", "terminated", "Call failed")
			// The BYE must not overtake the ACK on its way through
			// authproxy and Kamailio to the callee: hang up once the PBX
			// relayed the ACK.
			testutil.Eventually(t, "the PBX relaying the caller's ACK", func() bool {
				return slices.ContainsFunc(k.Events(), func(e peers.AuthEvent) bool {
					return e.Method == "ACK" && e.Result == "relay"
				})
			})
			// baresip 1.0 prints no reliable line once a call it hung up has
			// ended (the "Call ... terminated" event line comes or not), so
			// the callee tells: its scenario ends with the 200 for the BYE.
			step("hang up", "/hangup", "terminate call")
			select {
			case <-uas.Done():
			case <-time.After(baresipStepTimeout):
				t.Errorf("the callee did not finish within %v of the hang-up", baresipStepTimeout)
			}
			// A non-forced stop: baresip waits for transactions in progress.
			step("quit", "/quit", "ua exited")
			select {
			case <-phone.Done():
				var ee *exec.ExitError
				if err := phone.Err(); err != nil && !errors.As(err, &ee) {
					t.Errorf("baresip: %v", err)
				} else if err != nil {
					t.Errorf("baresip exited %d, want 0", ee.ExitCode())
				}
			case <-time.After(baresipStepTimeout):
				t.Errorf("baresip did not exit after /quit")
			}

			uasRes := uas.Wait()
			if !uasRes.OK() {
				t.Errorf("callee (SIPp UAS uas.xml): want the call to succeed\n%v", uasRes)
			}
			out := phone.Output()
			checkBaresipSaw(t, out, listen)
			checkBaresipPBX(t, k, pbx, uasRes)

			logs := ap.Logs()
			for _, s := range pbx.passwords() {
				if i := strings.Index(logs, s); i >= 0 {
					t.Errorf("authproxy's logs contain a password: ...%s...", testutil.Excerpt(logs, i))
				}
				if i := strings.Index(out, s); i >= 0 {
					t.Errorf("baresip received a password: ...%s...", testutil.Excerpt(out, i))
				}
				if i := strings.Index(uasRes.Messages, s); i >= 0 {
					t.Errorf("the callee received a password: ...%s...", testutil.Excerpt(uasRes.Messages, i))
				}
			}
			if t.Failed() {
				t.Logf("--- baresip ---\n%s\n--- callee trace ---\n%s", out, uasRes.Messages)
			}
		})
	}
}

// baresipTraced is one message of baresip's SIP trace (-s).
type baresipTraced struct {
	from, to string // "host:port"
	text     string // start line and headers, LF-separated
}

// parseBaresipTrace extracts the messages of baresip's -s trace: each
// starts with a line "UDP|TCP <src> -> <dst>" and runs to the blank line
// after the headers.
func parseBaresipTrace(out string) []baresipTraced {
	var msgs []baresipTraced
	lines := strings.Split(out, "\n")
	for i := 0; i < len(lines); i++ {
		f := strings.Fields(lines[i])
		if len(f) != 4 || (f[0] != "UDP" && f[0] != "TCP") || f[2] != "->" {
			continue
		}
		m := baresipTraced{from: f[1], to: f[3]}
		var hdr []string
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != ""; i++ {
			hdr = append(hdr, strings.TrimRight(lines[i], "\r"))
		}
		m.text = strings.Join(hdr, "\n")
		msgs = append(msgs, m)
	}
	return msgs
}

// checkBaresipSaw asserts on baresip's SIP trace (-s): the phone has no
// password, so a challenge must never reach it; every response carries a
// CSeq it sent; and its BYE was answered 200.
func checkBaresipSaw(t *testing.T, out, proxy string) {
	t.Helper()
	msgs := parseBaresipTrace(out)
	sent := map[string]bool{}
	byeOK := false
	for _, m := range msgs {
		start := callsInteropStartLine(m.text)
		if m.to == proxy {
			sent[traceHeader(m.text, "CSeq")] = true
			continue
		}
		if !strings.HasPrefix(start, "SIP/2.0 ") {
			t.Errorf("baresip received a request: %s", start)
			continue
		}
		if strings.HasPrefix(start, "SIP/2.0 401") || strings.HasPrefix(start, "SIP/2.0 407") {
			t.Errorf("baresip received a challenge authproxy should have answered: %s", start)
		}
		cseq := traceHeader(m.text, "CSeq")
		if !sent[cseq] {
			t.Errorf("baresip received %q with CSeq %q, which it never sent", start, cseq)
		}
		if strings.HasPrefix(start, "SIP/2.0 200") && strings.HasSuffix(cseq, " BYE") {
			byeOK = true
		}
	}
	if len(msgs) == 0 {
		t.Errorf("no SIP trace in baresip's output; is -s still the SIP trace?")
	} else if !byeOK {
		t.Errorf("baresip got no 200 for its BYE")
	}
}

// checkBaresipPBX asserts what the PBX and the callee saw of baresip's call.
func checkBaresipPBX(t *testing.T, k *peers.Kamailio, pbx upstreamPBX, uas peers.SippResult) {
	t.Helper()
	invs := callsInteropMessages(uas, false, "INVITE ")
	if len(invs) == 0 {
		t.Fatalf("the callee received no INVITE")
	}
	callID := traceHeader(invs[0], "Call-ID")
	want := ""
	for _, a := range pbx.accounts {
		if a.user == callsInteropCaller {
			want = a.username
		}
	}
	var got []string
	var inv int
	for _, e := range eventsForCall(k, callID) {
		if e.Method == "INVITE" && e.Result == "challenge" {
			inv = e.CSeq
		}
		got = append(got, fmt.Sprintf("%s/%s/%d/%s", e.Method, e.Result, e.CSeq, e.Username))
	}
	// baresip numbers from a random CSeq; its BYE is one above its INVITE.
	wantEvs := []string{
		fmt.Sprintf("INVITE/challenge/%d/", inv),
		fmt.Sprintf("INVITE/ok/%d/%s", inv+1, want),
		fmt.Sprintf("ACK/relay/%d/%s", inv+1, want),
		fmt.Sprintf("BYE/relay/%d/", inv+2),
	}
	if !slices.Equal(got, wantEvs) {
		t.Errorf("%s logged (method/result/CSeq/username)\n  %q\nwant\n  %q", pbx.name, got, wantEvs)
	}
	for _, m := range callsInteropMessages(uas, false, "") {
		if r := traceHeader(m, "Route"); r != "" && !strings.HasPrefix(callsInteropStartLine(m), "INVITE ") {
			t.Errorf("callee received %q with a Route left: %s", callsInteropStartLine(m), r)
		}
	}
}
