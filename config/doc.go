// Package config turns authproxy's TOML configuration into validated plain
// values: listeners, upstreams, log and proxy settings, and the
// credentials.Entry list the credential store is built from.
//
// The package is pure: Parse never opens a socket, starts a goroutine or
// configures logging. It reads only what the configuration points at
// (password_env variables, password_file files). cmd/authproxy wires the
// result into the proxy and the log handlers.
//
// # Layers
//
// Each Parse call builds its own koanf instance and merges, in order:
//
//  1. built-in defaults (log.level "info", log.format "auto",
//     log.sip_trace false, proxy.max_challenges 3, proxy.shutdown_grace "5s",
//     admin.address "" (no admin listener), health.options_interval "30s"
//     (OPTIONS pings on), health.down_after 3, health.up_after 2,
//     reload.watch false);
//  2. the TOML file;
//  3. environment overrides for the scalar keys of the top-level tables
//     ([log], [proxy], [admin], [health], [reload], ...), named AUTHPROXY_<TABLE>__<KEY> with a double underscore
//     between table and key, e.g. AUTHPROXY_LOG__LEVEL=debug or
//     AUTHPROXY_PROXY__MAX_CHALLENGES=5 (single underscores belong to the
//     key name). An empty variable counts as unset. The arrays of tables
//     ([[listen]], [[upstream]], [[credential]]) are not addressable from the
//     environment: there is no index to name an element by, and a partial
//     override of a list is more surprising than helpful. Secrets come from
//     the environment through password_env instead. A variable that looks
//     like an override (AUTHPROXY_<TABLE>__<KEY>, or a near miss such as
//     AUTHPROXY_LOG_LEVEL) but names no key is an error, as an unknown key
//     in the file is.
//
// and then validates the result, including the cross-references no single
// key shows (validate_refs.go): a [[registration]] no [[credential]]
// answers for, an address that is an upstream's or group's name.
//
// SkipSecrets validates all of it without reading password_env variables,
// password_file files or TLS key files (authproxy -check -skip-secrets).
//
// # Errors
//
// Parse reports every problem at once (errors.Join). Each is a *FieldError
// naming the key path (e.g. "credential[2].server"), the offending value
// (passwords and HA1s as "[redacted]") and the rule, and wraps one of
// ErrUnknownKey, ErrRequired, ErrInvalid or ErrDuplicate. A TOML syntax error
// stops parsing early and wraps ErrSyntax. No error text ever contains a
// password or HA1, whether it came from the file, a variable or a file.
//
// # Files
//
// config.go holds the public types, Parse and Load; file.go the TOML
// schema (the file* types) and the built-in defaults; file_load.go merges
// the layers and decodes them; file_errors.go describes a fault in the
// file's own terms. validate.go turns the decoded file into a Config, one
// function per table: validate_listen.go, validate_upstreams.go,
// validate_credentials.go, validate_clients.go ([[client]] and
// [[registration]]), validate_dns.go ([dns] and [[group]]), tcp.go, validate_refs.go
// (cross-references), validate_env.go (unknown environment overrides);
// address.go parses the addresses they share. errors.go holds FieldError
// and the sentinels.
package config
