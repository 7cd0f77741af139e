package config

import "testing"

// TestOpsDefaultsLoad pins the defaults of the operations tables
// ([admin], [health], [reload]) as the defaults layer decodes them.
func TestOpsDefaultsLoad(t *testing.T) {
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
	if want := (fileAdmin{}); fc.Admin != want {
		t.Errorf("admin defaults = %+v, want %+v", fc.Admin, want)
	}
	if want := (fileHealth{OptionsInterval: "30s", DownAfter: 3, UpAfter: 2}); fc.Health != want {
		t.Errorf("health defaults = %+v, want %+v", fc.Health, want)
	}
	if want := (fileReload{}); fc.Reload != want {
		t.Errorf("reload defaults = %+v, want %+v", fc.Reload, want)
	}
}

// TestOpsEnvKeys pins the environment variables of the operations keys.
func TestOpsEnvKeys(t *testing.T) {
	got := map[string]string{}
	for _, k := range envKeys() {
		got[k.name] = k.key
	}
	for name, key := range map[string]string{
		"AUTHPROXY_ADMIN__ADDRESS":           "admin.address",
		"AUTHPROXY_HEALTH__OPTIONS_INTERVAL": "health.options_interval",
		"AUTHPROXY_HEALTH__DOWN_AFTER":       "health.down_after",
		"AUTHPROXY_HEALTH__UP_AFTER":         "health.up_after",
		"AUTHPROXY_RELOAD__WATCH":            "reload.watch",
	} {
		if got[name] != key {
			t.Errorf("envKeys()[%s] = %q, want %q", name, got[name], key)
		}
	}
}
