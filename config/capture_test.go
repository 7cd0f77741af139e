package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/config"
)

// TestCapture covers the [capture] table: its defaults, values and
// environment overrides, and errors that name the key, the value and the
// rule (the auth key's value never shown).
func TestCapture(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		env        map[string]string
		want       config.Capture
	}{
		{"Defaults", baseOK, nil, config.Capture{Redact: true}},
		{
			"Set", baseOK + "[capture]\nhep = \"udp:Homer.example.net:9061\"\nredact = false\nagent_id = 4294967295\nauth_key = \"myHep\"\n", nil,
			config.Capture{HEP: "homer.example.net:9061", AgentID: 4294967295, AuthKey: "myHep"},
		},
		{"DefaultPort", baseOK + "[capture]\nhep = \"udp:127.0.0.1\"\n", nil, config.Capture{HEP: "127.0.0.1:9060", Redact: true}},
		{"IPv6", baseOK + "[capture]\nhep = \"udp:[::1]:9060\"\n", nil, config.Capture{HEP: "[::1]:9060", Redact: true}},
		{
			"Env", baseOK, map[string]string{"AUTHPROXY_CAPTURE__HEP": "udp:10.0.0.9:9060", "AUTHPROXY_CAPTURE__REDACT": "false"},
			config.Capture{HEP: "10.0.0.9:9060"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse(withClient(tc.toml), env(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Capture != tc.want {
				t.Fatalf("capture = %+v, want %+v", cfg.Capture, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"NoScheme", `hep = "127.0.0.1:9060"`, `capture.hep = "127.0.0.1:9060": must be "udp:host:port" (HEP over UDP), or "" for no capture`},
		{"TCPScheme", `hep = "tcp:127.0.0.1:9060"`, `capture.hep = "tcp:127.0.0.1:9060": must be "udp:host:port"`},
		{"BadPort", `hep = "udp:127.0.0.1:0"`, `capture.hep = "udp:127.0.0.1:0": port "0" must be a number from 1 to 65535`},
		{"BadHost", `hep = "udp:ho st:9060"`, `capture.hep = "udp:ho st:9060": host "ho st" is not a hostname or IP address`},
		{"Unspecified", `hep = "udp:0.0.0.0:9060"`, `capture.hep = "udp:0.0.0.0:9060": host must be the receiver's address`},
		{"AgentIDNegative", `agent_id = -1`, `capture.agent_id = -1: must be between 0 and 4294967295`},
		{"AgentIDTooLarge", `agent_id = 4294967296`, `capture.agent_id = 4294967296: must be between 0 and 4294967295`},
		{"AuthKeyControl", "auth_key = \"se\\u0001cret\"", `capture.auth_key = [redacted]: must be at most 128 bytes without control characters`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse(withClient(baseOK+"[capture]\n"+tc.toml+"\n"), env(nil))
			if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalid with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "cret") {
				t.Fatalf("err shows the auth key: %v", err)
			}
		})
	}
	_, err := config.Parse(withClient(baseOK+"[capture]\nheps = \"udp:127.0.0.1\"\n"), env(nil))
	if !errors.Is(err, config.ErrUnknownKey) || !strings.Contains(err.Error(), "capture.heps") {
		t.Fatalf("err = %v, want ErrUnknownKey naming capture.heps", err)
	}
}
