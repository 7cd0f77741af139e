package config_test

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/credentials"
)

// secret is the password every test configuration carries; no error text
// may ever contain it.
const secret = "Zq7-distinctive-PASSWORD-9x"

// Building blocks for test configurations. credOK has no server scope so
// that rows changing the upstreams do not break it.
const (
	listenOK = `
[[listen]]
address = "127.0.0.1:5060"
`
	upstreamsOK = `
[[upstream]]
name = "pbx-a"
address = "127.0.0.2"
domains = ["pbx-a.example.com"]

[[upstream]]
name = "pbx-b"
address = "127.0.0.3:5060"
`
	credOK = `
[[credential]]
username = "alice"
password = "` + secret + `"
`
	baseOK = listenOK + upstreamsOK + credOK
)

// env returns a WithLookupEnv option serving m, so tests never read or
// change the process environment.
func env(m map[string]string) config.Option {
	return config.WithLookupEnv(func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	})
}

// fieldErrors returns the *FieldErrors joined in err, failing the test on
// anything else.
func fieldErrors(t *testing.T, err error) []*config.FieldError {
	t.Helper()
	if err == nil {
		return nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]*config.FieldError, 0, len(errs))
	for _, e := range errs {
		var fe *config.FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("error %q (%T) is not a *config.FieldError", e, e)
		}
		out = append(out, fe)
	}
	return out
}

// mustParse parses data with an empty environment and fails on error.
func mustParse(t *testing.T, data string, opts ...config.Option) *config.Config {
	t.Helper()
	cfg, err := config.Parse(withClient(data), append([]config.Option{env(nil)}, opts...)...)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg
}

func readExample(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "config.example.toml"))
	if err != nil {
		t.Fatalf("read example: %v", err)
	}
	return data
}

func TestExampleConfig(t *testing.T) {
	cfg := mustParse(t, string(readExample(t)))

	if got, want := cfg.Summary(), "2 listeners, 2 upstreams, 0 groups, 3 credentials, 1 client group, 0 client users, 0 registrations"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
	wantListen := []config.Listen{
		{Transport: "udp", Address: "127.0.0.1:5060", Advertise: "127.0.0.1"},
		{Transport: "tcp", Address: "127.0.0.1:5060", Advertise: "127.0.0.1"},
	}
	if !reflect.DeepEqual(cfg.Listen, wantListen) {
		t.Errorf("Listen = %+v, want %+v", cfg.Listen, wantListen)
	}
	wantUp := []config.Upstream{
		{Name: "pbx-a", Address: "127.0.0.2:5060", Transport: "udp", Domains: []string{"pbx-a.example.com"}, Preemptive: "all", RegisterMode: "path"},
		{Name: "pbx-b", Address: "127.0.0.3:5060", Transport: "udp", Domains: []string{"pbx-b.example.com"}, Preemptive: "all", RegisterMode: "path"},
	}
	if !reflect.DeepEqual(cfg.Upstreams, wantUp) {
		t.Errorf("Upstreams = %+v, want %+v", cfg.Upstreams, wantUp)
	}
	type scope struct{ username, server, realm, user string }
	var got []scope
	for _, e := range cfg.Credentials {
		if e.Password.IsZero() {
			t.Errorf("credential %q has no password", e.Username)
		}
		got = append(got, scope{e.Username, e.Server, e.Realm, e.User})
	}
	want := []scope{
		{"alice", "127.0.0.2:5060", "asterisk", "1001"},
		{"office", "127.0.0.2:5060", "asterisk", ""},
		{"bob", "127.0.0.3:5060", "asterisk", ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("credential scopes = %+v, want %+v", got, want)
	}
}

// TestExampleConfigDocumentsDefaults holds the example to its word: the
// values it spells out for [log], [proxy] and [tcp] are the built-in
// defaults.
func TestExampleConfigDocumentsDefaults(t *testing.T) {
	example := mustParse(t, string(readExample(t)))
	minimal := mustParse(t, baseOK)
	if example.Log != minimal.Log {
		t.Errorf("example [log] = %+v, defaults = %+v", example.Log, minimal.Log)
	}
	if example.Proxy != minimal.Proxy {
		t.Errorf("example [proxy] = %+v, defaults = %+v", example.Proxy, minimal.Proxy)
	}
	if example.TCP != minimal.TCP {
		t.Errorf("example [tcp] = %+v, defaults = %+v", example.TCP, minimal.TCP)
	}
}

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, baseOK)
	if got, want := cfg.Log, (config.Log{Level: slog.LevelInfo, Format: "auto"}); got != want {
		t.Errorf("Log = %+v, want %+v", got, want)
	}
	if got, want := cfg.Proxy, (config.Proxy{MaxChallenges: 3, ShutdownGrace: 5 * time.Second, TimerC: 210 * time.Second, DialogIdleTimeout: 2 * time.Hour, FailoverTimeout: 4 * time.Second}); got != want {
		t.Errorf("Proxy = %+v, want %+v", got, want)
	}
	if got, want := cfg.Listen[0], (config.Listen{Transport: "udp", Address: "127.0.0.1:5060", Advertise: "127.0.0.1"}); got != want {
		t.Errorf("Listen[0] = %+v, want %+v", got, want)
	}
	if got, want := cfg.Upstreams[0].Address, "127.0.0.2:5060"; got != want {
		t.Errorf("Upstreams[0].Address = %q, want %q (default port)", got, want)
	}
	if got, want := cfg.Upstreams[0].Transport, "udp"; got != want {
		t.Errorf("Upstreams[0].Transport = %q, want %q", got, want)
	}
	if got, want := cfg.Summary(), "1 listener, 2 upstreams, 0 groups, 1 credential, 1 client group, 0 client users, 0 registrations"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
}

func TestNormalisation(t *testing.T) {
	cfg := mustParse(t, `
[log]
level = "DEBUG"
format = "JSON"

[[listen]]
transport = "TCP"
address = "[::1]:0"

[[listen]]
address = "0.0.0.0:5062"
advertise = "SIP.Example.COM"

[[upstream]]
name = "v6"
address = "::1"

[[upstream]]
name = "v6b"
address = "[::2]"

[[upstream]]
name = "named"
address = "PBX.Example.COM:5070"
transport = "Tcp"
domains = ["Calls.Example.COM"]
`)
	if cfg.Log.Level != slog.LevelDebug || cfg.Log.Format != "json" {
		t.Errorf("Log = %+v, want debug/json", cfg.Log)
	}
	if got, want := cfg.Listen[0], (config.Listen{Transport: "tcp", Address: "[::1]:0", Advertise: "::1"}); got != want {
		t.Errorf("Listen[0] = %+v, want %+v", got, want)
	}
	if got, want := cfg.Listen[1].Advertise, "sip.example.com"; got != want {
		t.Errorf("Listen[1].Advertise = %q, want %q", got, want)
	}
	for i, want := range []string{"[::1]:5060", "[::2]:5060", "pbx.example.com:5070"} {
		if got := cfg.Upstreams[i].Address; got != want {
			t.Errorf("Upstreams[%d].Address = %q, want %q", i, got, want)
		}
	}
	if got, want := cfg.Upstreams[2].Transport, "tcp"; got != want {
		t.Errorf("Upstreams[2].Transport = %q, want %q", got, want)
	}
	if got, want := cfg.Upstreams[2].Domains, []string{"calls.example.com"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Upstreams[2].Domains = %q, want %q", got, want)
	}
}

func TestDurations(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"5s", 5 * time.Second},
		{"500ms", 500 * time.Millisecond},
		{"1m30s", 90 * time.Second},
		{"0s", 0},
	} {
		t.Run(tc.in, func(t *testing.T) {
			cfg := mustParse(t, baseOK+"[proxy]\nshutdown_grace = \""+tc.in+"\"\n")
			if got := cfg.Proxy.ShutdownGrace; got != tc.want {
				t.Errorf("ShutdownGrace = %v, want %v", got, tc.want)
			}
		})
	}
}

// rule is one validation test case: a configuration with exactly one
// mistake, and the key and sentinel its single error must carry.
type rule struct {
	name  string
	toml  string
	env   map[string]string
	setup func(t *testing.T, dir string) // creates files in the base dir
	key   string
	err   error
}

func rules() []rule {
	up := func(fields string) string { // one upstream with extra fields
		return "\n[[upstream]]\nname = \"pbx-a\"\n" + fields + "\n"
	}
	cred := func(fields string) string { // a second credential, own scope
		return "\n[[credential]]\nrealm = \"second\"\n" + fields + "\n"
	}
	listen := func(fields string) string {
		return "\n[[listen]]\n" + fields + "\n"
	}
	writeFile := func(name, content string) func(*testing.T, string) {
		return func(t *testing.T, dir string) {
			t.Helper()
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return []rule{
		// [log] and [proxy]
		{name: "LogLevel", toml: baseOK + "[log]\nlevel = \"loud\"\n", key: "log.level", err: config.ErrInvalid},
		{name: "LogFormat", toml: baseOK + "[log]\nformat = \"yaml\"\n", key: "log.format", err: config.ErrInvalid},
		{name: "LogSIPTraceType", toml: baseOK + "[log]\nsip_trace = \"yes\"\n", key: "log.sip_trace", err: config.ErrInvalid},
		{name: "MaxChallengesZero", toml: baseOK + "[proxy]\nmax_challenges = 0\n", key: "proxy.max_challenges", err: config.ErrInvalid},
		{name: "MaxChallengesEleven", toml: baseOK + "[proxy]\nmax_challenges = 11\n", key: "proxy.max_challenges", err: config.ErrInvalid},
		{name: "MaxChallengesString", toml: baseOK + "[proxy]\nmax_challenges = \"3\"\n", key: "proxy.max_challenges", err: config.ErrInvalid},
		{name: "MaxChallengesFloat", toml: baseOK + "[proxy]\nmax_challenges = 3.5\n", key: "proxy.max_challenges", err: config.ErrInvalid},
		{name: "ShutdownGraceBad", toml: baseOK + "[proxy]\nshutdown_grace = \"soon\"\n", key: "proxy.shutdown_grace", err: config.ErrInvalid},
		{name: "ShutdownGraceNegative", toml: baseOK + "[proxy]\nshutdown_grace = \"-1s\"\n", key: "proxy.shutdown_grace", err: config.ErrInvalid},
		{name: "PprofWithoutAdmin", toml: baseOK + "[admin]\npprof = true\n", key: "admin.pprof", err: config.ErrInvalid},
		{name: "PprofNotBool", toml: baseOK + "[admin]\naddress = \"127.0.0.1:0\"\npprof = \"yes\"\n", key: "admin.pprof", err: config.ErrInvalid},
		{name: "ShutdownGraceInteger", toml: baseOK + "[proxy]\nshutdown_grace = 5\n", key: "proxy.shutdown_grace", err: config.ErrInvalid},

		// [[listen]]
		{name: "ListenNone", toml: upstreamsOK + credOK, key: "listen", err: config.ErrRequired},
		{name: "ListenNotArray", toml: upstreamsOK + credOK + "[listen]\naddress = \"127.0.0.1:5060\"\n", key: "listen", err: config.ErrInvalid},
		{name: "ListenTransport", toml: listen(`transport = "sctp"`+"\naddress = \"127.0.0.1:5060\"") + upstreamsOK + credOK, key: "listen[0].transport", err: config.ErrInvalid},
		{name: "ListenAddressMissing", toml: listen(`transport = "udp"`) + upstreamsOK + credOK, key: "listen[0].address", err: config.ErrRequired},
		{name: "ListenAddressNoPort", toml: listen(`address = "127.0.0.1"`) + upstreamsOK + credOK, key: "listen[0].address", err: config.ErrInvalid},
		{name: "ListenAddressBadPort", toml: listen(`address = "127.0.0.1:99999"`) + upstreamsOK + credOK, key: "listen[0].address", err: config.ErrInvalid},
		{name: "ListenAddressBadHost", toml: listen(`address = "bad host:5060"`) + upstreamsOK + credOK, key: "listen[0].address", err: config.ErrInvalid},
		{name: "ListenDuplicate", toml: listenOK + listen(`address = "127.0.0.1:5060"`) + upstreamsOK + credOK, key: "listen[1]", err: config.ErrDuplicate},
		{name: "ListenDuplicateNormalised", toml: listen(`address = "LOCALHOST:5060"`) + listen(`address = "localhost:5060"`+"\ntransport = \"UDP\"") + upstreamsOK + credOK, key: "listen[1]", err: config.ErrDuplicate},
		{name: "AdvertiseRequiredV4", toml: listen(`address = "0.0.0.0:5060"`) + upstreamsOK + credOK, key: "listen[0].advertise", err: config.ErrRequired},
		{name: "AdvertiseRequiredV6", toml: listen(`address = "[::]:5060"`) + upstreamsOK + credOK, key: "listen[0].advertise", err: config.ErrRequired},
		{name: "AdvertiseRequiredEmptyHost", toml: listen(`address = ":5060"`) + upstreamsOK + credOK, key: "listen[0].advertise", err: config.ErrRequired},
		{name: "AdvertiseUnspecified", toml: listen(`address = "0.0.0.0:5060"`+"\nadvertise = \"0.0.0.0\"") + upstreamsOK + credOK, key: "listen[0].advertise", err: config.ErrInvalid},
		{name: "AdvertiseBad", toml: listen(`address = "127.0.0.1:5060"`+"\nadvertise = \"a b\"") + upstreamsOK + credOK, key: "listen[0].advertise", err: config.ErrInvalid},

		// [[upstream]]
		{name: "UpstreamNone", toml: listenOK + credOK, key: "upstream", err: config.ErrRequired},
		{name: "UpstreamNameMissing", toml: listenOK + "[[upstream]]\naddress = \"127.0.0.2\"\n" + credOK, key: "upstream[0].name", err: config.ErrRequired},
		{name: "UpstreamNameDuplicate", toml: listenOK + up(`address = "127.0.0.2"`) + up(`address = "127.0.0.3"`) + credOK, key: "upstream[1].name", err: config.ErrDuplicate},
		{name: "UpstreamAddressMissing", toml: listenOK + up(``) + credOK, key: "upstream[0].address", err: config.ErrRequired},
		{name: "UpstreamAddressBadPort", toml: listenOK + up(`address = "127.0.0.2:0"`) + credOK, key: "upstream[0].address", err: config.ErrInvalid},
		{name: "UpstreamAddressBadHost", toml: listenOK + up(`address = "pbx/a:5060"`) + credOK, key: "upstream[0].address", err: config.ErrInvalid},
		{name: "UpstreamAddressUnspecified", toml: listenOK + up(`address = "0.0.0.0"`) + credOK, key: "upstream[0].address", err: config.ErrInvalid},
		{name: "UpstreamAddressDuplicate", toml: listenOK + upstreamsOK + "[[upstream]]\nname = \"pbx-c\"\naddress = \"127.0.0.2:5060\"\n" + credOK, key: "upstream[2].address", err: config.ErrDuplicate},
		{name: "UpstreamPreemptive", toml: listenOK + up(`address = "127.0.0.2"`+"\npreemptive = \"always\"") + credOK, key: "upstream[0].preemptive", err: config.ErrInvalid},
		{name: "UpstreamTransport", toml: listenOK + up(`address = "127.0.0.2"`+"\ntransport = \"ws\"") + credOK, key: "upstream[0].transport", err: config.ErrInvalid},
		{name: "UpstreamRegisterMode", toml: listenOK + up(`address = "127.0.0.2"`+"\nregister_mode = \"rewrite\"") + credOK, key: "upstream[0].register_mode", err: config.ErrInvalid},
		{name: "UpstreamDomainDuplicate", toml: listenOK + upstreamsOK + "domains = [\"PBX-A.example.com\"]\n" + credOK, key: "upstream[1].domains[0]", err: config.ErrDuplicate},
		{name: "UpstreamDomainInvalid", toml: listenOK + up(`address = "127.0.0.2"`+"\ndomains = [\"\"]") + credOK, key: "upstream[0].domains[0]", err: config.ErrInvalid},
		{name: "UpstreamDomainsNotArray", toml: listenOK + up(`address = "127.0.0.2"`+"\ndomains = \"a.example.com\"") + credOK, key: "upstream[0].domains", err: config.ErrInvalid},
		{name: "UpstreamTwoDefaults", toml: listenOK + upstreamsOK + "default = true\n" + "[[upstream]]\nname = \"pbx-c\"\naddress = \"127.0.0.4\"\ndefault = true\n" + credOK, key: "upstream[2].default", err: config.ErrDuplicate},

		{name: "UpstreamAcceptFrom", toml: listenOK + up(`address = "127.0.0.2"`+"\naccept_from = [\"203.0.113.0/33\"]") + credOK, key: "upstream[0].accept_from[0]", err: config.ErrInvalid},
		{name: "UpstreamCAFileNotTLS", toml: listenOK + up(`address = "127.0.0.2"`+"\nserver_name = \"pbx\"") + credOK, key: "upstream[0].server_name", err: config.ErrInvalid},
		{name: "UpstreamAddressName", toml: listenOK + up(`address = "pbx..example.com"`) + credOK, key: "upstream[0].address", err: config.ErrInvalid},

		// [dns], failover and [[group]]
		{name: "DNSServerName", toml: baseOK + "[dns]\nservers = [\"dns.example.com\"]\n", key: "dns.servers[0]", err: config.ErrInvalid},
		{name: "DNSServerPortZero", toml: baseOK + "[dns]\nservers = [\"127.0.0.1:0\"]\n", key: "dns.servers[0]", err: config.ErrInvalid},
		{name: "DNSMinTTL", toml: baseOK + "[dns]\nmin_ttl = \"10ms\"\n", key: "dns.min_ttl", err: config.ErrInvalid},
		{name: "DNSMaxBelowMin", toml: baseOK + "[dns]\nmin_ttl = \"1m\"\nmax_ttl = \"30s\"\n", key: "dns.max_ttl", err: config.ErrInvalid},
		{name: "DNSTimeout", toml: baseOK + "[dns]\ntimeout = \"2m\"\n", key: "dns.timeout", err: config.ErrInvalid},
		{name: "DNSTimeoutInteger", toml: baseOK + "[dns]\ntimeout = 2\n", key: "dns.timeout", err: config.ErrInvalid},
		{name: "FailoverTimeout", toml: baseOK + "[proxy]\nfailover_timeout = \"1m\"\n", key: "proxy.failover_timeout", err: config.ErrInvalid},
		{name: "GroupNameMissing", toml: baseOK + "[[group]]\nupstreams = [\"pbx-a\"]\n", key: "group[0].name", err: config.ErrRequired},
		{name: "GroupNameOfUpstream", toml: baseOK + "[[group]]\nname = \"pbx-a\"\nupstreams = [\"pbx-b\"]\n", key: "group[0].name", err: config.ErrDuplicate},
		{name: "GroupNoUpstreams", toml: baseOK + "[[group]]\nname = \"g\"\n", key: "group[0].upstreams", err: config.ErrRequired},
		{name: "GroupUnknownUpstream", toml: baseOK + "[[group]]\nname = \"g\"\nupstreams = [\"pbx-a\", \"pbx-z\"]\n", key: "group[0].upstreams[1]", err: config.ErrInvalid},
		{name: "GroupUpstreamTwice", toml: baseOK + "[[group]]\nname = \"g\"\nupstreams = [\"pbx-a\", \"pbx-a\"]\n", key: "group[0].upstreams[1]", err: config.ErrDuplicate},
		{name: "GroupFailoverOn407", toml: baseOK + "[[group]]\nname = \"g\"\nupstreams = [\"pbx-a\"]\nfailover_on = [503, 407]\n", key: "group[0].failover_on[1]", err: config.ErrInvalid},
		{name: "GroupFailoverOnString", toml: baseOK + "[[group]]\nname = \"g\"\nupstreams = [\"pbx-a\"]\nfailover_on = [\"5xx\"]\n", key: "group[0].failover_on[0]", err: config.ErrInvalid},
		{name: "GroupDomainOfUpstream", toml: baseOK + "[[group]]\nname = \"g\"\nupstreams = [\"pbx-a\"]\ndomains = [\"pbx-a.example.com\"]\n", key: "group[0].domains[0]", err: config.ErrDuplicate},
		{name: "GroupSecondDefault", toml: listenOK + upstreamsOK + "default = true\n" + credOK + "[[group]]\nname = \"g\"\nupstreams = [\"pbx-a\"]\ndefault = true\n", key: "group[0].default", err: config.ErrDuplicate},

		// [[credential]]
		{name: "CredentialUsername", toml: baseOK + cred(`password = "x"`), key: "credential[1].username", err: config.ErrRequired},
		{name: "CredentialUsernameControl", toml: baseOK + cred("username = \"bo\\u0007b\"\npassword = \"x\""), key: "credential[1].username", err: config.ErrInvalid},
		{name: "CredentialNoSecret", toml: baseOK + cred(`username = "bob"`), key: "credential[1]", err: config.ErrRequired},
		{name: "CredentialTwoSecrets", toml: baseOK + cred(`username = "bob"`+"\npassword = \""+secret+"\"\npassword_env = \"BOB\""), env: map[string]string{"BOB": secret}, key: "credential[1]", err: config.ErrInvalid},
		{name: "CredentialEmptyPassword", toml: baseOK + cred(`username = "bob"`+"\npassword = \"\""), key: "credential[1].password", err: config.ErrRequired},
		{name: "CredentialPasswordType", toml: baseOK + cred(`username = "bob"`+"\npassword = [\""+secret+"\"]"), key: "credential[1].password", err: config.ErrInvalid},
		{name: "PasswordEnvUnset", toml: baseOK + cred(`username = "bob"`+"\npassword_env = \"BOB_PASSWORD\""), key: "credential[1].password_env", err: config.ErrRequired},
		{name: "PasswordEnvEmpty", toml: baseOK + cred(`username = "bob"`+"\npassword_env = \"BOB_PASSWORD\""), env: map[string]string{"BOB_PASSWORD": ""}, key: "credential[1].password_env", err: config.ErrRequired},
		{name: "PasswordEnvNoName", toml: baseOK + cred(`username = "bob"`+"\npassword_env = \"\""), key: "credential[1].password_env", err: config.ErrRequired},
		{name: "PasswordFileMissing", toml: baseOK + cred(`username = "bob"`+"\npassword_file = \"nope.txt\""), key: "credential[1].password_file", err: config.ErrInvalid},
		{name: "PasswordFileEmpty", toml: baseOK + cred(`username = "bob"`+"\npassword_file = \"empty.txt\""), setup: writeFile("empty.txt", "\n"), key: "credential[1].password_file", err: config.ErrInvalid},
		{name: "PasswordFileDirectory", toml: baseOK + cred(`username = "bob"`+"\npassword_file = \".\""), key: "credential[1].password_file", err: config.ErrInvalid},
		{name: "HA1Length", toml: baseOK + cred(`username = "bob"`+"\nha1 = \"abc123\""), key: "credential[1].ha1", err: config.ErrInvalid},
		{name: "HA1NotHex", toml: baseOK + cred(`username = "bob"`+"\nha1 = \""+strings.Repeat("g", 32)+"\""), key: "credential[1].ha1", err: config.ErrInvalid},
		{name: "HA1SHA256Length", toml: baseOK + cred(`username = "bob"`+"\nha1_sha256 = \""+strings.Repeat("a", 32)+"\""), key: "credential[1].ha1_sha256", err: config.ErrInvalid},
		{name: "HA1SHA512256NotHex", toml: baseOK + cred(`username = "bob"`+"\nha1_sha512_256 = \""+strings.Repeat("z", 64)+"\""), key: "credential[1].ha1_sha512_256", err: config.ErrInvalid},
		{name: "ServerUnknown", toml: baseOK + cred(`username = "bob"`+"\npassword = \"x\"\nserver = \"pbx-z\""), key: "credential[1].server", err: config.ErrInvalid},
		{name: "ServerWrongPort", toml: baseOK + cred(`username = "bob"`+"\npassword = \"x\"\nserver = \"127.0.0.2:5070\""), key: "credential[1].server", err: config.ErrInvalid},
		{name: "ServerNameIsCaseSensitive", toml: baseOK + cred(`username = "bob"`+"\npassword = \"x\"\nserver = \"PBX-A\""), key: "credential[1].server", err: config.ErrInvalid},
		{name: "CredentialDuplicateScope", toml: baseOK + "[[credential]]\nusername = \"bob\"\npassword = \"x\"\n", key: "credential[1]", err: config.ErrDuplicate},
		{name: "CredentialDuplicateResolvedScope", toml: baseOK +
			"[[credential]]\nusername = \"bob\"\npassword = \"x\"\nserver = \"pbx-a\"\nrealm = \"r\"\n" +
			"[[credential]]\nusername = \"carol\"\npassword = \"y\"\nserver = \"127.0.0.2:5060\"\nrealm = \"r\"\n",
			key: "credential[2]", err: config.ErrDuplicate},

		// unknown keys
		{name: "UnknownUpstreamKey", toml: listenOK + up(`address = "127.0.0.2"`+"\nadress = \"127.0.0.3\"") + credOK, key: "upstream[0].adress", err: config.ErrUnknownKey},
		{name: "UnknownTable", toml: baseOK + "[logging]\nlevel = \"debug\"\n", key: "logging", err: config.ErrUnknownKey},
		{name: "UnknownPluralTable", toml: listenOK + upstreamsOK + "[[credentials]]\nusername = \"bob\"\n", key: "credentials", err: config.ErrUnknownKey},
		{name: "UnknownKeyCase", toml: baseOK + "[log]\nLevel = \"debug\"\n", key: "log.Level", err: config.ErrUnknownKey},
		{name: "UnknownQuotedDottedKey", toml: `"log.level" = "debug"` + "\n" + baseOK, key: `"log.level"`, err: config.ErrUnknownKey},
		{name: "UnknownMisspeltPassword", toml: baseOK + cred(`username = "bob"`+"\npassword = \"x\"\npasword = \""+secret+"\""), key: "credential[1].pasword", err: config.ErrUnknownKey},

		// environment
		{name: "EnvNotInteger", toml: baseOK, env: map[string]string{"AUTHPROXY_PROXY__MAX_CHALLENGES": "many"}, key: "proxy.max_challenges", err: config.ErrInvalid},
		{name: "EnvNotBool", toml: baseOK, env: map[string]string{"AUTHPROXY_LOG__SIP_TRACE": "perhaps"}, key: "log.sip_trace", err: config.ErrInvalid},
		{name: "EnvOutOfRange", toml: baseOK, env: map[string]string{"AUTHPROXY_PROXY__MAX_CHALLENGES": "50"}, key: "proxy.max_challenges", err: config.ErrInvalid},
		{name: "EnvBadLevel", toml: baseOK, env: map[string]string{"AUTHPROXY_LOG__LEVEL": "loud"}, key: "log.level", err: config.ErrInvalid},
	}
}

// TestValidationRules checks each rule alone: exactly one error, at the
// expected key, wrapping the expected sentinel, naming the key, and never
// containing the password.
func TestValidationRules(t *testing.T) {
	for _, tc := range rules() {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			_, err := config.Parse(withClient(tc.toml), env(tc.env), config.WithBaseDir(dir))
			if err == nil {
				t.Fatalf("Parse succeeded, want %v at %s", tc.err, tc.key)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(fmt.Sprintf("%+v %#v", err, err), secret) {
				t.Fatalf("error contains the password: %v", err)
			}
			errs := fieldErrors(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(errs), err)
			}
			fe := errs[0]
			if fe.Key != tc.key {
				t.Errorf("Key = %q, want %q (error: %v)", fe.Key, tc.key, fe)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("error does not wrap %v: %v", tc.err, err)
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Errorf("error %q does not name the key %q", err, tc.key)
			}
			if fe.Rule == "" {
				t.Errorf("error has no rule: %v", fe)
			}
		})
	}
}

func TestAllErrorsAtOnce(t *testing.T) {
	toml := listenOK + upstreamsOK + credOK + `
[log]
level = "loud"

[proxy]
max_challenges = 0

[[credential]]
username = "bob"
password = "x"
server = "pbx-z"
`
	_, err := config.Parse(withClient(toml), env(nil))
	errs := fieldErrors(t, err)
	if len(errs) != 3 {
		t.Fatalf("got %d errors, want 3:\n%v", len(errs), err)
	}
	var keys []string
	for _, fe := range errs {
		keys = append(keys, fe.Key)
	}
	if got, want := strings.Join(keys, " "), "log.level proxy.max_challenges credential[1].server"; got != want {
		t.Errorf("error keys = %q, want %q", got, want)
	}
}

func TestUnknownKeyMessage(t *testing.T) {
	_, err := config.Parse(withClient(listenOK+`
[[upstream]]
name = "pbx-a"
adress = "127.0.0.2"
`), env(nil))
	if !errors.Is(err, config.ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	if got, want := err.Error(), `upstream[0].adress: unknown key (did you mean "address"?)`; !strings.Contains(got, want) {
		t.Errorf("error %q does not contain %q", got, want)
	}
	// The misspelt key leaves the address missing: reported too.
	if !errors.Is(err, config.ErrRequired) {
		t.Errorf("err = %v, want also ErrRequired for upstream[0].address", err)
	}
}

func TestSyntaxError(t *testing.T) {
	_, err := config.Parse(withClient("[log]\nlevel = \"info\n"), env(nil))
	if !errors.Is(err, config.ErrSyntax) {
		t.Fatalf("err = %v, want ErrSyntax", err)
	}
	if !strings.Contains(err.Error(), "line 2") {
		t.Errorf("error %q does not give the line", err)
	}
}

func TestEnvOverrides(t *testing.T) {
	file := baseOK + `
[log]
level = "warn"
format = "text"

[proxy]
max_challenges = 2
shutdown_grace = "1s"
`
	t.Run("Scalars", func(t *testing.T) {
		cfg := mustParse(t, file, env(map[string]string{
			"AUTHPROXY_LOG__LEVEL":             "debug",
			"AUTHPROXY_LOG__FORMAT":            "json",
			"AUTHPROXY_LOG__SIP_TRACE":         "true",
			"AUTHPROXY_PROXY__MAX_CHALLENGES":  "5",
			"AUTHPROXY_PROXY__SHUTDOWN_GRACE":  "250ms",
			"AUTHPROXY_LISTEN__ADDRESS":        "10.0.0.1:5060", // arrays: not addressable
			"AUTHPROXY_CREDENTIAL__PASSWORD":   secret,
			"AUTHPROXY_LOG_LEVEL":              "error", // single underscore: not an override
			"authproxy_log__level":             "error", // names are upper case
			"AUTHPROXY_PROXY__UNKNOWN_SETTING": "1",
		}))
		want := config.Log{Level: slog.LevelDebug, Format: "json", SIPTrace: true}
		if cfg.Log != want {
			t.Errorf("Log = %+v, want %+v", cfg.Log, want)
		}
		if got, want := cfg.Proxy, (config.Proxy{MaxChallenges: 5, ShutdownGrace: 250 * time.Millisecond, TimerC: 210 * time.Second, DialogIdleTimeout: 2 * time.Hour, FailoverTimeout: 4 * time.Second}); got != want {
			t.Errorf("Proxy = %+v, want %+v", got, want)
		}
		if got, want := cfg.Listen[0].Address, "127.0.0.1:5060"; got != want {
			t.Errorf("Listen[0].Address = %q, want %q", got, want)
		}
	})
	t.Run("EmptyIsUnset", func(t *testing.T) {
		cfg := mustParse(t, file, env(map[string]string{"AUTHPROXY_LOG__LEVEL": ""}))
		if got, want := cfg.Log.Level, slog.LevelWarn; got != want {
			t.Errorf("Level = %v, want %v (file value)", got, want)
		}
	})
	t.Run("WrongTypeNamesVariable", func(t *testing.T) {
		_, err := config.Parse(withClient(file), env(map[string]string{"AUTHPROXY_PROXY__MAX_CHALLENGES": "many"}))
		errs := fieldErrors(t, err)
		if len(errs) != 1 {
			t.Fatalf("got %d errors, want 1: %v", len(errs), err)
		}
		if got, want := errs[0].Env, "AUTHPROXY_PROXY__MAX_CHALLENGES"; got != want {
			t.Errorf("Env = %q, want %q", got, want)
		}
		for _, want := range []string{"proxy.max_challenges", "AUTHPROXY_PROXY__MAX_CHALLENGES", `"many"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		}
	})
	t.Run("InvalidValueNamesVariable", func(t *testing.T) {
		_, err := config.Parse(withClient(file), env(map[string]string{"AUTHPROXY_PROXY__SHUTDOWN_GRACE": "soon"}))
		if err == nil || !strings.Contains(err.Error(), "$AUTHPROXY_PROXY__SHUTDOWN_GRACE") {
			t.Errorf("err = %v, want it to name $AUTHPROXY_PROXY__SHUTDOWN_GRACE", err)
		}
	})
	t.Run("OnlyKnownVariablesRead", func(t *testing.T) {
		// Arrays of tables are not env-addressable: Parse asks for the
		// [log] and [proxy] keys and the password_env variables, nothing
		// else.
		var asked []string
		_, err := config.Parse(withClient(listenOK+upstreamsOK+"[[credential]]\nusername = \"a\"\npassword_env = \"A_PW\"\n"),
			config.WithLookupEnv(func(k string) (string, bool) {
				asked = append(asked, k)
				if k == "A_PW" {
					return "pw", true
				}
				return "", false
			}))
		if err != nil {
			t.Fatal(err)
		}
		// Only AUTHPROXY_<TABLE>__<KEY> variables of scalar tables, and the
		// one password_env names.
		for _, k := range asked {
			if k != "A_PW" && (!strings.HasPrefix(k, "AUTHPROXY_") || !strings.Contains(k, "__")) {
				t.Errorf("read variable %q", k)
			}
		}
		if len(asked) == 0 || asked[len(asked)-1] != "A_PW" {
			t.Errorf("variables read = %q, want password_env's A_PW last", asked)
		}
	})
}

const (
	md5HA1    = "0123456789ABCDEF0123456789abcdef"
	sha256HA1 = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF"
)

func TestSecretSources(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"lf.txt":     secret + "\n",
		"crlf.txt":   secret + "\r\n",
		"bare.txt":   secret,
		"twolf.txt":  secret + "\n\n",
		"spaced.txt": " " + secret + " \n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name     string
		fields   string
		password string
		ha1      map[string]string
	}{
		{name: "Inline", fields: `password = "` + secret + `"`, password: secret},
		{name: "Env", fields: `password_env = "ALICE_PW"`, password: secret},
		{name: "FileLF", fields: `password_file = "lf.txt"`, password: secret},
		{name: "FileCRLF", fields: `password_file = "crlf.txt"`, password: secret},
		{name: "FileNoNewline", fields: `password_file = "bare.txt"`, password: secret},
		{name: "FileTrimsOneNewline", fields: `password_file = "twolf.txt"`, password: secret + "\n"},
		{name: "FileKeepsSpaces", fields: `password_file = "spaced.txt"`, password: " " + secret + " "},
		{name: "FileAbsolute", fields: `password_file = '` + filepath.Join(dir, "lf.txt") + `'`, password: secret},
		{name: "HA1", fields: `ha1 = "` + md5HA1 + `"`, ha1: map[string]string{credentials.MD5: strings.ToLower(md5HA1)}},
		{name: "HA1AndSHA256", fields: "ha1 = \"" + md5HA1 + "\"\nha1_sha256 = \"" + sha256HA1 + "\"", ha1: map[string]string{
			credentials.MD5: strings.ToLower(md5HA1), credentials.SHA256: strings.ToLower(sha256HA1)}},
		{name: "SHA512256Alone", fields: `ha1_sha512_256 = "` + sha256HA1 + `"`, ha1: map[string]string{credentials.SHA512256: strings.ToLower(sha256HA1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := mustParse(t, listenOK+upstreamsOK+"[[credential]]\nusername = \"alice\"\nrealm = \"asterisk\"\n"+tc.fields+"\n",
				env(map[string]string{"ALICE_PW": secret}), config.WithBaseDir(dir))
			e := cfg.Credentials[0]
			if got := e.Password.Reveal(); got != tc.password {
				t.Errorf("password = %q, want %q", got, tc.password)
			}
			got := map[string]string{}
			for alg, s := range e.HA1 {
				got[alg] = s.Reveal()
			}
			if len(got) != 0 || len(tc.ha1) != 0 {
				if !reflect.DeepEqual(got, tc.ha1) {
					t.Errorf("HA1 = %v, want %v", got, tc.ha1)
				}
			}
		})
	}
}

func TestPasswordFileErrorWrapsOSError(t *testing.T) {
	_, err := config.Parse(withClient(baseOK+"[[credential]]\nusername = \"bob\"\nrealm = \"r\"\npassword_file = \"missing\"\n"),
		env(nil), config.WithBaseDir(t.TempDir()))
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, config.ErrInvalid) {
		t.Errorf("err = %v, want ErrInvalid and fs.ErrNotExist", err)
	}
}

func TestServerResolution(t *testing.T) {
	ups := `
[[upstream]]
name = "pbx-a"
address = "PBX-A.example.com"

[[upstream]]
name = "pbx-b"
address = "127.0.0.3:5070"
transport = "tcp"

[[upstream]]
name = "v6"
address = "[2001:db8::1]:5080"
`
	for _, tc := range []struct{ server, want string }{
		{"", ""},
		{"pbx-a", "pbx-a.example.com"}, // a domain without port: SRV; its identity is the domain
		{"pbx-b", "127.0.0.3:5070"},
		{"v6", "[2001:db8::1]:5080"},
		{"pbx-a.example.com", "pbx-a.example.com"},
		{"PBX-A.Example.com", "pbx-a.example.com"},
		{"pbx-a.example.com:5060", "pbx-a.example.com"}, // the default port names the same upstream
		{"127.0.0.3", "127.0.0.3"},
		{"127.0.0.3:5070", "127.0.0.3:5070"},
		{"2001:db8::1", "2001:db8::1"},
		{"[2001:db8::1]", "2001:db8::1"},
		{"[2001:DB8::1]:5080", "[2001:db8::1]:5080"},
	} {
		t.Run(tc.server, func(t *testing.T) {
			cfg := mustParse(t, listenOK+ups+"[[credential]]\nusername = \"u\"\npassword = \"p\"\nserver = \""+tc.server+"\"\n")
			if got := cfg.Credentials[0].Server; got != tc.want {
				t.Errorf("Server = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestNoSecretInErrors parses failing configurations that hold the
// password in every place a careless error could pick it up from.
func TestNoSecretInErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, toml := range map[string]string{
		"WrongType":       listenOK + upstreamsOK + "[[credential]]\nusername = \"a\"\npassword = { value = \"" + secret + "\" }\n",
		"ArrayType":       listenOK + upstreamsOK + "[[credential]]\nusername = \"a\"\npassword = [\"" + secret + "\"]\n",
		"IntoHA1":         listenOK + upstreamsOK + "[[credential]]\nusername = \"a\"\nha1 = \"" + secret + "\"\n",
		"IntoSHA256":      listenOK + upstreamsOK + "[[credential]]\nusername = \"a\"\nha1_sha256 = \"" + secret + "\"\n",
		"MisspeltKey":     listenOK + upstreamsOK + "[[credential]]\nusername = \"a\"\npasswd = \"" + secret + "\"\n",
		"UnknownTable":    listenOK + upstreamsOK + "[secrets]\nalice = \"" + secret + "\"\n",
		"TwoSources":      listenOK + upstreamsOK + "[[credential]]\nusername = \"a\"\npassword = \"" + secret + "\"\npassword_file = \"pw\"\n",
		"EnvAndDuplicate": baseOK + "[[credential]]\nusername = \"b\"\npassword_env = \"PW\"\n",
		"FileAndDup":      baseOK + "[[credential]]\nusername = \"b\"\npassword_file = \"pw\"\n",
		"Unterminated":    listenOK + upstreamsOK + "[[credential]]\nusername = \"a\"\npassword = \"" + secret + "\n",
		"BadEscape":       listenOK + upstreamsOK + "[[credential]]\nusername = \"a\"\npassword = \"" + secret + "\\q\"\n",
		"DuplicateKey":    baseOK + "password = \"" + secret + "\"\n",
		"EverythingWrong": "[log]\nlevel = 1\n[[credential]]\npassword = \"" + secret + "\"\nserver = \"nowhere\"\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := config.Parse(withClient(toml), env(map[string]string{"PW": secret}), config.WithBaseDir(dir))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
				if strings.Contains(s, secret) {
					t.Fatalf("error contains the password: %s", s)
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secrets", "alice"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "authproxy.toml")
	write := func(t *testing.T, content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("PasswordFileRelativeToConfig", func(t *testing.T) {
		write(t, string(withClient(listenOK+upstreamsOK+"[[credential]]\nusername = \"alice\"\npassword_file = \"secrets/alice\"\n")))
		t.Chdir(t.TempDir()) // the working directory must not matter
		cfg, err := config.Load(path, env(nil))
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Credentials[0].Password.Reveal(); got != secret {
			t.Errorf("password = %q, want %q", got, secret)
		}
	})
	t.Run("Missing", func(t *testing.T) {
		missing := filepath.Join(dir, "nope.toml")
		_, err := config.Load(missing)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v, want fs.ErrNotExist", err)
		}
		if err == nil || !strings.HasPrefix(err.Error(), "load "+missing+": ") {
			t.Errorf("err = %v, want prefix %q", err, "load "+missing+": ")
		}
	})
	t.Run("Invalid", func(t *testing.T) {
		write(t, baseOK+"[log]\nlevel = \"loud\"\n")
		_, err := config.Load(path, env(nil))
		if !errors.Is(err, config.ErrInvalid) {
			t.Errorf("err = %v, want ErrInvalid", err)
		}
		if err == nil || !strings.HasPrefix(err.Error(), "load "+path+": ") {
			t.Errorf("err = %v, want prefix %q", err, "load "+path+": ")
		}
		var fe *config.FieldError
		if !errors.As(err, &fe) || fe.Key != "log.level" {
			t.Errorf("errors.As FieldError = %+v, want key log.level", fe)
		}
	})
}

// TestParsesAreIndependent guards the "fresh koanf per call" rule: two
// parses share no state, and a later parse cannot change an earlier result.
func TestParsesAreIndependent(t *testing.T) {
	a := mustParse(t, baseOK+"[log]\nlevel = \"debug\"\n")
	b := mustParse(t, baseOK)
	if a.Log.Level != slog.LevelDebug || b.Log.Level != slog.LevelInfo {
		t.Errorf("levels = %v, %v; want debug, info", a.Log.Level, b.Log.Level)
	}
}

// withClient adds a loopback [[client]] group to a test configuration that
// has none, since a configuration without one is an error of its own.
func withClient(toml string) []byte {
	if strings.Contains(toml, "[[client]]") {
		return []byte(toml)
	}
	return []byte(toml + "\n[[client]]\nname = \"local\"\nnetworks = [\"127.0.0.0/8\"]\nupstreams = [\"*\"]\n")
}

// TestClientsAndLimits covers the access-control tables: closed by default,
// every rule names its key, user passwords never appear in errors.
func TestClientsAndLimits(t *testing.T) {
	base := listenOK + upstreamsOK + credOK
	for _, tc := range []struct {
		name, toml, key string
		err             error
	}{
		{"NoClient", base, "client", config.ErrRequired},
		{"NameMissing", base + "[[client]]\nnetworks = [\"127.0.0.0/8\"]\nupstreams = [\"*\"]\n", "client[0].name", config.ErrRequired},
		{"BadNetwork", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/33\"]\nupstreams = [\"*\"]\n", "client[0].networks[0]", config.ErrInvalid},
		{"UnknownUpstream", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"pbx-z\"]\n", "client[0].upstreams[0]", config.ErrInvalid},
		{"NoUpstreams", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\n", "client[0].upstreams", config.ErrRequired},
		{"OpenToAll", base + "[[client]]\nname = \"a\"\nupstreams = [\"*\"]\n", "client[0].networks", config.ErrRequired},
		{"UserNoSecret", base + "[[client]]\nname = \"a\"\nupstreams = [\"*\"]\n[[client.user]]\nusername = \"1001\"\n", "client[0].user[0]", config.ErrRequired},
		{"UserUnknownKey", base + "[[client]]\nname = \"a\"\nupstreams = [\"*\"]\n[[client.user]]\nusername = \"1001\"\npasword = \"" + secret + "\"\n", "client[0].user[0].pasword", config.ErrUnknownKey},
		{"DuplicateName", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"*\"]\n[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"*\"]\n", "client[1].name", config.ErrDuplicate},
		{"NegativeRate", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"*\"]\n[limits]\nrate = -1\n", "limits.rate", config.ErrInvalid},
		{"BadDeny", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"*\"]\n[limits]\ndeny = \"maybe\"\n", "limits.deny", config.ErrInvalid},
		{"NegativeUserAuthFailures", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"*\"]\n[limits]\nuser_auth_failures = -1\n", "limits.user_auth_failures", config.ErrInvalid},
		{"BadUserBlockFor", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"*\"]\n[limits]\nuser_block_for = \"5 minutes\"\n", "limits.user_block_for", config.ErrInvalid},
		{"BadExemptNetwork", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"*\"]\n[limits]\nexempt_networks = [\"10.0.0.0/8\", \"office\"]\n", "limits.exempt_networks[1]", config.ErrInvalid},
		{"ExemptNetworksNotAList", base + "[[client]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"*\"]\n[limits]\nexempt_networks = \"10.0.0.0/8\"\n", "limits.exempt_networks", config.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tc.toml), env(nil))
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("error does not name %s: %v", tc.key, err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error shows a password: %v", err)
			}
		})
	}
	t.Run("Valid", func(t *testing.T) {
		cfg, err := config.Parse([]byte(base+`
[[client]]
name = "office"
networks = ["10.1.0.0/16", "192.0.2.7"]
upstreams = ["pbx-a"]
trusted = true
[[client.user]]
username = "1001"
password = "`+secret+`"
[[client]]
name = "roaming"
upstreams = ["*"]
realm = "roam"
[[client.user]]
username = "1002"
password_env = "PW"
[limits]
rate = 5
deny = "drop"
user_auth_failures = 3
user_block_for = "2m"
exempt_networks = ["203.0.113.10", "198.51.100.0/24"]
`), env(map[string]string{"PW": "x"}))
		if err != nil {
			t.Fatal(err)
		}
		office := cfg.Clients[0]
		if office.Name != "office" || len(office.Networks) != 2 || office.Networks[1].String() != "192.0.2.7/32" || !office.Trusted || office.Users["1001"].Reveal() != secret {
			t.Fatalf("office = %+v", office)
		}
		if cfg.Clients[1].Realm != "roam" || cfg.Clients[1].Users["1002"].Reveal() != "x" {
			t.Fatalf("roaming = %+v", cfg.Clients[1])
		}
		if cfg.Limits.Rate != 5 || !cfg.Limits.Drop || cfg.Limits.Burst != 100 || cfg.Limits.BlockFor != 5*time.Minute {
			t.Fatalf("limits = %+v", cfg.Limits)
		}
		if l := cfg.Limits; l.UserAuthFailures != 3 || l.UserBlockFor != 2*time.Minute || len(l.ExemptNetworks) != 2 ||
			l.ExemptNetworks[0].String() != "203.0.113.10/32" || l.ExemptNetworks[1].String() != "198.51.100.0/24" {
			t.Fatalf("per-user limits and exemptions = %+v", l)
		}
	})
}

// TestTLSKeys covers the TLS keys of listeners and upstreams.
func TestTLSKeys(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"cert.pem", "key.pem", "ca.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("-----BEGIN-----\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("Valid", func(t *testing.T) {
		cfg, err := config.Parse(withClient(`
[[listen]]
transport = "tls"
address = "127.0.0.1:5061"
cert_file = "cert.pem"
key_file = "key.pem"
[[upstream]]
name = "secure"
address = "pbx.example.com"
transport = "tls"
ca_file = "ca.pem"
server_name = "PBX.example.com"
`+credOK), env(nil), config.WithBaseDir(dir))
		if err != nil {
			t.Fatal(err)
		}
		if l := cfg.Listen[0]; l.CertFile != filepath.Join(dir, "cert.pem") || l.KeyFile != filepath.Join(dir, "key.pem") {
			t.Fatalf("listen = %+v", l)
		}
		if u := cfg.Upstreams[0]; u.Address != "pbx.example.com" || u.CAFile != filepath.Join(dir, "ca.pem") || u.ServerName != "pbx.example.com" {
			t.Fatalf("upstream = %+v (a domain without port stays one: SRV, RFC 3263)", u)
		}
	})
	for _, tc := range []struct{ name, toml, key string }{
		{"ListenTLSWithoutCert", "[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:5061\"\nkey_file = \"key.pem\"\n" + upstreamsOK, "listen[0].cert_file"},
		{"ListenMissingKeyFile", "[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:5061\"\ncert_file = \"cert.pem\"\nkey_file = \"nope.pem\"\n" + upstreamsOK, "listen[0].key_file"},
		{"CertOnPlainListener", "[[listen]]\naddress = \"127.0.0.1:5060\"\ncert_file = \"cert.pem\"\n" + upstreamsOK, "listen[0].cert_file"},
		{"CAOnPlainUpstream", listenOK + "[[upstream]]\nname = \"a\"\naddress = \"127.0.0.2\"\nca_file = \"ca.pem\"\n", "upstream[0].ca_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse(withClient(tc.toml+credOK), env(nil), config.WithBaseDir(dir))
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want one naming %s", err, tc.key)
			}
		})
	}
}

// TestRuntime covers the [runtime] table: zero values leave Go's defaults,
// sizes are GOMEMLIMIT's, and a GC turned off needs a memory limit.
func TestRuntime(t *testing.T) {
	base := baseOK
	for _, tc := range []struct {
		name, toml, key string
	}{
		{"NegativeProcs", base + "[runtime]\nmax_procs = -1\n", "runtime.max_procs"},
		{"TooManyProcs", base + "[runtime]\nmax_procs = 5000\n", "runtime.max_procs"},
		{"GCPercentBelowOff", base + "[runtime]\ngc_percent = -2\n", "runtime.gc_percent"},
		{"GCOffWithoutLimit", base + "[runtime]\ngc_percent = -1\n", "runtime.gc_percent"},
		{"BadSize", base + "[runtime]\nmemory_limit = \"48MB\"\n", "runtime.memory_limit"},
		{"TooSmall", base + "[runtime]\nmemory_limit = \"1MiB\"\n", "runtime.memory_limit"},
		{"NoNumber", base + "[runtime]\nmemory_limit = \"MiB\"\n", "runtime.memory_limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse(withClient(tc.toml), env(nil))
			if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want ErrInvalid naming %s", err, tc.key)
			}
		})
	}
	for _, tc := range []struct {
		name, toml string
		env        map[string]string
		want       config.Runtime
	}{
		{"Defaults", base, nil, config.Runtime{}},
		{"Set", base + "[runtime]\nmax_procs = 1\ngc_percent = 400\nmemory_limit = \"48MiB\"\n", nil, config.Runtime{MaxProcs: 1, GCPercent: 400, MemoryLimit: 48 << 20}},
		{"OffWithLimit", base + "[runtime]\ngc_percent = -1\nmemory_limit = \"1GiB\"\n", nil, config.Runtime{GCPercent: -1, MemoryLimit: 1 << 30}},
		{"Bytes", base + "[runtime]\nmemory_limit = \"67108864\"\n", nil, config.Runtime{MemoryLimit: 64 << 20}},
		{"Env", base, map[string]string{"AUTHPROXY_RUNTIME__MAX_PROCS": "1", "AUTHPROXY_RUNTIME__MEMORY_LIMIT": "64MiB"}, config.Runtime{MaxProcs: 1, MemoryLimit: 64 << 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse(withClient(tc.toml), env(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Runtime != tc.want {
				t.Fatalf("runtime = %+v, want %+v", cfg.Runtime, tc.want)
			}
		})
	}
}

// TestNamesGroupsAndDNS: upstream addresses by name (a domain without port
// stays bare: SRV), accept_from, transport "auto", [[group]] with its
// default failover statuses, and the [dns] table.
func TestNamesGroupsAndDNS(t *testing.T) {
	cfg := mustParse(t, listenOK+`
[[upstream]]
name = "carrier-a"
address = "Carrier-A.example.net"
accept_from = ["203.0.113.0/24", "198.51.100.7"]

[[upstream]]
name = "carrier-b"
address = "sip.carrier-b.example.net:5080"
transport = "AUTO"

[[upstream]]
name = "v6"
address = "2001:db8::1"

[[group]]
name = "carriers"
upstreams = ["carrier-a", "carrier-b"]
domains = ["PSTN.example.com"]
default = true

[[group]]
name = "strict"
upstreams = ["carrier-b"]
failover_on = [503, 603]

[dns]
servers = ["127.0.0.1:5353", "192.0.2.53", "::1"]
min_ttl = "5s"
max_ttl = "10m"
timeout = "1s"

[proxy]
failover_timeout = "2s"

[[credential]]
username = "a"
password = "x"
server = "carrier-a.example.net:5060"
`)
	a, b, v6 := cfg.Upstreams[0], cfg.Upstreams[1], cfg.Upstreams[2]
	if a.Address != "carrier-a.example.net" || b.Address != "sip.carrier-b.example.net:5080" || b.Transport != "auto" || v6.Address != "[2001:db8::1]:5060" {
		t.Errorf("addresses %q %q (%s) %q", a.Address, b.Address, b.Transport, v6.Address)
	}
	if got := fmt.Sprint(a.AcceptFrom); got != "[203.0.113.0/24 198.51.100.7/32]" {
		t.Errorf("accept_from = %s", got)
	}
	if got := cfg.Credentials[0].Server; got != "carrier-a.example.net" {
		t.Errorf("credential server %q, want the bare domain the upstream is", got)
	}
	g := cfg.Groups[0]
	if g.Name != "carriers" || fmt.Sprint(g.Upstreams) != "[carrier-a carrier-b]" || fmt.Sprint(g.Domains) != "[pstn.example.com]" ||
		!g.Default || fmt.Sprint(g.FailoverOn) != "[408 500 502 503 504]" {
		t.Errorf("group %+v", g)
	}
	if got := fmt.Sprint(cfg.Groups[1].FailoverOn); got != "[503 603]" {
		t.Errorf("strict failover_on %s", got)
	}
	want := config.DNS{Servers: []string{"127.0.0.1:5353", "192.0.2.53:53", "[::1]:53"}, MinTTL: 5 * time.Second, MaxTTL: 10 * time.Minute, Timeout: time.Second}
	if fmt.Sprint(cfg.DNS) != fmt.Sprint(want) {
		t.Errorf("DNS = %+v, want %+v", cfg.DNS, want)
	}
	if cfg.Proxy.FailoverTimeout != 2*time.Second {
		t.Errorf("failover_timeout %v", cfg.Proxy.FailoverTimeout)
	}
	def := mustParse(t, baseOK)
	if want := (config.DNS{MinTTL: 10 * time.Second, MaxTTL: time.Hour, Timeout: 2 * time.Second}); fmt.Sprint(def.DNS) != fmt.Sprint(want) {
		t.Errorf("default DNS = %+v, want %+v", def.DNS, want)
	}
}
