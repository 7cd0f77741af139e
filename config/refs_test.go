package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/config"
)

// TestCrossReferences covers what no single key shows: each row is a
// configuration every value of which is valid, and that is either fine
// (key "") or fails at the key named, with the sentinel and a rule that
// says what would happen at run time.
func TestCrossReferences(t *testing.T) {
	const ups = listenOK + upstreamsOK
	reg := func(body string) string {
		return "[[registration]]\nupstream = \"pbx-a\"\naor = \"sip:trunk1@pbx-a.example.com\"\n" + body + "\n"
	}
	cred := func(body string) string {
		return "[[credential]]\nusername = \"u\"\npassword = \"" + secret + "\"\n" + body + "\n"
	}
	for _, tc := range []struct {
		name, toml string
		key        string // "" for no error
		err        error
		rule       string // in the message
	}{
		{"RegistrationWildcardCredential", ups + cred("") + reg(""), "", nil, ""},
		{"RegistrationByName", ups + cred(`server = "pbx-a"`) + reg(""), "", nil, ""},
		{"RegistrationByHost", ups + cred(`server = "127.0.0.2"`) + reg(""), "", nil, ""},
		{"RegistrationByUser", ups + cred("server = \"pbx-a\"\nuser = \"trunk1\"") + reg(""), "", nil, ""},
		{"RegistrationWithoutCredential", ups + cred(`server = "pbx-b"`) + reg(""),
			"registration[0]", config.ErrRequired, "would register as anonymous"},
		{"RegistrationOtherUser", ups + cred("server = \"pbx-a\"\nuser = \"1001\"") + reg(""),
			"registration[0]", config.ErrRequired, `user "trunk1" or none`},
		{"TargetIsUpstreamName", ups + cred("") + reg(`target = "pbx-b"`),
			"registration[0].target", config.ErrInvalid, `name of upstream "pbx-b"`},
		{"TargetURIHostIsUpstreamName", ups + cred("") + reg(`target = "sip:1001@pbx-b:5060;transport=tcp"`),
			"registration[0].target", config.ErrInvalid, `resolved in DNS, not sent to "127.0.0.3:5060"`},
		{"TargetAddress", ups + cred("") + reg(`target = "10.0.0.5:5060"`), "", nil, ""},
		{"TargetNameIsItsOwnHost", listenOK + "[[upstream]]\nname = \"asterisk\"\naddress = \"asterisk:5060\"\n" + cred("") +
			"[[registration]]\nupstream = \"asterisk\"\naor = \"sip:t@asterisk\"\ntarget = \"asterisk\"\n", "", nil, ""},
		{"UpstreamAddressIsAnotherName", listenOK + upstreamsOK + "[[upstream]]\nname = \"c\"\naddress = \"pbx-b\"\n" + cred(""),
			"upstream[2].address", config.ErrInvalid, `name of upstream "pbx-b"`},
		{"UpstreamAddressIsGroupName", listenOK + upstreamsOK + "[[upstream]]\nname = \"c\"\naddress = \"pstn\"\n" + cred("") +
			"[[group]]\nname = \"pstn\"\nupstreams = [\"pbx-a\", \"pbx-b\"]\n", "upstream[2].address", config.ErrInvalid, `name of group "pstn"`},
		{"ClientUpstreamIsGroupName", listenOK + upstreamsOK + cred("") + "[[group]]\nname = \"pstn\"\nupstreams = [\"pbx-a\", \"pbx-b\"]\n" +
			"[[client]]\nname = \"lan\"\nnetworks = [\"10.0.0.0/8\"]\nupstreams = [\"pstn\"]\n", "client[0].upstreams[0]", config.ErrInvalid,
			`is a [[group]]'s name: list the group's upstreams (pbx-a, pbx-b) instead`},
		{"HA1WithRealm", ups + "[[credential]]\nusername = \"u\"\nrealm = \"asterisk\"\nha1 = \"" + md5HA1 + "\"\n", "", nil, ""},
		{"HA1WithoutRealm", ups + "[[credential]]\nusername = \"u\"\nha1 = \"" + md5HA1 + "\"\n",
			"credential[0].realm", config.ErrRequired, "RFC 7616 §3.4.2"},
		{"SHA256HA1WithoutRealm", ups + "[[credential]]\nusername = \"u\"\nha1_sha256 = \"" + sha256HA1 + "\"\n",
			"credential[0].realm", config.ErrRequired, "one realm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse(withClient(tc.toml), env(nil))
			if tc.key == "" {
				if err != nil {
					t.Fatalf("err = %v, want none", err)
				}
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			errs := fieldErrors(t, err)
			if len(errs) != 1 || errs[0].Key != tc.key || !strings.Contains(errs[0].Error(), tc.rule) {
				t.Fatalf("errors %v, want one at %s saying %q", err, tc.key, tc.rule)
			}
		})
	}
}

// TestUnknownEnvironmentOverrides: a mistyped override is an error naming
// the variable (and the closest valid one), as a mistyped key is; other
// AUTHPROXY_ variables (a password_env's, tools' settings) are not.
func TestUnknownEnvironmentOverrides(t *testing.T) {
	file := baseOK + "[[credential]]\nusername = \"b\"\nserver = \"pbx-b\"\npassword_env = \"AUTHPROXY_PBX_B_PASSWORD\"\n"
	for _, tc := range []struct {
		name    string
		environ []string
		want    []string // each error's text, in order
	}{
		{"None", []string{"PATH=/bin", "AUTHPROXY_LOG__LEVEL=debug", "AUTHPROXY_PBX_B_PASSWORD=pw"}, nil},
		{"Misspelt", []string{"AUTHPROXY_LOG__LEVL=debug", "AUTHPROXY_PBX_B_PASSWORD=pw"},
			[]string{"log.levl (from $AUTHPROXY_LOG__LEVL): unknown environment override (did you mean $AUTHPROXY_LOG__LEVEL?)"}},
		{"SingleUnderscore", []string{"AUTHPROXY_LOG_LEVEL=debug", "AUTHPROXY_PBX_B_PASSWORD=pw"},
			[]string{"log_level (from $AUTHPROXY_LOG_LEVEL): unknown environment override (did you mean $AUTHPROXY_LOG__LEVEL?)"}},
		{"ArrayOfTables", []string{"AUTHPROXY_UPSTREAM__ADDRESS=10.0.0.1", "AUTHPROXY_PBX_B_PASSWORD=pw"},
			[]string{"upstream.address (from $AUTHPROXY_UPSTREAM__ADDRESS): unknown environment override (only the scalar keys"}},
		{"EmptyIsUnset", []string{"AUTHPROXY_LOG__LEVL=", "AUTHPROXY_PBX_B_PASSWORD=pw"}, nil},
		{"OtherTools", []string{"AUTHPROXY_BENCH=1", "AUTHPROXY_BENCH_PATHS=udp", "AUTHPROXY_PBX_B_PASSWORD=pw"}, nil},
		// What Kubernetes puts in every pod of a namespace with a Service
		// named authproxy.
		{"KubernetesServiceLinks", []string{"AUTHPROXY_SERVICE_HOST=10.0.0.9", "AUTHPROXY_SERVICE_PORT=5060", "AUTHPROXY_SERVICE_PORT_SIP=5060",
			"AUTHPROXY_PORT=udp://10.0.0.9:5060", "AUTHPROXY_PORT_5060_UDP=udp://10.0.0.9:5060", "AUTHPROXY_PORT_5060_UDP_PROTO=udp",
			"AUTHPROXY_PORT_5060_UDP_PORT=5060", "AUTHPROXY_PORT_5060_UDP_ADDR=10.0.0.9", "AUTHPROXY_PORT_9060_TCP_ADDR=10.0.0.9",
			"AUTHPROXY_PBX_B_PASSWORD=pw"}, nil},
		{"Several", []string{"AUTHPROXY_PROXY__MAX_CHALENGES=2", "AUTHPROXY_ADMIN__ADRESS=:9060", "AUTHPROXY_PBX_B_PASSWORD=pw"},
			[]string{"admin.adress (from $AUTHPROXY_ADMIN__ADRESS)", "proxy.max_chalenges (from $AUTHPROXY_PROXY__MAX_CHALENGES)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse(withClient(file), config.WithEnviron(tc.environ))
			errs := fieldErrors(t, err)
			if len(errs) != len(tc.want) {
				t.Fatalf("errors %v, want %d", err, len(tc.want))
			}
			for i, fe := range errs {
				if !errors.Is(fe, config.ErrUnknownKey) || !strings.HasPrefix(fe.Error(), tc.want[i]) {
					t.Errorf("error %d = %q, want ErrUnknownKey starting %q", i, fe, tc.want[i])
				}
			}
		})
	}
}

// TestSkipSecrets: with SkipSecrets the secrets outside the file need not
// exist (CI has none), and everything else is still validated.
func TestSkipSecrets(t *testing.T) {
	dir := t.TempDir()
	const tlsListen = "[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:5061\"\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n"
	for _, tc := range []struct {
		name, toml string
		key        string // the error with SkipSecrets; "" for none
		without    string // the error without it
	}{
		{"PasswordEnvUnset", baseOK + "[[credential]]\nusername = \"b\"\nserver = \"pbx-b\"\npassword_env = \"NOT_SET_ANYWHERE\"\n", "", "credential[1].password_env"},
		{"PasswordFileMissing", baseOK + "[[credential]]\nusername = \"b\"\nserver = \"pbx-b\"\npassword_file = \"missing.txt\"\n", "", "credential[1].password_file"},
		{"ClientUserPasswordEnvUnset", baseOK + "[[client]]\nname = \"u\"\nupstreams = [\"*\"]\n[[client.user]]\nusername = \"1001\"\npassword_env = \"NOT_SET_ANYWHERE\"\n", "", "client[0].user[0].password_env"},
		{"KeyFileMissingCertFileChecked", tlsListen + upstreamsOK + credOK, "listen[0].cert_file", "listen[0].key_file"},
		{"EmptyPasswordEnvStillWrong", baseOK + "[[credential]]\nusername = \"b\"\nserver = \"pbx-b\"\npassword_env = \"\"\n", "credential[1].password_env", "credential[1].password_env"},
		{"StructureStillChecked", baseOK + "[[credential]]\nusername = \"b\"\nserver = \"pbx-z\"\npassword_env = \"NOT_SET_ANYWHERE\"\n", "credential[1].server", "credential[1].server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse(withClient(tc.toml), env(nil), config.WithBaseDir(dir), config.SkipSecrets())
			switch {
			case tc.key == "" && err != nil:
				t.Fatalf("SkipSecrets: err = %v, want none", err)
			case tc.key == "":
				for _, c := range cfg.Credentials {
					if c.Password.IsZero() && len(c.HA1) == 0 {
						t.Errorf("credential %q has no placeholder secret", c.Username)
					}
				}
			case err == nil || !strings.Contains(err.Error(), tc.key):
				t.Fatalf("SkipSecrets: err = %v, want one at %s", err, tc.key)
			}
			_, err = config.Parse(withClient(tc.toml), env(nil), config.WithBaseDir(dir))
			if err == nil || !strings.Contains(err.Error(), tc.without) {
				t.Fatalf("without SkipSecrets: err = %v, want one at %s", err, tc.without)
			}
		})
	}
}
