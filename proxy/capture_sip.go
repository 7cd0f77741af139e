package proxy

import (
	"bytes"
)

// The capture's view of a SIP message's headers: what it redacts and the
// correlation id it sends. Both run on the capture's goroutine, never on
// the SIP path.

// credentialHeaders carry digest credentials (RFC 3261 §22.2, §22.3) or
// the server's proof of them (RFC 2617 §3.2.3): their secret parameters
// are redacted in captured messages.
var credentialHeaders = [][]byte{
	[]byte("authorization"), []byte("proxy-authorization"),
	[]byte("authentication-info"), []byte("proxy-authentication-info"),
}

// credentialSecrets are the digest parameters redactCredentials hides.
// A response (or rspauth) with the values beside it can be cracked
// offline for the password; the cnonce is the client's part of what it
// hashes. The username, realm, nonce, uri, qop, nc and algorithm stay
// visible: they are what an operator reads to see why a challenge failed,
// and none of them is a secret on its own (the nonce is in the challenge,
// which stays whole).
var credentialSecrets = []string{"response", "cnonce", "rspauth"}

// redactCredentials returns msg with the value of every credentialSecrets
// parameter in its credentialHeaders (any case, folded lines included)
// replaced by "[redacted]"; msg itself when it has none.
func redactCredentials(msg []byte) []byte {
	var out []byte
	last := 0
	forEachHeader(msg, func(name []byte, start, end int) {
		if !isCredentialHeader(name) {
			return
		}
		field := string(msg[start:end])
		scrubbed := scrubParams(field, credentialSecrets)
		if scrubbed == field {
			return
		}
		if out == nil {
			out = make([]byte, 0, len(msg)+32)
		}
		out = append(out, msg[last:start]...)
		out = append(out, scrubbed...)
		last = end
	})
	if out == nil {
		return msg
	}
	return append(out, msg[last:]...)
}

func isCredentialHeader(name []byte) bool {
	for _, h := range credentialHeaders {
		if len(name) == len(h) && equalFoldASCII(name, string(h)) {
			return true
		}
	}
	return false
}

// maxCorrelationID bounds the correlation id sent: a Call-ID is rarely
// longer than 100 bytes, and a hostile one must not fill the packet.
const maxCorrelationID = 256

// captureCorrelation is the correlation id (HEPv3 chunk 17) of a captured
// message: its Call-ID. authproxy forwards every request with the
// client's Call-ID, so the client's leg and the upstream's leg of a call
// carry the same one; the messages authproxy starts itself (health
// OPTIONS, trunk registrations) have their own. "" without a Call-ID.
func captureCorrelation(msg []byte) string {
	var id []byte
	forEachHeader(msg, func(name []byte, start, end int) {
		if id != nil || !(equalFoldASCII(name, "call-id") || equalFoldASCII(name, "i")) {
			return
		}
		_, v, _ := bytes.Cut(msg[start:end], []byte(":"))
		id = bytes.TrimSpace(v)
	})
	if len(id) > maxCorrelationID {
		id = id[:maxCorrelationID]
	}
	return string(id)
}

// forEachHeader calls f with the name of each header field of msg (RFC
// 3261 §7.3.1) and the span [start, end) of the field, from its name to
// the end of its last folded line without the line break. It stops at the
// empty line before the body; the start line is skipped.
func forEachHeader(msg []byte, f func(name []byte, start, end int)) {
	line := bytes.IndexByte(msg, '\n') + 1 // after the start line
	if line == 0 {
		return
	}
	for line < len(msg) {
		start := line
		end := fieldLineEnd(msg, start)
		if end == start {
			return // the empty line: the body follows
		}
		next := nextLine(msg, start)
		for next < len(msg) && (msg[next] == ' ' || msg[next] == '\t') {
			end = fieldLineEnd(msg, next)
			next = nextLine(msg, next)
		}
		if colon := bytes.IndexByte(msg[start:end], ':'); colon > 0 {
			f(bytes.TrimSpace(msg[start:start+colon]), start, end)
		}
		line = next
	}
}

// fieldLineEnd is the index of the CR LF (or LF) ending the line starting at i,
// or len(msg).
func fieldLineEnd(msg []byte, i int) int {
	j := bytes.IndexByte(msg[i:], '\n')
	if j < 0 {
		return len(msg)
	}
	if j > 0 && msg[i+j-1] == '\r' {
		return i + j - 1
	}
	return i + j
}

// nextLine is the index after the line break ending the line starting at
// i, or len(msg).
func nextLine(msg []byte, i int) int {
	j := bytes.IndexByte(msg[i:], '\n')
	if j < 0 {
		return len(msg)
	}
	return i + j + 1
}
