// Package authproxy holds files embedded into the authproxy binary.
package authproxy

import _ "embed"

// ExampleConfig is config.example.toml, the documented example
// configuration. It is embedded so that the binary can print it or run with
// it when no configuration is given, and the copy it ships is always the one
// the config package's tests validated.
//
//go:embed config.example.toml
var ExampleConfig []byte
