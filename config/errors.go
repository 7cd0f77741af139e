package config

import (
	"errors"
	"strings"
)

// Sentinels wrapped by the errors Parse and Load return; test for them with
// errors.Is. Every validation error wraps exactly one of the first four.
var (
	// ErrUnknownKey marks a key the schema does not know, usually a typo
	// ("upstream[0].adress"). koanf would ignore it silently; authproxy
	// refuses it, so a misspelt setting cannot fall back to a default.
	ErrUnknownKey = errors.New("unknown key")
	// ErrRequired marks a missing value: a required key, a required table,
	// or an environment variable that password_env names but that is unset.
	ErrRequired = errors.New("required")
	// ErrInvalid marks a value of the wrong type or outside its allowed set
	// or range, or a password_file that cannot be read.
	ErrInvalid = errors.New("invalid value")
	// ErrDuplicate marks a value that must be unique but is not: listener,
	// upstream name or address, domain, default upstream, credential scope.
	ErrDuplicate = errors.New("duplicate")
	// ErrSyntax marks a file that is not valid TOML. It is reported alone:
	// nothing can be validated before the file parses.
	ErrSyntax = errors.New("toml syntax")
)

// redacted is shown instead of any password or HA1 value.
const redacted = "[redacted]"

// FieldError is one validation problem: which key, what value, which rule.
// It wraps a sentinel (Err) and, when there is one, the underlying error
// (Cause, e.g. the *fs.PathError of an unreadable password_file), so both
// errors.Is(err, ErrInvalid) and errors.Is(err, fs.ErrNotExist) work.
type FieldError struct {
	// Key is the key path, e.g. "upstream[1].address" or "credential[0]".
	Key string
	// Env is the environment variable the value came from, if it was an
	// override rather than the file.
	Env string
	// Value is the offending value as shown to the user: quoted, or
	// "[redacted]" for secrets, or empty when no single value applies.
	Value string
	// Rule says what is wrong or what is expected.
	Rule string
	// Err is the sentinel: ErrUnknownKey, ErrRequired, ErrInvalid or
	// ErrDuplicate.
	Err error
	// Cause is the underlying error, or nil.
	Cause error
}

// Error renders `key = value (from $ENV): rule: cause`, leaving out the
// parts that are empty.
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.Key)
	if e.Value != "" {
		b.WriteString(" = ")
		b.WriteString(e.Value)
	}
	if e.Env != "" {
		b.WriteString(" (from $")
		b.WriteString(e.Env)
		b.WriteString(")")
	}
	b.WriteString(": ")
	b.WriteString(e.Rule)
	if e.Cause != nil {
		b.WriteString(": ")
		b.WriteString(e.Cause.Error())
	}
	return b.String()
}

// Unwrap returns the sentinel and the cause, for errors.Is and errors.As.
func (e *FieldError) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Cause}
}
