package config_test

import (
	"errors"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

// TestOpsDefaults: without [admin], [health] and [reload] there is no
// admin listener and no file watching, and upstreams are pinged every 30s.
func TestOpsDefaults(t *testing.T) {
	cfg := mustParse(t, baseOK)
	if got, want := cfg.Admin, (config.Admin{}); got != want {
		t.Errorf("Admin = %+v, want %+v", got, want)
	}
	if got, want := cfg.Health, (config.Health{OptionsInterval: 30 * time.Second, DownAfter: 3, UpAfter: 2}); got != want {
		t.Errorf("Health = %+v, want %+v", got, want)
	}
	if got, want := cfg.Reload, (config.Reload{}); got != want {
		t.Errorf("Reload = %+v, want %+v", got, want)
	}
}

func TestOpsKeys(t *testing.T) {
	cfg := mustParse(t, baseOK+`
[admin]
address = "LOCALHOST:9060"

[health]
options_interval = "15s"
down_after = 4
up_after = 1

[reload]
watch = true
`)
	if got, want := cfg.Admin.Address, "localhost:9060"; got != want {
		t.Errorf("Admin.Address = %q, want %q", got, want)
	}
	if got, want := cfg.Health, (config.Health{OptionsInterval: 15 * time.Second, DownAfter: 4, UpAfter: 1}); got != want {
		t.Errorf("Health = %+v, want %+v", got, want)
	}
	if !cfg.Reload.Watch {
		t.Error("Reload.Watch = false, want true")
	}

	t.Run("EnvOverride", func(t *testing.T) {
		cfg := mustParse(t, baseOK, env(map[string]string{
			"AUTHPROXY_ADMIN__ADDRESS":           "0.0.0.0:9060",
			"AUTHPROXY_HEALTH__OPTIONS_INTERVAL": "2s",
			"AUTHPROXY_RELOAD__WATCH":            "true",
		}))
		if cfg.Admin.Address != "0.0.0.0:9060" || cfg.Health.OptionsInterval != 2*time.Second || !cfg.Reload.Watch {
			t.Errorf("overrides not applied: %+v %+v %+v", cfg.Admin, cfg.Health, cfg.Reload)
		}
	})
}

func TestOpsValidation(t *testing.T) {
	for _, tc := range []struct {
		name, toml, key string
		err             error
	}{
		{"AdminNoPort", "[admin]\naddress = \"127.0.0.1\"\n", "admin.address", config.ErrInvalid},
		{"AdminBadHost", "[admin]\naddress = \"bad host:9060\"\n", "admin.address", config.ErrInvalid},
		{"AdminNotString", "[admin]\naddress = 9060\n", "admin.address", config.ErrInvalid},
		{"IntervalBad", "[health]\noptions_interval = \"often\"\n", "health.options_interval", config.ErrInvalid},
		{"IntervalInteger", "[health]\noptions_interval = 10\n", "health.options_interval", config.ErrInvalid},
		{"IntervalNegative", "[health]\noptions_interval = \"-1s\"\n", "health.options_interval", config.ErrInvalid},
		{"IntervalTooShort", "[health]\noptions_interval = \"10ms\"\n", "health.options_interval", config.ErrInvalid},
		{"DownAfterZero", "[health]\ndown_after = 0\n", "health.down_after", config.ErrInvalid},
		{"UpAfterHuge", "[health]\nup_after = 1000\n", "health.up_after", config.ErrInvalid},
		{"WatchNotBool", "[reload]\nwatch = \"yes\"\n", "reload.watch", config.ErrInvalid},
		{"ReloadUnknown", "[reload]\nwatcher = true\n", "reload.watcher", config.ErrUnknownKey},
		{"AdminUnknown", "[admin]\nadress = \"127.0.0.1:9060\"\n", "admin.adress", config.ErrUnknownKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse(withClient(baseOK+tc.toml), env(nil))
			errs := fieldErrors(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1: %v", len(errs), err)
			}
			if errs[0].Key != tc.key || !errors.Is(errs[0], tc.err) {
				t.Fatalf("error %q (key %q), want %v at %q", errs[0], errs[0].Key, tc.err, tc.key)
			}
		})
	}
}
