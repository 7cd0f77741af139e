package proxy

import (
	"encoding/base64"
	"strings"
	"testing"
)

// TestFlowTokens: a flow token names its WebSocket flow and nothing else
// parses as one: altered, from another process's key, or naming a
// transport that is not a WebSocket (RFC 5626 §5.2: the token must not
// let anyone route through authproxy to an address of their choosing).
func TestFlowTokens(t *testing.T) {
	ft := newFlowTokens()
	tok := ft.token("WSS", "203.0.113.7:51000")
	if !strings.HasPrefix(tok, flowTokenPrefix) {
		t.Fatalf("token %q lacks the prefix", tok)
	}
	if tp, addr, ok := ft.parse(tok); !ok || tp != "WSS" || addr != "203.0.113.7:51000" {
		t.Fatalf("parse(%q) = %q %q %v", tok, tp, addr, ok)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(tok, flowTokenPrefix))
	altered := append([]byte(nil), raw...)
	altered[len(altered)-1] ^= 1 // another port
	forgedUDP := append(append([]byte(nil), ft.mac("UDP|198.51.100.1:5060")...), "UDP|198.51.100.1:5060"...)
	for name, user := range map[string]string{
		"altered flow":       flowTokenPrefix + base64.RawURLEncoding.EncodeToString(altered),
		"other key":          newFlowTokens().token("WSS", "203.0.113.7:51000"),
		"not a websocket":    flowTokenPrefix + base64.RawURLEncoding.EncodeToString(forgedUDP),
		"no prefix":          strings.TrimPrefix(tok, flowTokenPrefix),
		"not base64":         flowTokenPrefix + "!!!",
		"too short":          flowTokenPrefix + "AAAA",
		"a phone's own user": "1001",
	} {
		if _, _, ok := ft.parse(user); ok {
			t.Errorf("%s: %q parsed as a flow token", name, user)
		}
	}
}
