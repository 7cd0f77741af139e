package config_test

import (
	"errors"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

func TestRegistrations(t *testing.T) {
	reg := func(body string) string { return baseOK + "[[registration]]\n" + body + "\n" }
	t.Run("Parsed", func(t *testing.T) {
		cfg := mustParse(t, reg(`upstream = "pbx-a"
aor = "sip:trunk1@pbx-a.example.com"
contact_user = "t1"
expires = 600
target = "sip:1001@10.0.0.5:5062;transport=tcp"`)+"[[registration]]\nupstream = \"pbx-b\"\naor = \"sip:2000@pbx-b\"\ntarget = \"10.0.0.6:5060\"\n")
		want := []config.Registration{
			{Upstream: "pbx-a", AOR: "sip:trunk1@pbx-a.example.com", ContactUser: "t1", Expires: 600 * time.Second, Target: "sip:1001@10.0.0.5:5062;transport=tcp"},
			{Upstream: "pbx-b", AOR: "sip:2000@pbx-b", Expires: 3600 * time.Second, Target: "10.0.0.6:5060"},
		}
		if len(cfg.Registrations) != 2 || cfg.Registrations[0] != want[0] || cfg.Registrations[1] != want[1] {
			t.Fatalf("Registrations = %+v, want %+v", cfg.Registrations, want)
		}
	})
	for _, tc := range []struct {
		name, toml, key string
		err             error
	}{
		{"UnknownUpstream", reg(`upstream = "pbx-z"` + "\naor = \"sip:a@b\""), "registration[0].upstream", config.ErrInvalid},
		{"BadAOR", reg(`upstream = "pbx-a"` + "\naor = \"trunk1@pbx\""), "registration[0].aor", config.ErrInvalid},
		{"BadExpires", reg(`upstream = "pbx-a"` + "\naor = \"sip:a@b\"\nexpires = -5"), "registration[0].expires", config.ErrInvalid},
		{"BadTarget", reg(`upstream = "pbx-a"` + "\naor = \"sip:a@b\"\ntarget = \"no port here:x\""), "registration[0].target", config.ErrInvalid},
		{"BadContactUser", reg(`upstream = "pbx-a"` + "\naor = \"sip:a@b\"\ncontact_user = \"a@b\""), "registration[0].contact_user", config.ErrInvalid},
		{"Duplicate", reg(`upstream = "pbx-a"`+"\naor = \"sip:a@b\"") + "[[registration]]\nupstream = \"pbx-a\"\naor = \"sip:a@b\"\n", "registration[1].aor", config.ErrDuplicate},
		{"UnknownKey", reg(`upstream = "pbx-a"` + "\naor = \"sip:a@b\"\nexpire = 60"), "registration[0].expire", config.ErrUnknownKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse(withClient(tc.toml), env(nil))
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			errs := fieldErrors(t, err)
			if len(errs) != 1 || errs[0].Key != tc.key {
				t.Fatalf("errors %v, want one at %s", err, tc.key)
			}
		})
	}
}
