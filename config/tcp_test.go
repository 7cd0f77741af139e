package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

// TestTCP covers the [tcp] table: its defaults, values and environment
// overrides, and errors that name the key, the value and the rule.
func TestTCP(t *testing.T) {
	defaults := config.TCP{
		MaxConnections: 10000, MaxConnectionsPerSource: 500, IdleTimeout: time.Hour,
		MessageTimeout: 10 * time.Second, HandshakeTimeout: 10 * time.Second, MaxMessageSize: 65535,
	}
	for _, tc := range []struct {
		name, toml string
		env        map[string]string
		want       config.TCP
	}{
		{"Defaults", baseOK, nil, defaults},
		{
			"Set", baseOK + "[tcp]\nmax_connections = 20000\nmax_connections_per_source = 50\nidle_timeout = \"2m\"\n" +
				"message_timeout = \"30s\"\nhandshake_timeout = \"5s\"\nmax_message_size = 8192\n", nil,
			config.TCP{MaxConnections: 20000, MaxConnectionsPerSource: 50, IdleTimeout: 2 * time.Minute,
				MessageTimeout: 30 * time.Second, HandshakeTimeout: 5 * time.Second, MaxMessageSize: 8192},
		},
		{
			"Off", baseOK + "[tcp]\nmax_connections = 0\nmax_connections_per_source = 0\nidle_timeout = \"0s\"\n" +
				"message_timeout = \"0s\"\nhandshake_timeout = \"0s\"\n", nil,
			config.TCP{MaxMessageSize: 65535},
		},
		{
			"Env", baseOK, map[string]string{"AUTHPROXY_TCP__MAX_CONNECTIONS": "300", "AUTHPROXY_TCP__IDLE_TIMEOUT": "15m"},
			func() config.TCP { d := defaults; d.MaxConnections, d.IdleTimeout = 300, 15*time.Minute; return d }(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse(withClient(tc.toml), env(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.TCP != tc.want {
				t.Fatalf("tcp = %+v, want %+v", cfg.TCP, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"NegativeConnections", "max_connections = -1", `tcp.max_connections = -1: must not be negative (0 turns the limit off)`},
		{"NegativePerSource", "max_connections_per_source = -5", `tcp.max_connections_per_source = -5: must not be negative`},
		{"IdleTooShort", `idle_timeout = "10ms"`, `tcp.idle_timeout = "10ms": must be a duration of at least 1s such as "30s", or "0s" for none`},
		{"MessageNotADuration", `message_timeout = "ten"`, `tcp.message_timeout = "ten": must be a duration`},
		{"HandshakeNegative", `handshake_timeout = "-1s"`, `tcp.handshake_timeout = "-1s": must be a duration`},
		{"HandshakeInteger", `handshake_timeout = 10`, `tcp.handshake_timeout = 10: must be a duration string such as "5s", not an integer`},
		{"MessageSizeTooLarge", "max_message_size = 100000", `tcp.max_message_size = 100000: must be between 4096 and 65535 bytes`},
		{"MessageSizeTooSmall", "max_message_size = 512", `tcp.max_message_size = 512: must be between 4096 and 65535 bytes`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse(withClient(baseOK+"[tcp]\n"+tc.toml+"\n"), env(nil))
			if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalid with %q", err, tc.want)
			}
		})
	}
}
