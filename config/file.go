package config

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
	gotoml "github.com/pelletier/go-toml/v2"
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
	Reload     fileReload       `koanf:"reload"`
	Listen     []fileListen     `koanf:"listen"`
	Upstream   []fileUpstream   `koanf:"upstream"`
	Credential []fileCredential `koanf:"credential"`
	Client     []fileClient     `koanf:"client"`
	Limits     fileLimits       `koanf:"limits"`
	TCP        fileTCP          `koanf:"tcp"`
	Runtime    fileRuntime      `koanf:"runtime"`
	// Registration lists the trunk registrations authproxy keeps up.
	Registration []fileRegistration `koanf:"registration"`
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
}

type fileTCP struct {
	MaxConnections          int    `koanf:"max_connections"`
	MaxConnectionsPerSource int    `koanf:"max_connections_per_source"`
	IdleTimeout             string `koanf:"idle_timeout"`
	MessageTimeout          string `koanf:"message_timeout"`
	HandshakeTimeout        string `koanf:"handshake_timeout"`
	MaxMessageSize          int    `koanf:"max_message_size"`
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
	RegisterMode string `koanf:"register_mode"`
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
	case "password", "ha1", "ha1_sha256", "ha1_sha512_256":
		return true
	}
	return false
}

// isDurationKey reports whether a key holds a duration string.
func isDurationKey(name string) bool {
	switch name {
	case "shutdown_grace", "options_interval", "idle_timeout", "message_timeout", "handshake_timeout":
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

[admin]
address = ""
pprof = false

[health]
options_interval = "0s"
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

[tcp]
max_connections = 10000
max_connections_per_source = 500
idle_timeout = "1h"
message_timeout = "10s"
handshake_timeout = "10s"
max_message_size = 65535

[runtime]
max_procs = 0
gc_percent = 0
memory_limit = ""
`

// envPrefix starts every environment override.
const envPrefix = "AUTHPROXY_"

// envKey is one environment-addressable key.
type envKey struct {
	key  string       // "proxy.max_challenges"
	name string       // "AUTHPROXY_PROXY__MAX_CHALLENGES"
	kind reflect.Kind // of the file field: String, Int or Bool
}

// envKeys lists the scalar keys of the schema's top-level tables. Arrays of
// tables are left out on purpose: an element has no name to address it by.
func envKeys() []envKey {
	var out []envKey
	for i := range fileConfigType.NumField() {
		table := fileConfigType.Field(i)
		if table.Type.Kind() != reflect.Struct {
			continue
		}
		tname := table.Tag.Get("koanf")
		for j := range table.Type.NumField() {
			f := table.Type.Field(j)
			switch f.Type.Kind() {
			case reflect.String, reflect.Int, reflect.Bool:
			default:
				continue
			}
			fname := f.Tag.Get("koanf")
			out = append(out, envKey{
				key:  tname + "." + fname,
				name: envPrefix + strings.ToUpper(tname) + "__" + strings.ToUpper(fname),
				kind: f.Type.Kind(),
			})
		}
	}
	return out
}

// load merges defaults, data and the environment with a fresh koanf
// instance and returns the raw map. Only a TOML syntax error is returned;
// environment problems are recorded in v.errs.
func (v *validator) load(data []byte) (map[string]any, error) {
	k := koanf.New(".")
	if err := k.Load(rawbytes.Provider([]byte(defaultsTOML)), toml.Parser()); err != nil {
		return nil, fmt.Errorf("defaults: %w", err) // a bug, pinned by tests
	}
	if err := k.Load(rawbytes.Provider(data), toml.Parser()); err != nil {
		return nil, syntaxError(err)
	}

	// The env provider enumerates variables, but Parse is given a lookup
	// function, so offer it exactly the variables the schema knows.
	keys := envKeys()
	byName := make(map[string]envKey, len(keys))
	var environ []string
	for _, ek := range keys {
		if val, ok := v.opts.lookupEnv(ek.name); ok && val != "" {
			byName[ek.name] = ek
			environ = append(environ, ek.name+"="+val)
		}
	}
	v.env = make(map[string]string, len(byName))
	err := k.Load(env.Provider(".", env.Opt{
		Prefix:      envPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, val string) (string, any) {
			ek := byName[name]
			typed, err := envValue(ek.kind, val)
			if err != nil {
				v.errs = append(v.errs, &FieldError{
					Key: ek.key, Env: name, Value: strconv.Quote(val), Rule: err.Error(), Err: ErrInvalid,
				})
				return "", nil // keep the file's (or default) value
			}
			v.env[ek.key] = name
			return ek.key, typed
		},
	}), nil)
	if err != nil {
		return nil, fmt.Errorf("environment: %w", err) // the env provider's Read cannot fail
	}
	return k.Raw(), nil
}

// envValue converts an environment string to the type TOML would have
// produced, so that decoding needs no weak typing (which would also let
// the file say max_challenges = "3" or sip_trace = 1).
func envValue(kind reflect.Kind, s string) (any, error) {
	switch kind {
	case reflect.Int:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, errors.New("must be an integer")
		}
		return n, nil
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return nil, errors.New("must be true or false")
		}
		return b, nil
	}
	return s, nil
}

// syntaxError wraps a TOML parse error with ErrSyntax and, when go-toml
// knows it, the position. go-toml's messages name keys and single
// characters, never a whole value, so no secret can leak through them.
func syntaxError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "toml: ")
	var de *gotoml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return fmt.Errorf("%w: line %d, column %d: %s", ErrSyntax, row, col, msg)
	}
	return fmt.Errorf("%w: %s", ErrSyntax, msg)
}

// checkKeys reports every key of m (at path) that t has no field for, and
// deletes it from m so that decoding does not report it a second time. It
// recurses into tables and arrays of tables. Values of unknown keys are not
// shown: a misspelt "pasword" still holds a password.
func (v *validator) checkKeys(path string, m map[string]any, t reflect.Type) {
	fields := map[string]reflect.StructField{}
	for i := range t.NumField() {
		f := t.Field(i)
		fields[f.Tag.Get("koanf")] = f
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		key := joinKey(path, name)
		f, ok := fields[name]
		if !ok {
			v.add(key, "", "unknown key"+suggest(name, fields), ErrUnknownKey, nil)
			delete(m, name)
			continue
		}
		switch ft := f.Type; {
		case ft.Kind() == reflect.Struct:
			if sub, ok := m[name].(map[string]any); ok {
				v.checkKeys(key, sub, ft)
			}
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			switch val := m[name].(type) {
			case []any:
				for i, e := range val {
					if sub, ok := e.(map[string]any); ok {
						v.checkKeys(fmt.Sprintf("%s[%d]", key, i), sub, ft.Elem())
					}
				}
			case []map[string]any:
				for i, sub := range val {
					v.checkKeys(fmt.Sprintf("%s[%d]", key, i), sub, ft.Elem())
				}
			case map[string]any:
				// The commonest TOML slip: [listen] instead of [[listen]].
				v.add(key, "", fmt.Sprintf("must be an array of tables: write [[%s]], not [%s]", name, name), ErrInvalid, nil)
				v.bad[key] = true
				delete(m, name)
			}
		}
	}
}

// suggest returns a "did you mean" hint for an unknown key, or "".
func suggest(name string, fields map[string]reflect.StructField) string {
	if strings.Contains(name, ".") {
		return ` (a quoted key cannot contain "."; use a [table] header or a bare dotted key)`
	}
	best, bestDist := "", 3 // at most two edits away
	for known := range fields {
		if d := editDistance(name, known); d < bestDist || d == bestDist && known < best {
			best, bestDist = known, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// joinKey appends a key to a path, quoting it when it is not a plain
// identifier so that odd keys ("a.b", "", control characters) read
// unambiguously.
func joinKey(path, name string) string {
	if !plainKey(name) {
		name = strconv.Quote(name)
	}
	if path == "" {
		return name
	}
	return path + "." + name
}

func plainKey(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// decode fills fc from raw, which checkKeys has already stripped of unknown
// keys. Passing our own DecoderConfig replaces koanf's default (weakly
// typed, with duration and TextUnmarshaler hooks): the schema needs none of
// those hooks (see fileConfig), and weak typing would accept "3" for an
// integer. ErrorUnused stays on as a safety net behind checkKeys. Every
// type error becomes a *FieldError, and its key is marked bad so that
// validation does not report the zero value left behind a second time.
func (v *validator) decode(raw map[string]any, fc *fileConfig) {
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		TagName:     "koanf",
		ErrorUnused: true,
		// TOML keys are case-sensitive; mapstructure's default EqualFold
		// would let "Address" and "address" both land in one field.
		MatchName:  func(mapKey, fieldName string) bool { return mapKey == fieldName },
		DecodeHook: rejectFloatToInt,
		Result:     fc,
	})
	if err != nil {
		v.add("", "", "decoder setup", ErrInvalid, err) // a bug, pinned by tests
		return
	}
	for _, leaf := range errorLeaves(dec.Decode(raw)) {
		var de *mapstructure.DecodeError
		if !errors.As(leaf, &de) {
			v.add("", "", "cannot decode", ErrInvalid, leaf)
			continue
		}
		key := de.Name()
		val := lookupPath(raw, key)
		v.add(key, showValue(key, val), typeRule(key, val, de.Unwrap()), ErrInvalid, nil)
		v.bad[key] = true
	}
}

// rejectFloatToInt stops mapstructure from truncating a TOML float into an
// int field (max_challenges = 3.7 would silently become 3).
func rejectFloatToInt(from, to reflect.Type, data any) (any, error) {
	if to.Kind() == reflect.Int && (from.Kind() == reflect.Float64 || from.Kind() == reflect.Float32) {
		return nil, errors.New("must be an integer, not a float")
	}
	return data, nil
}

// errorLeaves flattens mapstructure's tree of joined and wrapped errors into
// its *DecodeError leaves.
func errorLeaves(err error) []error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*mapstructure.DecodeError); ok {
		return []error{err}
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		var out []error
		for _, e := range u.Unwrap() {
			out = append(out, errorLeaves(e)...)
		}
		return out
	case interface{ Unwrap() error }:
		if inner := u.Unwrap(); inner != nil {
			return errorLeaves(inner)
		}
	}
	return []error{err}
}

// typeRule says what a key should hold, in TOML terms, from the schema
// rather than from mapstructure's wording: "must be an integer, not a
// string".
func typeRule(key string, raw any, err error) string {
	want := schemaType(key)
	if want == nil {
		if err == nil {
			return "cannot decode"
		}
		return err.Error()
	}
	name := tomlTypeName(want)
	if isDurationKey(lastSegment(key)) {
		name = `a duration string such as "5s"`
	}
	return "must be " + name + ", not " + tomlValueName(raw)
}

// schemaType returns the file type a key path such as
// "upstream[1].domains[0]" decodes into, or nil.
func schemaType(key string) reflect.Type {
	t := fileConfigType
	for part := range strings.SplitSeq(key, ".") {
		name, _, _ := strings.Cut(part, "[")
		if t.Kind() != reflect.Struct {
			return nil
		}
		var found bool
		for i := range t.NumField() {
			if f := t.Field(i); f.Tag.Get("koanf") == name {
				t, found = f.Type, true
				break
			}
		}
		if !found {
			return nil
		}
		for range strings.Count(part, "[") { // one element type per index
			if t.Kind() != reflect.Slice {
				return nil
			}
			t = t.Elem()
		}
	}
	return t
}

func tomlTypeName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int64:
		return "an integer"
	case reflect.Bool:
		return "true or false"
	case reflect.Struct:
		return "a table"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Struct {
			return "an array of tables"
		}
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(tomlTypeName(t.Elem()), "a "), "an ") + "s"
	}
	return t.String()
}

func tomlValueName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64, int:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case nil:
		return "nothing"
	}
	return fmt.Sprintf("a %T", v) // TOML date/time types
}

// showValue renders a raw value for an error: scalars quoted or printed,
// composites described, secrets redacted.
func showValue(key string, v any) string {
	if isSecretKey(lastSegment(key)) {
		return redacted
	}
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case int64, float64, bool:
		return fmt.Sprint(x)
	}
	return ""
}

// lastSegment returns the last field name of a key path, without indexes:
// "credential[0].password" → "password", "upstream[1].domains[0]" →
// "domains".
func lastSegment(key string) string {
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		key = key[i+1:]
	}
	if i := strings.IndexByte(key, '['); i >= 0 {
		key = key[:i]
	}
	return key
}

// lookupPath finds the raw value at a mapstructure key path such as
// "upstream[1].domains[0]". It only has to handle schema keys, which are
// plain identifiers.
func lookupPath(root map[string]any, key string) any {
	var cur any = root
	for part := range strings.SplitSeq(key, ".") {
		name, rest, _ := strings.Cut(part, "[")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[name]
		for rest != "" {
			idx, after, ok := strings.Cut(rest, "]")
			if !ok {
				return nil
			}
			n, err := strconv.Atoi(idx)
			arr, isArr := cur.([]any)
			if err != nil || !isArr || n < 0 || n >= len(arr) {
				return nil
			}
			cur = arr[n]
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return cur
}
