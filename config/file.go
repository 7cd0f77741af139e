package config

import (
	"reflect"
)

// The file* types mirror the TOML schema one to one. Their koanf tags are
// the schema: checkKeys and the environment overrides derive the allowed
// keys from them, so a new key needs only a new field (and validation).
//
// Durations are decoded as strings and parsed in validation, rather than
// through mapstructure's duration hook: with that hook a TOML integer
// (shutdown_grace = 5) silently became 5ns. Secret sources are pointers so
// that `password = ""` (present, empty) differs from an absent key.
type fileConfig struct {
	Log        fileLog          `koanf:"log"`
	Proxy      fileProxy        `koanf:"proxy"`
	Admin      fileAdmin        `koanf:"admin"`
	Health     fileHealth       `koanf:"health"`
	DNS        fileDNS          `koanf:"dns"`
	Reload     fileReload       `koanf:"reload"`
	Listen     []fileListen     `koanf:"listen"`
	Upstream   []fileUpstream   `koanf:"upstream"`
	Group      []fileGroup      `koanf:"group"`
	Credential []fileCredential `koanf:"credential"`
	Client     []fileClient     `koanf:"client"`
	Limits     fileLimits       `koanf:"limits"`
	TCP        fileTCP          `koanf:"tcp"`
	WebSocket  fileWebSocket    `koanf:"websocket"`
	Runtime    fileRuntime      `koanf:"runtime"`
	State      fileState        `koanf:"state"`
	Capture    fileCapture      `koanf:"capture"`
	// Registration lists the trunk registrations authproxy keeps up.
	Registration []fileRegistration `koanf:"registration"`
}

// fileDNS is the [dns] table: how upstream names are resolved.
type fileDNS struct {
	Servers []string `koanf:"servers"`
	MinTTL  string   `koanf:"min_ttl"`
	MaxTTL  string   `koanf:"max_ttl"`
	Timeout string   `koanf:"timeout"`
}

// fileGroup is one [[group]]: an ordered list of upstreams routed to as
// one, failing over from each to the next.
type fileGroup struct {
	Name       string   `koanf:"name"`
	Upstreams  []string `koanf:"upstreams"`
	Domains    []string `koanf:"domains"`
	Default    bool     `koanf:"default"`
	FailoverOn []int    `koanf:"failover_on"`
}

type fileRegistration struct {
	Upstream    string `koanf:"upstream"`
	AOR         string `koanf:"aor"`
	ContactUser string `koanf:"contact_user"`
	Expires     int    `koanf:"expires"` // seconds, as in SIP
	Target      string `koanf:"target"`
}

type fileClient struct {
	Name      string           `koanf:"name"`
	Networks  []string         `koanf:"networks"`
	Upstreams []string         `koanf:"upstreams"`
	Trusted   bool             `koanf:"trusted"`
	Realm     string           `koanf:"realm"`
	User      []fileClientUser `koanf:"user"`
}

type fileClientUser struct {
	Username     string  `koanf:"username"`
	Password     *string `koanf:"password"`
	PasswordEnv  *string `koanf:"password_env"`
	PasswordFile *string `koanf:"password_file"`
}

type fileLimits struct {
	Rate         int    `koanf:"rate"`
	Burst        int    `koanf:"burst"`
	MaxPerSource int    `koanf:"max_per_source"`
	MaxTotal     int    `koanf:"max_total"`
	AuthFailures int    `koanf:"auth_failures"`
	BlockFor     string `koanf:"block_for"`
	MaxSources   int    `koanf:"max_sources"`
	Deny         string `koanf:"deny"`

	UserAuthFailures int      `koanf:"user_auth_failures"`
	UserBlockFor     string   `koanf:"user_block_for"`
	ExemptNetworks   []string `koanf:"exempt_networks"`
	Shared           bool     `koanf:"shared"`
}

type fileTCP struct {
	MaxConnections          int    `koanf:"max_connections"`
	MaxConnectionsPerSource int    `koanf:"max_connections_per_source"`
	IdleTimeout             string `koanf:"idle_timeout"`
	MessageTimeout          string `koanf:"message_timeout"`
	HandshakeTimeout        string `koanf:"handshake_timeout"`
	MaxMessageSize          int    `koanf:"max_message_size"`
}

type fileWebSocket struct {
	MaxConnections          int    `koanf:"max_connections"`
	MaxConnectionsPerSource int    `koanf:"max_connections_per_source"`
	HandshakeTimeout        string `koanf:"handshake_timeout"`
	IdleTimeout             string `koanf:"idle_timeout"`
	PingInterval            string `koanf:"ping_interval"`
	MaxMessageSize          int    `koanf:"max_message_size"`
}

// fileState is the [state] table: where bindings, REGISTER CSeq offsets
// and trunk registrations' state are kept (docs/state.md).
type fileState struct {
	Backend   string         `koanf:"backend"`
	Dir       string         `koanf:"dir"`
	Instance  string         `koanf:"instance"`
	Lease     string         `koanf:"lease"`
	Readiness bool           `koanf:"readiness"`
	Redis     fileStateRedis `koanf:"redis"`
}

type fileStateRedis struct {
	Address      string  `koanf:"address"`
	Username     string  `koanf:"username"`
	Password     *string `koanf:"password"`
	PasswordEnv  *string `koanf:"password_env"`
	PasswordFile *string `koanf:"password_file"`
	DB           int     `koanf:"db"`
	TLS          bool    `koanf:"tls"`
	CAFile       string  `koanf:"ca_file"`
	ServerName   string  `koanf:"server_name"`
	Prefix       string  `koanf:"prefix"`
	Timeout      string  `koanf:"timeout"`
}

type fileRuntime struct {
	MaxProcs    int    `koanf:"max_procs"`
	GCPercent   int    `koanf:"gc_percent"`
	MemoryLimit string `koanf:"memory_limit"`
}

type fileLog struct {
	Level    string `koanf:"level"`
	Format   string `koanf:"format"`
	SIPTrace bool   `koanf:"sip_trace"`
}

type fileProxy struct {
	MaxChallenges     int    `koanf:"max_challenges"`
	ShutdownGrace     string `koanf:"shutdown_grace"`
	TimerC            string `koanf:"timer_c"`
	DialogIdleTimeout string `koanf:"dialog_idle_timeout"`
	FailoverTimeout   string `koanf:"failover_timeout"`
}

type fileCapture struct {
	HEP     string `koanf:"hep"`
	Redact  bool   `koanf:"redact"`
	AgentID int64  `koanf:"agent_id"`
	AuthKey string `koanf:"auth_key"`
}

type fileAdmin struct {
	Address string `koanf:"address"`
	Pprof   bool   `koanf:"pprof"`
}

type fileHealth struct {
	OptionsInterval string `koanf:"options_interval"`
	DownAfter       int    `koanf:"down_after"`
	UpAfter         int    `koanf:"up_after"`
}

type fileReload struct {
	Watch bool `koanf:"watch"`
}

type fileListen struct {
	Transport string `koanf:"transport"`
	Address   string `koanf:"address"`
	Advertise string `koanf:"advertise"`
	CertFile  string `koanf:"cert_file"`
	KeyFile   string `koanf:"key_file"`
	// ws and wss only.
	Path            string   `koanf:"path"`
	Origins         []string `koanf:"origins"`
	TokenSecretEnv  *string  `koanf:"token_secret_env"`
	TokenSecretFile *string  `koanf:"token_secret_file"`
}

type fileUpstream struct {
	Name       string   `koanf:"name"`
	Address    string   `koanf:"address"`
	Transport  string   `koanf:"transport"`
	Domains    []string `koanf:"domains"`
	Default    bool     `koanf:"default"`
	CAFile     string   `koanf:"ca_file"`
	ServerName string   `koanf:"server_name"`
	Preemptive string   `koanf:"preemptive"`
	// RegisterMode: "path" (default) or "contact".
	RegisterMode string   `koanf:"register_mode"`
	AcceptFrom   []string `koanf:"accept_from"`
}

type fileCredential struct {
	Username     string  `koanf:"username"`
	Password     *string `koanf:"password"`
	PasswordEnv  *string `koanf:"password_env"`
	PasswordFile *string `koanf:"password_file"`
	HA1          *string `koanf:"ha1"`
	HA1SHA256    *string `koanf:"ha1_sha256"`
	HA1SHA512256 *string `koanf:"ha1_sha512_256"`
	Server       string  `koanf:"server"`
	Realm        string  `koanf:"realm"`
	User         string  `koanf:"user"`
}

// fileConfigType is the schema root for checkKeys and envKeys. It is a
// constant in all but name (never written).
var fileConfigType = reflect.TypeFor[fileConfig]()

// isSecretKey reports whether a key's value must never be shown in an
// error.
func isSecretKey(name string) bool {
	switch name {
	case "password", "ha1", "ha1_sha256", "ha1_sha512_256", "auth_key":
		return true
	}
	return false
}

// isDurationKey reports whether a key holds a duration string.
func isDurationKey(name string) bool {
	switch name {
	case "shutdown_grace", "options_interval", "timer_c", "dialog_idle_timeout", "failover_timeout",
		"min_ttl", "max_ttl", "timeout", "block_for", "user_block_for", "idle_timeout", "message_timeout", "handshake_timeout",
		"lease":
		return true
	}
	return false
}

// defaultsTOML is the first layer. Per-element defaults of the arrays of
// tables (transport "udp", upstream port 5060) are applied in validation:
// koanf merges arrays as a whole, so it cannot default inside them.
const defaultsTOML = `
[log]
level = "info"
format = "auto"
sip_trace = false

[proxy]
max_challenges = 3
shutdown_grace = "5s"
timer_c = "3m30s"
dialog_idle_timeout = "2h"
failover_timeout = "4s"

[dns]
servers = []
min_ttl = "10s"
max_ttl = "1h"
timeout = "2s"

[admin]
address = ""
pprof = false

[capture]
hep = ""
redact = true
agent_id = 0
auth_key = ""

[health]
options_interval = "30s"
down_after = 3
up_after = 2

[reload]
watch = false

[limits]
rate = 50
burst = 100
max_per_source = 200
max_total = 10000
auth_failures = 5
block_for = "5m"
max_sources = 100000
deny = "reject"
user_auth_failures = 5
user_block_for = "5m"
exempt_networks = []
shared = false

[tcp]
max_connections = 10000
max_connections_per_source = 500
idle_timeout = "1h"
message_timeout = "10s"
handshake_timeout = "10s"
max_message_size = 65535

[websocket]
max_connections = 10000
max_connections_per_source = 500
handshake_timeout = "10s"
idle_timeout = "2m"
ping_interval = "30s"
max_message_size = 32768

[runtime]
max_procs = 0
gc_percent = 0
memory_limit = ""

[state]
backend = "file"
dir = "state"
instance = ""
lease = "15s"
readiness = false

[state.redis]
address = ""
username = ""
db = 0
tls = false
ca_file = ""
server_name = ""
prefix = "authproxy:"
timeout = "500ms"
`
