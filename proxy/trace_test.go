package proxy

import (
	"strings"
	"testing"
)

func TestRedactAuth(t *testing.T) {
	msg := "REGISTER sip:pbx SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n" +
		"Authorization: Digest username=\"alice\", response=\"deadbeef01\"\r\n" +
		"proxy-authorization: Digest username=\"bob\",\r\n  response=\"deadbeef02\"\r\n" +
		"PROXY-AUTHORIZATION:Digest response=\"deadbeef03\"\r\n" +
		"Content-Length: 27\r\n\r\n" +
		"Authorization: in the body\r\n"
	got := RedactAuth([]byte(msg))
	for _, secret := range []string{"deadbeef01", "deadbeef02", "deadbeef03", "alice", "bob"} {
		if strings.Contains(got, secret) {
			t.Fatalf("%q survived redaction:\n%s", secret, got)
		}
	}
	for _, keep := range []string{"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1", "Content-Length: 27", "Authorization: in the body"} {
		if !strings.Contains(got, keep) {
			t.Fatalf("%q lost:\n%s", keep, got)
		}
	}
	if n := strings.Count(got, "[redacted]"); n != 3 {
		t.Fatalf("%d redactions, want 3:\n%s", n, got)
	}
}

// FuzzRedactAuth: in the header part of any message (up to the first
// empty line, as SIP parses it), no Authorization or Proxy-Authorization
// header keeps a value, folded continuation lines included (RFC 3261 §7.3.1:
// a line starting with a space or tab continues the header above it).
func FuzzRedactAuth(f *testing.F) {
	f.Add("Authorization: Digest response=\"SECRETVALUE\"\r\n\r\n")
	f.Add("X: y\r\nproxy-authorization: SECRETVALUE\r\n \tSECRETVALUE\r\n\r\nbody")
	f.Add("Authorization: Digest username=\"a\",\r\n response=\"SECRETVALUE\"\r\n\tcnonce=\"SECRETVALUE\"\r\nVia: x\r\n\r\n")
	f.Add("X: y\r\n Authorization: SECRETVALUE\r\n\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		got := RedactAuth([]byte(s))
		inAuth := false // the header above is an auth header
		for _, line := range strings.Split(got, "\n") {
			l := strings.TrimRight(line, "\r")
			if l == "" {
				break
			}
			if l[0] == ' ' || l[0] == '\t' {
				if inAuth {
					t.Fatalf("continuation line %q of an auth header kept in %q", line, got)
				}
				continue
			}
			inAuth = false
			name, val, ok := strings.Cut(l, ":")
			if !ok {
				continue
			}
			n := strings.ToLower(strings.TrimSpace(name))
			if n == "authorization" || n == "proxy-authorization" {
				inAuth = true
				if strings.TrimSpace(val) != "[redacted]" {
					t.Fatalf("unredacted line %q in %q", line, got)
				}
			}
		}
	})
}
