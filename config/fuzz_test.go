package config_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/config"
	"github.com/pelletier/go-toml/v2"
)

// fuzzSecret is the password the fuzz seeds carry, inline, through
// password_env (FUZZ_PW) and through password_file ("pw").
const fuzzSecret = "fuzz-SECRET-7f3a9c"

// FuzzParse asserts that Parse never panics, that a successful parse
// honours the validation invariants, and that no error ever shows the
// password, wherever it came from. The check is skipped when the input
// also uses the secret text outside a secret (as a key, a server name, a
// domain...), where showing it is legitimate.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile(filepath.Join("..", "config.example.toml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add(bytes.ReplaceAll(example, []byte("alice-example-password"), []byte(fuzzSecret)))
	withCred := func(fields string) []byte {
		return []byte(listenOK + upstreamsOK + "[[credential]]\nusername = \"a\"\n" + fields + "\n")
	}
	for _, seed := range [][]byte{
		withCred(`password = "` + fuzzSecret + `"`),
		withCred(`password_env = "FUZZ_PW"` + "\nserver = \"nowhere\""),
		withCred(`password_file = "pw"` + "\nrealm = 1"),
		withCred(`ha1 = "` + fuzzSecret + `"`),
		withCred(`password = ["` + fuzzSecret + `"]`),
		withCred(`pasword = "` + fuzzSecret + `"`),
		withCred(`password = "` + fuzzSecret + `"` + "\npassword_env = \"FUZZ_PW\""),
		withCred(`password = "` + fuzzSecret), // unterminated
		[]byte("[listen]\naddress = 1\n[[upstream]]\nadress = \"x\"\ndefault = \"yes\"\n"),
		[]byte("\"log.level\" = \"debug\"\n[proxy]\nmax_challenges = 3.5\nshutdown_grace = 5\n"),
		[]byte("[[listen]]\naddress = \":0\"\n[[upstream]]\nname = \"a\"\naddress = \"[::1]\"\ndomains = [\"a\", \"A\"]\n"),
		[]byte(""),
	} {
		f.Add(seed)
	}

	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte(fuzzSecret+"\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	opts := []config.Option{env(map[string]string{"FUZZ_PW": fuzzSecret}), config.WithBaseDir(dir)}

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse(data, opts...)
		if err == nil {
			checkInvariants(t, cfg)
			return
		}
		if !errors.Is(err, config.ErrSyntax) {
			fieldErrors(t, err) // every joined error is a *FieldError
		}
		if secretShownLegitimately(data) {
			return
		}
		if msg := err.Error(); strings.Contains(msg, fuzzSecret) {
			t.Fatalf("error shows the password:\n%s", msg)
		}
	})
}

func checkInvariants(t *testing.T, cfg *config.Config) {
	t.Helper()
	_ = cfg.Summary()
	_ = cfg.Warnings()
	if len(cfg.Listen) == 0 || len(cfg.Upstreams) == 0 {
		t.Fatalf("valid config without listeners or upstreams: %+v", cfg)
	}
	if n := cfg.Proxy.MaxChallenges; n < 1 || n > 10 {
		t.Fatalf("MaxChallenges = %d", n)
	}
	defaults := 0
	for _, u := range cfg.Upstreams {
		if u.Default {
			defaults++
		}
	}
	if defaults > 1 {
		t.Fatalf("%d default upstreams", defaults)
	}
	for i, e := range cfg.Credentials {
		if e.Username == "" || e.Password.IsZero() == (len(e.HA1) == 0) {
			t.Fatalf("credential %d: username %q, password set %v, %d HA1s", i, e.Username, !e.Password.IsZero(), len(e.HA1))
		}
	}
}

// secretShownLegitimately reports whether fuzzSecret appears in data
// somewhere other than as (part of) a password or HA1 value: as a key, or
// in a value an error may quote. For input that is not TOML it is
// conservative: only occurrences written exactly as a password value
// count as secret.
func secretShownLegitimately(data []byte) bool {
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		all := bytes.Count(data, []byte(fuzzSecret))
		asPassword := bytes.Count(data, []byte(`password = "`+fuzzSecret))
		return all != asPassword
	}
	return shownIn(doc, false)
}

func shownIn(v any, underSecret bool) bool {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if strings.Contains(k, fuzzSecret) {
				return true
			}
			if shownIn(val, underSecret || k == "password" || strings.HasPrefix(k, "ha1")) {
				return true
			}
		}
	case []any:
		for _, val := range x {
			if shownIn(val, underSecret) {
				return true
			}
		}
	case string:
		return !underSecret && strings.Contains(x, fuzzSecret)
	}
	return false
}
