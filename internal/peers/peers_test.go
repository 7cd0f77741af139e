package peers

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCheckLoopback(t *testing.T) {
	for _, ok := range []string{"127.0.0.1", "127.0.0.2", "127.255.0.9", "::1"} {
		if err := checkLoopback(ok); err != nil {
			t.Errorf("checkLoopback(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "localhost", "0.0.0.0", "10.0.0.1", "192.168.1.1", "8.8.8.8", "::", "::2", "fe80::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"} {
		if err := checkLoopback(bad); err == nil {
			t.Errorf("checkLoopback(%q) = nil, want an error", bad)
		}
	}
	if err := checkLoopbackAddr("10.1.2.3:5060"); err == nil {
		t.Error("checkLoopbackAddr accepted 10.1.2.3:5060")
	}
}

func TestFreePort(t *testing.T) {
	for _, host := range []string{"127.0.0.2", "::1"} {
		if p := FreePort(t, host); p <= 0 || p > 65535 {
			t.Fatalf("FreePort(%q) = %d", host, p)
		}
	}
}

func TestParseEvents(t *testing.T) {
	log := ` 0(1) INFO: <core> [main.c:1]: hello
 2(7) NOTICE: <script>: PEERS|probe|abc
 1(6) NOTICE: <script>: PEERS|challenge|-5|REGISTER|<null>|<null>|<null>|udp|1|127.0.0.1|c1@h
 1(6) NOTICE: <script>: PEERS|ok|1|MESSAGE|1001|a-1001|asterisk|tcp|2|127.0.0.1|id|with|pipes
 1(6) NOTICE: <script>: PEERS|relay|0|BYE|<null>|<null>|<null>|udp|7|127.0.0.4|c2@h
 1(6) NOTICE: <script>: PEERS|old|format|without|source|ip|field|x|y
`
	got := parseEvents(log)
	want := []AuthEvent{
		{Result: "challenge", Code: -5, Method: "REGISTER", Transport: "udp", CSeq: 1, Source: "127.0.0.1", CallID: "c1@h"},
		{Result: "ok", Code: 1, Method: "MESSAGE", RURIUser: "1001", Username: "a-1001", Realm: "asterisk", Transport: "tcp", CSeq: 2, Source: "127.0.0.1", CallID: "id|with|pipes"},
		{Result: "relay", Method: "BYE", Transport: "udp", CSeq: 7, Source: "127.0.0.4", CallID: "c2@h"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseEvents:\n got %+v\nwant %+v", got, want)
	}
	if got, want := usernames(got, func(AuthEvent) bool { return true }), []string{"a-1001"}; !slices.Equal(got, want) {
		t.Errorf("usernames = %q, want %q", got, want)
	}
}

func TestSippCounters(t *testing.T) {
	csv := "StartTime;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);3_200_Recv;\n" +
		"x;0;0;0;0;0;\n" +
		"y;1;3;0;2;5;\n"
	got := sippCounters(csv)
	if got["SuccessfulCall(C)"] != 3 || got["FailedCall(C)"] != 2 || got["3_200_Recv"] != 5 {
		t.Errorf("sippCounters = %v; want SuccessfulCall(C) 3, FailedCall(C) 2, 3_200_Recv 5", got)
	}
	if _, ok := got["StartTime"]; ok {
		t.Errorf("sippCounters kept the non-numeric StartTime: %v", got)
	}
	if got := sippCounters(""); len(got) != 0 {
		t.Errorf("sippCounters(empty) = %v", got)
	}
}

func TestSippProgress(t *testing.T) {
	csv := "StartTime;CurrentTime;SuccessfulCall(C);FailedCall(C)\n" +
		"2026-12-03\t15:37:24.380681\t1796312244.380681;2026-12-03\t15:37:24.380681\t1796312244.380681;0;0\n" +
		"2026-12-03\t15:37:24.380681\t1796312244.380681;2026-12-03\t15:37:25.383689\t1796312245.383689;24;1\n" +
		"2026-12-03\t15:37:24.380681\t1796312244.380681;2026-12-03\t15:37:26.893987\t1796312246.893987;99;1\n"
	res := SippResult{Progress: sippProgress(csv)}
	if len(res.Progress) != 3 {
		t.Fatalf("sippProgress = %+v, want 3 rows", res.Progress)
	}
	tests := []struct {
		n      int
		want   time.Duration
		wantOK bool
	}{
		{0, 0, true},
		{25, 1003 * time.Millisecond, true},
		{100, 2513 * time.Millisecond, true},
		{101, 0, false},
	}
	for _, tt := range tests {
		got, ok := res.EndedBy(tt.n)
		if ok != tt.wantOK || got.Round(time.Millisecond) != tt.want {
			t.Errorf("EndedBy(%d) = %v, %v; want %v, %v", tt.n, got, ok, tt.want, tt.wantOK)
		}
	}
	if got := sippProgress(""); got != nil {
		t.Errorf("sippProgress(empty) = %v", got)
	}
}

func TestRedactArgs(t *testing.T) {
	got := redactArgs([]string{"-au", "u", "-ap", "secret", "-s", "1001"})
	if strings.Contains(strings.Join(got, " "), "secret") {
		t.Errorf("redactArgs left the password: %q", got)
	}
}

func TestNormalizeKamailio(t *testing.T) {
	cfg, err := normalizeKamailio(KamailioConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "127.0.0.1" || cfg.Realm != "asterisk" || cfg.Algorithm != "MD5" || cfg.QOP != "auth" {
		t.Errorf("defaults = %+v", cfg)
	}
	for name, bad := range map[string]KamailioConfig{
		"non-loopback host":  {Host: "10.0.0.1"},
		"SHA-512-256":        {Algorithm: "SHA-512-256"},
		"MD5-sess":           {Algorithm: "MD5-sess"},
		"qop list":           {QOP: "auth,auth-int"},
		"newline password":   {Users: map[string]string{"u": "a\nb"}},
		"empty username":     {Users: map[string]string{"": "p"}},
		"quote in username":  {Users: map[string]string{`a"b`: "p"}},
		"pipe in realm":      {Realm: "a|b"},
		"non-loopback relay": {RelayTo: "10.0.0.1:5060"},
		"relay without port": {RelayTo: "127.0.0.4"},
		"relay over sctp":    {RelayTo: "127.0.0.4:5060", RelayTransport: "sctp"},
		"ChallengeBYE alone": {ChallengeBYE: true},
		"status and relay":   {RelayTo: "127.0.0.4:5060", InviteStatus: 503},
		"unknown mode":       {Mode: 7},
		"trunk, no relay":    {Mode: KamailioLoadTrunk, Users: map[string]string{"u": "p"}},
		"trunk, no user":     {Mode: KamailioLoadTrunk, RelayTo: "127.0.0.4:5060"},
		"trunk, stale":       {Mode: KamailioLoadTrunk, RelayTo: "127.0.0.4:5060", Users: map[string]string{"u": "p"}, StaleOnce: true},
		"trunk, SHA-256":     {Mode: KamailioLoadTrunk, RelayTo: "127.0.0.4:5060", Users: map[string]string{"u": "p"}, Algorithm: "SHA-256"},
		"uac, two users":     {Mode: KamailioUACProxy, RelayTo: "127.0.0.2:5060", Users: map[string]string{"u": "p", "v": "q"}},
		"uac, colon in user": {Mode: KamailioUACProxy, RelayTo: "127.0.0.2:5060", Users: map[string]string{"u:x": "p"}},
		"uac, space in pw":   {Mode: KamailioUACProxy, RelayTo: "127.0.0.2:5060", Users: map[string]string{"u": "p w"}},
	} {
		if _, err := normalizeKamailio(bad); err == nil {
			t.Errorf("%s: accepted %+v", name, bad)
		}
	}
	// A normalized config normalizes again to itself: a restart starts
	// Kamailio again from Kamailio.Config.
	for name, c := range map[string]KamailioConfig{
		"plain":     {},
		"status":    {InviteStatus: 503},
		"relay":     {RelayTo: "127.0.0.4:5060"},
		"registrar": {Registrar: true},
		"trunk":     {Mode: KamailioLoadTrunk, RelayTo: "127.0.0.4:5060", Users: map[string]string{"u": "p"}},
		"uac proxy": {Mode: KamailioUACProxy, RelayTo: "127.0.0.2:5060", Users: map[string]string{"u": "p"}},
	} {
		once, err := normalizeKamailio(c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		twice, err := normalizeKamailio(once)
		if err != nil || !reflect.DeepEqual(once, twice) {
			t.Errorf("%s: normalized again: %+v, %v; want %+v", name, twice, err, once)
		}
	}
}

// TestKamailioConfigSyntax renders every variant of the script and has
// Kamailio check it (kamailio -c), which is quick and needs no socket.
func TestKamailioConfigSyntax(t *testing.T) {
	Require(t, "kamailio")
	bin, _ := LookPath("kamailio")
	users := map[string]string{
		"plain":      "pw",
		"we$ird.u-1": `back\slash"and$dollar#hash $var(x) %s`,
		"with space": "p w",
	}
	for name, cfg := range map[string]KamailioConfig{
		"defaults":   {Users: users},
		"sha256":     {Users: users, Algorithm: "SHA-256"},
		"auth-int":   {Users: users, QOP: "auth-int"},
		"no-qop":     {Users: users, QOP: "none"},
		"everything": {Users: users, StaleOnce: true, StrictURI: true, NonceExpire: 2 * time.Second, Realm: "my realm"},
		"no-users":   {},
		"relay":      {Users: users, RelayTo: "127.0.0.4:5070"},
		"relay-tcp":  {Users: users, RelayTo: "127.0.0.4:5070", RelayTransport: "tcp", ChallengeBYE: true, StrictURI: true},
		"registrar":  {Users: users, Registrar: true},
		"trunk":      {Mode: KamailioLoadTrunk, Users: users, RelayTo: "127.0.0.4:5070"},
		"trunk-one":  {Mode: KamailioLoadTrunk, Users: map[string]string{"bench": "pw"}, RelayTo: "127.0.0.4:5070"},
		"uac-proxy":  {Mode: KamailioUACProxy, Users: map[string]string{"we$ird.u-1": `back\slash"and$dollar#hash$var(x)%s`}, RelayTo: "127.0.0.2:5070"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.Port = 5060
			cfg, err := normalizeKamailio(cfg)
			if err != nil {
				t.Fatal(err)
			}
			script, err := renderKamailio(cfg)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "kamailio.cfg")
			if err := os.WriteFile(path, script, 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, "-c", "-f", path).CombinedOutput()
			if err != nil {
				t.Fatalf("kamailio -c: %v\n%s\n--- script ---\n%s", err, out, script)
			}
		})
	}
}

// recorder is a testing.TB that records Skipf and Fatalf instead of
// stopping the test.
type recorder struct {
	testing.TB
	skipped, fatal string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Skipf(format string, args ...any)  { r.skipped = fmt.Sprintf(format, args...) }
func (r *recorder) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }

func TestRequire(t *testing.T) {
	t.Setenv("CI", "")
	r := &recorder{TB: t}
	Require(r, "no-such-peer-binary")
	if !strings.Contains(r.skipped, "no-such-peer-binary not installed") || !strings.Contains(r.skipped, InstallHint) || r.fatal != "" {
		t.Errorf("without CI: skipped %q, fatal %q", r.skipped, r.fatal)
	}

	t.Setenv("CI", "true")
	r = &recorder{TB: t}
	Require(r, "no-such-peer-binary")
	if !strings.Contains(r.fatal, "no-such-peer-binary") || r.skipped != "" {
		t.Errorf("with CI=true: skipped %q, fatal %q", r.skipped, r.fatal)
	}
}

func TestSocketBound(t *testing.T) {
	for _, host := range []string{"127.0.0.9", "::1"} {
		t.Run(host, func(t *testing.T) { testSocketBound(t, host) })
	}
}

func testSocketBound(t *testing.T, host string) {
	u, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	uport := u.LocalAddr().(*net.UDPAddr).Port
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	tport := l.Addr().(*net.TCPAddr).Port
	for _, c := range []struct {
		proto string
		port  int
	}{{"udp", uport}, {"tcp", tport}} {
		if ok, err := socketBound(c.proto, host, c.port); !ok || err != nil {
			t.Errorf("socketBound(%s, %d) = %v, %v; want true", c.proto, c.port, ok, err)
		}
	}
	u.Close()
	l.Close()
	if ok, _ := socketBound("udp", host, uport); ok {
		t.Errorf("socketBound(udp, %d) after close = true", uport)
	}
	if ok, _ := socketBound("tcp", host, tport); ok {
		t.Errorf("socketBound(tcp, %d) after close = true", tport)
	}
}

func TestProcessStdin(t *testing.T) {
	cat, err := exec.LookPath("cat")
	if err != nil {
		t.Skip("no cat")
	}
	p := StartProcess(t, ProcessConfig{Name: "cat", Path: cat, Stdin: true})
	if err := p.WriteStdin("hello peers\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := p.WaitLine(ctx, func(l string) bool { return l == "hello peers" }); err != nil {
		t.Fatal(err)
	}
	_ = p.Stop()
	if err := p.WriteStdin("late\n"); err == nil {
		t.Error("WriteStdin after Stop succeeded")
	}
	q := StartProcess(t, ProcessConfig{Name: "cat", Path: cat})
	if err := q.WriteStdin("x"); err == nil {
		t.Error("WriteStdin without ProcessConfig.Stdin succeeded")
	}
	_ = q.Stop()
}

// TestStartSipp runs a background SIPp UAS and a SIPp UAC against it: the
// server must exit 0 after its one call; one that never gets a call must
// report a failure when stopped.
func TestStartSipp(t *testing.T) {
	Require(t, "sipp")
	dir := t.TempDir()
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	uas := write("uas.xml", `<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options uas">
  <recv request="OPTIONS"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

  ]]></send>
</scenario>
`)
	uac := write("uac.xml", `<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options uac">
  <send retrans="500"><![CDATA[
      OPTIONS sip:x@[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:y@[domain]>;tag=[pid]
      To: <sip:x@[domain]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
</scenario>
`)
	for _, tr := range []string{"u1", "t1"} {
		t.Run(tr, func(t *testing.T) {
			srv := StartSipp(t, SippRun{Scenario: uas, Local: "127.0.0.9", Transport: tr, Timeout: 10 * time.Second})
			res := RunSipp(t, SippRun{Scenario: uac, Remote: srv.Addr(), Transport: tr, Timeout: 5 * time.Second})
			if !res.OK() {
				t.Errorf("client: %v", res)
			}
			if got := srv.Wait(); !got.OK() {
				t.Errorf("server: %v", got)
			}
		})
	}
	t.Run("never-called", func(t *testing.T) {
		srv := StartSipp(t, SippRun{Scenario: uas, Local: "127.0.0.9", Timeout: 10 * time.Second})
		// SIPp exits 0 on SIGTERM; the call counters tell.
		if got := srv.Stop(); got.OK() || got.Successful != 0 {
			t.Errorf("a server stopped before any call reports success: %v", got)
		}
	})
}
