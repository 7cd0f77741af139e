// Package credentials is authproxy's credential store: it decides which
// username and secret answer a digest challenge, given the upstream server
// that challenged, the challenge realm and the SIP user the request is sent
// for.
//
// The package is a pure leaf: standard library only, no SIP types, no I/O,
// no logging. A Store is immutable once built and safe for concurrent
// lookups; a configuration reload builds a new Store and swaps it.
package credentials

import (
	"fmt"
	"log/slog"
)

// Secret holds a password or an HA1. It cannot be printed: every formatting
// path (String, GoString, Format, LogValue, MarshalText) yields "[redacted]",
// so a Secret that slips into a log line, an error or JSON leaks nothing.
// The raw value is read only through Reveal, where a digest is computed.
//
// The value sits behind a pointer on purpose: fmt cannot call String or
// Format on a Secret held in an unexported struct field, and falls back to
// printing the fields by reflection. With a plain string field that printed
// the password; behind a pointer it prints an address. A consequence is that
// == compares identity, not content: compare Reveal() values (in constant
// time) if content equality is ever needed. reflect.DeepEqual still compares
// content. The zero Secret is the empty secret.
type Secret struct {
	p *string
}

// redacted is what every printing path of a Secret shows.
const redacted = "[redacted]"

// NewSecret wraps s. NewSecret("") is the zero Secret.
func NewSecret(s string) Secret {
	if s == "" {
		return Secret{}
	}
	return Secret{p: &s}
}

// Reveal returns the raw secret. Call it only where the digest is computed.
func (s Secret) Reveal() string {
	if s.p == nil {
		return ""
	}
	return *s.p
}

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.p == nil || *s.p == "" }

// String redacts.
func (s Secret) String() string { return redacted }

// GoString redacts, so %#v does not print the value either.
func (s Secret) GoString() string { return redacted }

// Format redacts for every verb (%s, %v, %+v, %#v, %q, %x, ...).
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue redacts in slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText redacts in JSON, TOML and any other text encoding.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Algorithm names as they appear in a digest challenge (RFC 7616 §3.3, RFC
// 8760), without the "-sess" suffix: an HA1 for "MD5" also serves "MD5-sess".
const (
	MD5       = "MD5"
	SHA256    = "SHA-256"
	SHA512256 = "SHA-512-256"
)
