package wsgate_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/authproxy/authproxy/proxy/wsgate"
)

// TestTokenFormat pins the documented format, so that a web application
// can mint tokens without this package: base64url(user "|" expiry) "."
// hex(HMAC-SHA256(secret, that base64url text)).
func TestTokenFormat(t *testing.T) {
	secret := []byte("0123456789abcdef")
	exp := time.Unix(1_800_000_000, 0)
	payload := base64.RawURLEncoding.EncodeToString([]byte("alice@example.com|1800000000"))
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(payload))
	want := payload + "." + hex.EncodeToString(m.Sum(nil))
	if got := wsgate.MintToken(secret, "alice@example.com", exp); got != want {
		t.Fatalf("MintToken = %q, want %q", got, want)
	}
	now := exp.Add(-time.Hour)
	if u, err := wsgate.VerifyToken(secret, want, now); err != nil || u != "alice@example.com" {
		t.Fatalf("VerifyToken = %q, %v", u, err)
	}
	for _, tc := range []struct {
		name, token string
		now         time.Time
		want        error
	}{
		{"expired", want, exp, wsgate.ErrTokenExpired},
		{"too long", want, exp.Add(-25 * time.Hour), wsgate.ErrTokenTooLong},
		{"tampered payload", base64.RawURLEncoding.EncodeToString([]byte("mallory|1800000000")) + want[len(payload):], now, wsgate.ErrTokenSignature},
		{"no signature", payload, now, wsgate.ErrTokenMalformed},
		{"empty", "", now, wsgate.ErrTokenMalformed},
		{"short signature", payload + ".abcd", now, wsgate.ErrTokenMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := wsgate.VerifyToken(secret, tc.token, tc.now); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}
