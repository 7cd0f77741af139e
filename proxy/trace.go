package proxy

import (
	"bytes"
	"log/slog"
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
