package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

// TestWebSocketListen covers "ws" and "wss" listeners and the [websocket]
// table: defaults, values, and errors that name the key, the value and the
// rule; a token secret never appears in an error.
func TestWebSocketListen(t *testing.T) {
	const tokenSecret = "Tk-distinctive-SECRET-0123456789"
	wsListen := "[[listen]]\ntransport = \"ws\"\naddress = \"127.0.0.1:8080\"\n"
	cfg, err := config.Parse(withClient(baseOK+wsListen+
		"path = \"/sip\"\norigins = [\"https://App.Example.com\", \"http://localhost:3000\"]\ntoken_secret_env = \"WS_SECRET\"\n"),
		env(map[string]string{"WS_SECRET": tokenSecret}))
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Listen[1]
	if l.Transport != "ws" || l.Path != "/sip" || !reflect.DeepEqual(l.Origins, []string{"https://app.example.com", "http://localhost:3000"}) ||
		l.TokenSecret.Reveal() != tokenSecret {
		t.Fatalf("listen[1] = %+v", l)
	}
	if want := (config.WebSocket{MaxConnections: 10000, MaxConnectionsPerSource: 500, HandshakeTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, PingInterval: 30 * time.Second, MaxMessageSize: 32768}); cfg.WebSocket != want {
		t.Fatalf("websocket = %+v, want %+v", cfg.WebSocket, want)
	}
	if cfg := mustParse(t, string(withClient(baseOK+wsListen))); cfg.Listen[1].Path != "/" || !cfg.Listen[1].TokenSecret.IsZero() {
		t.Fatalf("defaults: %+v", cfg.Listen[1])
	}
	envCfg, err := config.Parse(withClient(baseOK+wsListen), env(map[string]string{
		"AUTHPROXY_WEBSOCKET__PING_INTERVAL": "45s", "AUTHPROXY_WEBSOCKET__MAX_CONNECTIONS_PER_SOURCE": "20"}))
	if err != nil || envCfg.WebSocket.PingInterval != 45*time.Second || envCfg.WebSocket.MaxConnectionsPerSource != 20 {
		t.Fatalf("environment overrides: %+v, %v", envCfg.WebSocket, err)
	}

	dir := t.TempDir()
	secretFile := filepath.Join(dir, "ws.secret")
	if err := os.WriteFile(secretFile, []byte(tokenSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := config.Parse(withClient(baseOK+wsListen+"token_secret_file = \""+secretFile+"\"\n"), env(nil)); err != nil || cfg.Listen[1].TokenSecret.Reveal() != tokenSecret {
		t.Fatalf("token_secret_file: %v", err)
	}

	for _, tc := range []struct {
		name, toml, want string
	}{
		{"Transport", "[[listen]]\ntransport = \"http\"\naddress = \"127.0.0.1:80\"\n", `listen[1].transport = "http": must be "udp", "tcp", "tls", "ws" or "wss"`},
		{"PathOnUDP", "[[listen]]\naddress = \"127.0.0.1:5070\"\npath = \"/sip\"\n", `listen[1].path = "/sip": applies only to transport = "ws" or "wss"`},
		{"OriginsOnTCP", "[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:5070\"\norigins = [\"https://a.example\"]\n", `listen[1].origins = "https://a.example": applies only`},
		{"RelativePath", wsListen + "path = \"sip\"\n", `listen[1].path = "sip": must be an absolute URL path`},
		{"PathWithQuery", wsListen + "path = \"/sip?x=1\"\n", `listen[1].path = "/sip?x=1": must be an absolute URL path`},
		{"OriginWithPath", wsListen + "origins = [\"https://app.example.com/page\"]\n", `listen[1].origins[0] = "https://app.example.com/page": must be a web origin`},
		{"OriginNoScheme", wsListen + "origins = [\"app.example.com\"]\n", `listen[1].origins[0] = "app.example.com": must be a web origin`},
		{"WSSWithoutCert", "[[listen]]\ntransport = \"wss\"\naddress = \"127.0.0.1:8443\"\n", `listen[1].cert_file`},
		{"CertOnWS", wsListen + "cert_file = \"c.pem\"\n", `listen[1].cert_file = "c.pem": applies only to transport = "tls" or "wss"`},
		{"TwoSecretSources", wsListen + "token_secret_env = \"WS_SECRET\"\ntoken_secret_file = \"x\"\n", `sets more than one secret source`},
		{"SecretEnvUnset", wsListen + "token_secret_env = \"NOPE\"\n", `listen[1].token_secret_env = "NOPE": environment variable is not set or empty`},
		{"SecretTooShort", wsListen + "token_secret_env = \"SHORT\"\n", `listen[1].token_secret = [redacted]: must be at least 16 bytes`},
		{"IdleNotAfterPing", wsListen + "[websocket]\nidle_timeout = \"30s\"\nping_interval = \"30s\"\n", `websocket.idle_timeout = "30s": must be longer than ping_interval`},
		{"HandshakeOff", wsListen + "[websocket]\nhandshake_timeout = \"0s\"\n", `websocket.handshake_timeout = "0s": must not be 0`},
		{"MessageSize", wsListen + "[websocket]\nmax_message_size = 65535\n", `websocket.max_message_size = 65535: must be between 4096 and 32768 bytes`},
		{"NegativeCaps", wsListen + "[websocket]\nmax_connections = -1\n", `websocket.max_connections = -1: must not be negative`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse(withClient(baseOK+tc.toml), env(map[string]string{"WS_SECRET": tokenSecret, "SHORT": "short-" + "x"}))
			if err == nil || !(errors.Is(err, config.ErrInvalid) || errors.Is(err, config.ErrRequired)) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), tokenSecret) || strings.Contains(err.Error(), "short-x") {
				t.Fatal("a token secret appears in an error")
			}
		})
	}
}
