package config

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
	gotoml "github.com/pelletier/go-toml/v2"
)

// Loading: defaults, the TOML file and environment overrides merged with
// koanf, then decoded into the file* schema.

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
