package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/authproxy/authproxy"
	"github.com/authproxy/authproxy/config"
)

// What authproxy says before it serves: -help, the error report of a
// configuration it refuses, and the warning of a demo run.

// embeddedSource is how logs and reports name the embedded example.
const embeddedSource = "embedded config.example.toml"

// embeddedWarning is logged at start (and printed by -check) when no
// -config names a file.
const embeddedWarning = "running on the embedded example configuration (config.example.toml): " +
	"sample passwords, loopback addresses, upstreams that do not exist; for real use pass -config FILE"

// usageText is -help's text before the flag list.
const usageText = `Usage: authproxy [-config FILE] [-check [-skip-secrets]] [flags]

authproxy is a SIP proxy that answers the 401/407 digest challenges of its
upstreams with the credentials it holds, so that clients need none.

Configuration:
  -config FILE names the TOML file; the systemd unit and the container image
  use /etc/authproxy/authproxy.toml. Relative password_file, cert_file,
  key_file and ca_file paths resolve against the file's directory. Without
  -config, authproxy runs on the embedded config.example.toml, a demo on
  loopback with sample passwords, and logs a warning. A -config file that
  uses the example's sample passwords is refused (-allow-sample-secrets runs
  it anyway). -check validates and exits; -check -skip-secrets validates
  without reading the secrets (password_env variables, password_file and
  TLS key files), for CI.

Environment:
  AUTHPROXY_<TABLE>__<KEY>  overrides a key of a single table (double
                            underscore between table and key), e.g.
                            AUTHPROXY_LOG__LEVEL=debug,
                            AUTHPROXY_ADMIN__ADDRESS=0.0.0.0:9060; an empty
                            variable counts as unset, and one that names no
                            key (AUTHPROXY_LOG__LEVL) is an error
  password_env variables    the passwords credentials name
  NO_COLOR                  no colours in the terminal log format
  NOTIFY_SOCKET             set by systemd (Type=notify): authproxy reports
                            READY=1, RELOADING=1 and STOPPING=1 there

Signals:
  SIGHUP           reload the configuration file; an invalid one is
                   rejected whole and the running configuration stays
  SIGTERM, SIGINT  stop gracefully: new requests are refused, those in
                   flight get proxy.shutdown_grace to finish; a second
                   signal exits at once

Exit status:
  0  stopped by a signal after a clean drain; -check found no error;
     -help, -version; -healthcheck got a 2xx
  1  invalid configuration or refused secrets; a start failure (a port in
     use, an unreadable certificate); an error while serving; a second
     stop signal; -healthcheck got no 2xx
  2  a bad command line

Flags:
`

// printUsage writes -help: usageText, then every flag.
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, usageText)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// printReport writes a refused configuration's errors to w, one a line,
// each with the same indent and with the context that wraps them all
// ("load FILE: ") repeated on every line.
func printReport(w io.Writer, what, source string, err error) {
	fmt.Fprintf(w, "authproxy: %s (%s):\n", what, source)
	for _, line := range errorLines(err) {
		fmt.Fprintf(w, "  %s\n", line)
	}
}

// errorLines returns one line per error joined in err. A wrapper around a
// join (Load's "load FILE: " around every problem of the file) has its
// prefix put on each line, so that every line reads alone.
func errorLines(err error) []string {
	if _, leaf := err.(*config.FieldError); leaf {
		return []string{err.Error()} // unwraps to its sentinel, but reads whole
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range j.Unwrap() {
			out = append(out, errorLines(e)...)
		}
		return out
	}
	if inner := errors.Unwrap(err); inner != nil {
		if _, ok := inner.(interface{ Unwrap() []error }); ok {
			if prefix, ok := strings.CutSuffix(err.Error(), inner.Error()); ok {
				lines := errorLines(inner)
				for i := range lines {
					lines[i] = prefix + lines[i]
				}
				return lines
			}
		}
	}
	return []string{err.Error()}
}

// sampleSecrets refuses the sample passwords of config.example.toml: a
// file that still has them is a copy of the example put into service. It
// returns one *config.FieldError per credential or client user that has
// one, or nil. No error shows the password.
func sampleSecrets(cfg *config.Config) error {
	samples := examplePasswords()
	const rule = "has a sample password of config.example.toml: set the real one " +
		"(password_env or password_file), or pass -allow-sample-secrets to run a demo"
	var errs []error
	for i, c := range cfg.Credentials {
		if !c.Password.IsZero() && samples[c.Password.Reveal()] {
			errs = append(errs, &config.FieldError{Key: fmt.Sprintf("credential[%d]", i),
				Value: fmt.Sprintf("username=%q", c.Username), Rule: rule, Err: config.ErrInvalid})
		}
	}
	for i, g := range cfg.Clients {
		for _, name := range slices.Sorted(maps.Keys(g.Users)) {
			if s := g.Users[name]; !s.IsZero() && samples[s.Reveal()] {
				errs = append(errs, &config.FieldError{Key: fmt.Sprintf("client[%d].user", i),
					Value: fmt.Sprintf("username=%q", name), Rule: rule, Err: config.ErrInvalid})
			}
		}
	}
	return errors.Join(errs...)
}

// examplePasswords returns the passwords of the embedded example, parsed
// without the environment (it has only inline ones).
func examplePasswords() map[string]bool {
	out := map[string]bool{}
	cfg, err := config.Parse(authproxy.ExampleConfig, config.WithEnviron(nil))
	if err != nil {
		return out // the example is valid: TestExampleConfig
	}
	for _, c := range cfg.Credentials {
		if !c.Password.IsZero() {
			out[c.Password.Reveal()] = true
		}
	}
	for _, g := range cfg.Clients {
		for _, s := range g.Users {
			if !s.IsZero() {
				out[s.Reveal()] = true
			}
		}
	}
	return out
}
