package proxy

import (
	"strings"

	"github.com/emiago/sipgo/sip"
)

// Header lookups and edits shared by the proxy's paths.

func callID(m sip.Message) string {
	if c := m.CallID(); c != nil {
		return c.Value()
	}
	return ""
}

// headerEditor is what *sip.Request and *sip.Response share for editing
// headers (sip.Message lacks RemoveHeader).
type headerEditor interface {
	Headers() []sip.Header
	RemoveHeader(name string) bool
}

// headersNamed returns m's headers called name, compared
// case-insensitively (RFC 3261 §7.3.1). sipgo's GetHeaders lowercases the
// name of every header it looks at, an allocation for each name outside
// its table, on every lookup; this compares in place.
func headersNamed(m interface{ Headers() []sip.Header }, name string) []sip.Header {
	var out []sip.Header
	for _, h := range m.Headers() {
		if strings.EqualFold(h.Name(), name) {
			out = append(out, h)
		}
	}
	return out
}

// headerNamed returns m's first header called name (case-insensitive), nil
// if none; see headersNamed.
func headerNamed(m interface{ Headers() []sip.Header }, name string) sip.Header {
	for _, h := range m.Headers() {
		if strings.EqualFold(h.Name(), name) {
			return h
		}
	}
	return nil
}

// removeAll removes every header called name, compared case-insensitively.
// sipgo's RemoveHeader removes only the first header whose name matches
// case-sensitively, so a received "authorization:" would survive it.
func removeAll(m headerEditor, name string) {
	for _, h := range headersNamed(m, name) {
		m.RemoveHeader(h.Name())
	}
}

// removeFirst removes the first header called name (case-insensitive).
func removeFirst(m headerEditor, name string) {
	if h := headerNamed(m, name); h != nil {
		m.RemoveHeader(h.Name())
	}
}
