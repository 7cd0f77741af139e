package config

import (
	"reflect"
	"strings"
	"testing"
)

// TestEnvKeys pins the environment variable names the documentation and
// config.example.toml promise.
func TestEnvKeys(t *testing.T) {
	got := map[string]string{}
	for _, k := range envKeys() {
		got[k.name] = k.key
	}
	want := map[string]string{
		"AUTHPROXY_LOG__LEVEL":            "log.level",
		"AUTHPROXY_LOG__FORMAT":           "log.format",
		"AUTHPROXY_LOG__SIP_TRACE":        "log.sip_trace",
		"AUTHPROXY_PROXY__MAX_CHALLENGES": "proxy.max_challenges",
		"AUTHPROXY_PROXY__SHUTDOWN_GRACE": "proxy.shutdown_grace",
		"AUTHPROXY_LIMITS__RATE":          "limits.rate",
		"AUTHPROXY_LIMITS__DENY":          "limits.deny",
	}
	for name, key := range want {
		if got[name] != key {
			t.Errorf("envKeys()[%s] = %q, want %q", name, got[name], key)
		}
	}
	// Every variable follows the documented AUTHPROXY_<TABLE>__<KEY> rule.
	for name, key := range got {
		if w := "AUTHPROXY_" + strings.ToUpper(strings.Replace(key, ".", "__", 1)); name != w {
			t.Errorf("variable %s for %s, want %s", name, key, w)
		}
	}
}

// TestDefaultsLoad guards the defaults layer, whose failure Parse treats
// as a bug.
func TestDefaultsLoad(t *testing.T) {
	v := &validator{opts: options{lookupEnv: func(string) (string, bool) { return "", false }}, bad: map[string]bool{}}
	raw, err := v.load(nil)
	if err != nil {
		t.Fatal(err)
	}
	var fc fileConfig
	v.checkKeys("", raw, fileConfigType)
	v.decode(raw, &fc)
	if len(v.errs) != 0 {
		t.Fatalf("defaults do not decode cleanly: %v", v.errs)
	}
	if want := (fileLog{Level: "info", Format: "auto"}); fc.Log != want {
		t.Errorf("log defaults = %+v, want %+v", fc.Log, want)
	}
	if want := (fileProxy{MaxChallenges: 3, ShutdownGrace: "5s", TimerC: "3m30s", DialogIdleTimeout: "2h", FailoverTimeout: "4s"}); fc.Proxy != want {
		t.Errorf("proxy defaults = %+v, want %+v", fc.Proxy, want)
	}
	want := fileLimits{Rate: 50, Burst: 100, MaxPerSource: 200, MaxTotal: 10000, AuthFailures: 5, BlockFor: "5m", MaxSources: 100000, Deny: "reject",
		UserAuthFailures: 5, UserBlockFor: "5m", ExemptNetworks: []string{}}
	if !reflect.DeepEqual(fc.Limits, want) {
		t.Errorf("limits defaults = %+v, want %+v", fc.Limits, want)
	}
}

func TestSchemaType(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want reflect.Type
	}{
		{"log.level", reflect.TypeFor[string]()},
		{"proxy.max_challenges", reflect.TypeFor[int]()},
		{"listen", reflect.TypeFor[[]fileListen]()},
		{"listen[3]", reflect.TypeFor[fileListen]()},
		{"upstream[1].domains[0]", reflect.TypeFor[string]()},
		{"credential[0].password", reflect.TypeFor[*string]()},
		{"credential[0].nope", nil},
		{"log[0]", nil},
	} {
		if got := schemaType(tc.key); got != tc.want {
			t.Errorf("schemaType(%q) = %v, want %v", tc.key, got, tc.want)
		}
	}
}

func TestLookupPath(t *testing.T) {
	raw := map[string]any{
		"upstream": []any{
			map[string]any{"name": "a"},
			map[string]any{"domains": []any{"x", int64(1)}},
		},
	}
	for _, tc := range []struct {
		key  string
		want any
	}{
		{"upstream[0].name", "a"},
		{"upstream[1].domains[1]", int64(1)},
		{"upstream[2].name", nil},
		{"upstream[x]", nil},
		{"nope.deeper", nil},
	} {
		if got := lookupPath(raw, tc.key); got != tc.want {
			t.Errorf("lookupPath(%q) = %v, want %v", tc.key, got, tc.want)
		}
	}
}

func TestSuggest(t *testing.T) {
	fields := map[string]reflect.StructField{"address": {}, "advertise": {}, "transport": {}}
	for _, tc := range []struct{ name, want string }{
		{"adress", ` (did you mean "address"?)`},
		{"transprot", ` (did you mean "transport"?)`},
		{"colour", ""},
		{"a.b", ` (a quoted key cannot contain "."; use a [table] header or a bare dotted key)`},
	} {
		if got := suggest(tc.name, fields); got != tc.want {
			t.Errorf("suggest(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}
