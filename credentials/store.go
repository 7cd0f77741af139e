package credentials

import "errors"

// Entry is one configured credential: the auth username and its secret, and
// the three optional filters that scope it. An empty filter matches anything.
type Entry struct {
	// Username is the digest auth username (not the SIP URI user).
	Username string
	// Password is the plain password. Either Password or at least one HA1
	// is set.
	Password Secret
	// HA1 holds precomputed H(username:realm:password) values keyed by
	// algorithm (MD5, SHA256, SHA512256). An HA1 only answers challenges of
	// its algorithm (and its -sess form) and of the realm it was made for.
	HA1 map[string]Secret

	// Server scopes the entry to one upstream: "host" or "host:port". The
	// host compares case-insensitively; the port only when given here.
	Server string
	// Realm scopes the entry to one digest realm (exact match).
	Realm string
	// User scopes the entry to one SIP URI user (exact match): the To user
	// for REGISTER, the From user otherwise.
	User string
}

// Credential is the answer of a Lookup: what to put in an Authorization
// header. Its String and LogValue never show the secret.
type Credential struct {
	Username string
	Password Secret
	HA1      map[string]Secret
	// Server, Realm and User are the filters of the entry that matched ("" =
	// any), for logs: they tell which rung of the order answered.
	Server, Realm, User string
	// Anonymous is true when nothing matched and the RFC 3261 §22.1
	// anonymous credential was returned.
	Anonymous bool
}

// ErrDuplicate is wrapped by NewStore when two entries share all three
// filters: that is a configuration mistake, never a silent overwrite.
var ErrDuplicate = errors.New("duplicate credential scope")

// ErrNoSecret is wrapped by NewStore when an entry has neither a password
// nor an HA1.
var ErrNoSecret = errors.New("credential has no password or ha1")
