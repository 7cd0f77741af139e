package proxy

import (
	"bytes"
	"log/slog"
	"strings"
)

// Tracer logs every SIP message sipgo reads or writes at debug level, with
// the values of Authorization and Proxy-Authorization headers redacted: a
// digest response can be cracked offline and names the auth username.
// Install it with sip.SIPDebugTracer and sip.SIPDebug = true.
type Tracer struct {
	Log *slog.Logger
}

// SIPTraceRead logs a received message.
func (t Tracer) SIPTraceRead(transport, laddr, raddr string, msg []byte) {
	t.Log.Debug("sip read", "transport", transport, "local", laddr, "remote", raddr, "message", RedactAuth(msg))
}

// SIPTraceWrite logs a sent message.
func (t Tracer) SIPTraceWrite(transport, laddr, raddr string, msg []byte) {
	t.Log.Debug("sip write", "transport", transport, "local", laddr, "remote", raddr, "message", RedactAuth(msg))
}

var redactedHeaders = [][]byte{[]byte("authorization"), []byte("proxy-authorization")}

// RedactAuth returns msg as text with the value of every Authorization and
// Proxy-Authorization header line replaced by "[redacted]". Header names are
// matched case-insensitively; folded continuation lines are dropped with
// the value they continue.
func RedactAuth(msg []byte) string {
	var out bytes.Buffer
	out.Grow(len(msg))
	inBody := false
	skipping := false
	for len(msg) > 0 {
		i := bytes.IndexByte(msg, '\n')
		var line []byte
		if i < 0 {
			line, msg = msg, nil
		} else {
			line, msg = msg[:i+1], msg[i+1:]
		}
		if inBody {
			out.Write(line)
			continue
		}
		trimmed := bytes.TrimRight(line, "\r\n")
		if len(trimmed) == 0 {
			inBody = true
			skipping = false
			out.Write(line)
			continue
		}
		if skipping && (trimmed[0] == ' ' || trimmed[0] == '\t') {
			continue
		}
		skipping = false
		if colon := bytes.IndexByte(trimmed, ':'); colon > 0 {
			name := bytes.ToLower(bytes.TrimSpace(trimmed[:colon]))
			for _, h := range redactedHeaders {
				if bytes.Equal(name, h) {
					out.Write(trimmed[:colon+1])
					out.WriteString(" [redacted]\r\n")
					skipping = true
					break
				}
			}
			if skipping {
				continue
			}
		}
		out.Write(line)
	}
	return out.String()
}

// redactText returns text sipgo or authproxy is about to log with every
// credential taken out: the value of each Authorization and
// Proxy-Authorization header line (RedactAuth), and the value of each
// digest response, cnonce and nonce parameter wherever it appears (an
// error message quoting part of a header, a line cut short). Text without
// any of them is returned as it is.
func redactText(s string) string {
	if !containsFoldASCII(s, "authorization") && !containsFoldASCII(s, "nonce") && !containsFoldASCII(s, "response") {
		return s
	}
	if strings.IndexByte(s, '\n') >= 0 {
		s = RedactAuth([]byte(s))
	}
	return scrubDigestParams(s)
}

// digestSecrets are the digest parameters whose values redactText hides:
// the response can be cracked offline for the password, and with the
// nonce and cnonce it is all a cracker needs besides the request line.
var digestSecrets = []string{"response", "cnonce", "nonce"}

// scrubDigestParams replaces the value of every digestSecrets parameter
// in s with [redacted].
func scrubDigestParams(s string) string { return scrubParams(s, digestSecrets) }

// scrubParams replaces the value of every parameter of s named in names
// (lower case; name=value or name="value", any case, spaces around "=")
// with [redacted], inside the quotes of a quoted one.
func scrubParams(s string, names []string) string {
	var out strings.Builder
	last := 0
	for i := 0; i < len(s); i++ {
		if i > 0 && isParamNameChar(s[i-1]) {
			continue // inside a longer name (nextnonce, x-response)
		}
		name := ""
		for _, n := range names {
			if len(s)-i >= len(n) && equalFoldASCII([]byte(s[i:i+len(n)]), n) {
				name = n
				break
			}
		}
		if name == "" {
			continue
		}
		j := skipSpace(s, i+len(name))
		if j >= len(s) || s[j] != '=' {
			continue
		}
		from := skipSpace(s, j+1)
		to := from
		if to < len(s) && s[to] == '"' {
			from++
			to = from
			for to < len(s) && s[to] != '"' {
				if s[to] == '\\' && to+1 < len(s) {
					to++
				}
				to++
			}
		} else {
			for to < len(s) && strings.IndexByte(", ;\t\r\n", s[to]) < 0 {
				to++
			}
		}
		out.WriteString(s[last:from])
		out.WriteString("[redacted]")
		last = min(to, len(s))
		i = last - 1
	}
	if last == 0 {
		return s
	}
	out.WriteString(s[last:])
	return out.String()
}

func isParamNameChar(c byte) bool { return isLetter(c) || isDigit(c) || c == '-' || c == '_' }

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

// containsFoldASCII reports whether s contains the lower-case ASCII sub,
// ignoring case.
func containsFoldASCII(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if equalFoldASCII([]byte(s[i:i+len(sub)]), sub) {
			return true
		}
	}
	return false
}
