package config

import (
	"fmt"
	"sort"
	"strings"
)

// Unknown environment overrides: a mistyped AUTHPROXY_LOG__LEVL is an
// error, as a mistyped key in the file is, rather than silently ignored.

// checkEnviron reports every AUTHPROXY_ variable of the environment that
// looks like an override (AUTHPROXY_<TABLE>__<KEY>, or one edit or two
// away from a known one, as AUTHPROXY_LOG_LEVEL is) but names no key.
// Other AUTHPROXY_ variables (AUTHPROXY_PBX_PASSWORD for a password_env,
// tools' own settings) are left alone, and so are empty ones, which count
// as unset.
func (v *validator) checkEnviron(fc *fileConfig) {
	if v.opts.environ == nil {
		return
	}
	known := map[string]bool{}
	var names []string
	for _, ek := range envKeys() {
		known[ek.name] = true
		names = append(names, ek.name)
	}
	for _, n := range passwordEnvNames(fc) {
		known[n] = true
	}
	var unknown []string
	for _, kv := range v.opts.environ() {
		name, val, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix) || val == "" || known[name] {
			continue
		}
		near := closest(name, names)
		if !strings.Contains(name, "__") && near == "" {
			continue
		}
		unknown = append(unknown, name)
	}
	sort.Strings(unknown)
	for _, name := range unknown {
		rule := "unknown environment override"
		if near := closest(name, names); near != "" {
			rule += fmt.Sprintf(" (did you mean $%s?)", near)
		} else {
			rule += " (only the scalar keys of the single tables can be set from the environment, as AUTHPROXY_<TABLE>__<KEY>)"
		}
		v.errs = append(v.errs, &FieldError{Key: envKeyPath(name), Env: name, Rule: rule, Err: ErrUnknownKey})
	}
}

// passwordEnvNames lists the variables password_env names, in credentials
// and client users.
func passwordEnvNames(fc *fileConfig) []string {
	var out []string
	for _, c := range fc.Credential {
		if c.PasswordEnv != nil {
			out = append(out, *c.PasswordEnv)
		}
	}
	for _, c := range fc.Client {
		for _, u := range c.User {
			if u.PasswordEnv != nil {
				out = append(out, *u.PasswordEnv)
			}
		}
	}
	return out
}

// envKeyPath is the key an override name would address:
// AUTHPROXY_LOG__LEVL → "log.levl".
func envKeyPath(name string) string {
	rest := strings.ToLower(strings.TrimPrefix(name, envPrefix))
	if table, key, ok := strings.Cut(rest, "__"); ok {
		return table + "." + key
	}
	return rest
}

// closest returns the name of names at most two edits from name (the
// nearest, then the first in order), or "".
func closest(name string, names []string) string {
	best, bestDist := "", 3
	for _, n := range names {
		if d := editDistance(name, n); d < bestDist || d == bestDist && n < best {
			best, bestDist = n, d
		}
	}
	return best
}
