package wsgate

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Tokens let a web application that already logged its user in admit the
// page's WebSocket without a SIP password in the page:
//
//	token   = payload "." signature
//	payload = base64url-nopad( user "|" expiry )   ; expiry: Unix seconds
//	signature = lowercase-hex( HMAC-SHA256( secret, payload ) )
//
// The HMAC is over the payload as sent (its base64url text). The page
// opens wss://host/path?token=<token>, or a client that can set headers
// sends "Authorization: Bearer <token>". A token is refused once expiry
// is past, and when it expires more than MaxTokenLifetime from now (a
// leaked long-lived token is a password in the page again).

// MaxTokenLifetime is the longest validity a token may claim.
const MaxTokenLifetime = 24 * time.Hour

// Token errors.
var (
	ErrTokenMalformed = errors.New("token malformed")
	ErrTokenSignature = errors.New("token signature invalid")
	ErrTokenExpired   = errors.New("token expired")
	ErrTokenTooLong   = errors.New("token lifetime too long")
)

// MintToken returns a token for user valid until expiry, signed with
// secret.
func MintToken(secret []byte, user string, expiry time.Time) string {
	payload := base64.RawURLEncoding.EncodeToString([]byte(user + "|" + strconv.FormatInt(expiry.Unix(), 10)))
	return payload + "." + sign(secret, payload)
}

func sign(secret []byte, payload string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(payload))
	return hex.EncodeToString(m.Sum(nil))
}

// VerifyToken checks token against secret at now and returns its user.
func VerifyToken(secret []byte, token string, now time.Time) (string, error) {
	payload, sig, ok := strings.Cut(token, ".")
	if !ok || payload == "" || len(sig) != 2*sha256.Size {
		return "", ErrTokenMalformed
	}
	want := sign(secret, payload)
	if !hmac.Equal([]byte(strings.ToLower(sig)), []byte(want)) {
		return "", ErrTokenSignature
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return "", ErrTokenMalformed
	}
	i := strings.LastIndexByte(string(raw), '|')
	if i <= 0 {
		return "", ErrTokenMalformed
	}
	user := string(raw[:i])
	exp, err := strconv.ParseInt(string(raw[i+1:]), 10, 64)
	if err != nil {
		return "", ErrTokenMalformed
	}
	expiry := time.Unix(exp, 0)
	switch {
	case !now.Before(expiry):
		return "", ErrTokenExpired
	case expiry.Sub(now) > MaxTokenLifetime:
		return "", ErrTokenTooLong
	}
	return user, nil
}
