package config

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/authproxy/authproxy/credentials"
)

// Validation of [[credential]]: the server each credential is for and
// where its secret comes from (password, password_env, password_file, HA1).

// ha1Keys lists the HA1 keys with their algorithm and hex length: MD5 is
// 128 bits, SHA-256 and SHA-512/256 are 256 bits (RFC 7616 §3.2).
var ha1Keys = []struct {
	key, alg string
	hexLen   int
}{
	{"ha1", credentials.MD5, 32},
	{"ha1_sha256", credentials.SHA256, 64},
	{"ha1_sha512_256", credentials.SHA512256, 64},
}

func (v *validator) buildCredentials(cs []fileCredential, idx upstreamIndex) []credentials.Entry {
	out := make([]credentials.Entry, 0, len(cs))
	type scope struct{ server, realm, user string }
	scopeAt := map[scope]int{}
	for i, c := range cs {
		key := fmt.Sprintf("credential[%d]", i)
		e := credentials.Entry{Username: c.Username, Realm: c.Realm, User: c.User}

		switch {
		case c.Username == "":
			v.add(key+".username", "", "is required", ErrRequired, nil)
		case hasControl(c.Username):
			v.add(key+".username", strconv.Quote(c.Username), "must not contain control characters", ErrInvalid, nil)
		}
		for _, f := range []struct{ name, val string }{{"realm", c.Realm}, {"user", c.User}} {
			if hasControl(f.val) {
				v.add(key+"."+f.name, strconv.Quote(f.val), "must not contain control characters", ErrInvalid, nil)
			}
		}

		v.loadSecret(key, c, &e)
		if c.Realm == "" && (c.HA1 != nil || c.HA1SHA256 != nil || c.HA1SHA512256 != nil) {
			// RFC 7616 §3.4.2: HA1 = H(username:realm:password).
			v.add(key+".realm", "", "is required with an ha1 secret: an HA1 is hashed with one realm "+
				"and answers only that realm's challenges (RFC 7616 §3.4.2)", ErrRequired, nil)
		}

		server, ok := v.resolveServer(key, c.Server, idx)
		e.Server = server
		if ok {
			s := scope{server, c.Realm, c.User}
			if j, dup := scopeAt[s]; dup {
				v.add(key, fmt.Sprintf("server=%q realm=%q user=%q", server, c.Realm, c.User),
					fmt.Sprintf("duplicates credential[%d]: same server, realm and user", j), ErrDuplicate, nil)
			} else {
				scopeAt[s] = i
			}
		}
		out = append(out, e)
	}
	return out
}

// loadSecret checks that exactly one secret source is set and loads it
// into e. No error it records contains the secret.
func (v *validator) loadSecret(key string, c fileCredential, e *credentials.Entry) {
	var sources []string // groups: the ha1 keys count as one source
	if c.Password != nil {
		sources = append(sources, "password")
	}
	if c.PasswordEnv != nil {
		sources = append(sources, "password_env")
	}
	if c.PasswordFile != nil {
		sources = append(sources, "password_file")
	}
	var ha1Set []string
	for _, h := range ha1Keys {
		if c.ha1(h.key) != nil {
			ha1Set = append(ha1Set, h.key)
		}
	}
	if len(ha1Set) > 0 {
		sources = append(sources, strings.Join(ha1Set, "+"))
	}
	switch len(sources) {
	case 0:
		for _, k := range []string{"password", "password_env", "password_file", "ha1", "ha1_sha256", "ha1_sha512_256"} {
			if v.bad[key+"."+k] {
				return // set, but of the wrong type: already reported
			}
		}
		v.add(key, "", "needs a secret: set one of password, password_env, password_file, "+
			"or ha1 (with or instead of ha1_sha256, ha1_sha512_256)", ErrRequired, nil)
		return
	case 1:
	default:
		v.add(key, strings.Join(sources, ", "), "sets more than one secret source; set exactly one", ErrInvalid, nil)
		return
	}

	switch {
	case c.Password != nil:
		if *c.Password == "" {
			v.add(key+".password", redacted, "must not be empty", ErrRequired, nil)
			return
		}
		e.Password = credentials.NewSecret(*c.Password)
	case c.PasswordEnv != nil:
		name := *c.PasswordEnv
		val, set := v.opts.lookupEnv(name)
		switch {
		case name == "":
			v.add(key+".password_env", `""`, "must name an environment variable", ErrRequired, nil)
		case v.opts.skipSecrets:
			e.Password = credentials.NewSecret(skippedSecret)
		case !set:
			v.add(key+".password_env", strconv.Quote(name), "environment variable is not set", ErrRequired, nil)
		case val == "":
			v.add(key+".password_env", strconv.Quote(name), "environment variable is empty", ErrRequired, nil)
		default:
			e.Password = credentials.NewSecret(val)
		}
	case c.PasswordFile != nil:
		if *c.PasswordFile == "" {
			v.add(key+".password_file", `""`, "must name a file", ErrRequired, nil)
			return
		}
		if v.opts.skipSecrets {
			e.Password = credentials.NewSecret(skippedSecret)
			return
		}
		pw, rule, err := readPasswordFile(v.opts.baseDir, *c.PasswordFile)
		if rule != "" {
			v.add(key+".password_file", strconv.Quote(*c.PasswordFile), rule, ErrInvalid, err)
			return
		}
		e.Password = credentials.NewSecret(pw)
	default:
		e.HA1 = map[string]credentials.Secret{}
		for _, h := range ha1Keys {
			p := c.ha1(h.key)
			if p == nil {
				continue
			}
			if len(*p) != h.hexLen || !isHex(*p) {
				v.add(key+"."+h.key, redacted,
					fmt.Sprintf("must be %d hex digits (the %s HA1)", h.hexLen, h.alg), ErrInvalid, nil)
				continue
			}
			// RFC 7616 §3.4.2 computes with lowercase hex.
			e.HA1[h.alg] = credentials.NewSecret(lowerASCII(*p))
		}
	}
}

// skippedSecret stands in for a secret SkipSecrets left unread.
const skippedSecret = "(not read: -skip-secrets)"

func (c fileCredential) ha1(key string) *string {
	switch key {
	case "ha1":
		return c.HA1
	case "ha1_sha256":
		return c.HA1SHA256
	case "ha1_sha512_256":
		return c.HA1SHA512256
	}
	return nil
}

// readPasswordFile reads a password file, resolved against baseDir when
// relative, and trims one trailing newline (editors and `echo` add one).
// On failure it returns a rule and possibly the os error; neither contains
// the file's content.
func readPasswordFile(baseDir, path string) (string, string, error) {
	if !filepath.IsAbs(path) && baseDir != "" {
		path = filepath.Join(baseDir, path)
	}
	// A FIFO or device would block or never end; secrets mounted by
	// Docker and Kubernetes are regular files (through symlinks).
	fi, err := os.Stat(path)
	if err != nil {
		return "", "cannot read", err
	}
	if !fi.Mode().IsRegular() {
		return "", "is not a regular file", nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", "cannot read", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPasswordFile+1))
	if err != nil {
		return "", "cannot read", err
	}
	if len(data) > maxPasswordFile {
		return "", fmt.Sprintf("is larger than %d bytes; it should hold one password", maxPasswordFile), nil
	}
	s := string(data)
	if strings.HasSuffix(s, "\r\n") {
		s = s[:len(s)-2]
	} else if strings.HasSuffix(s, "\n") {
		s = s[:len(s)-1]
	}
	if s == "" {
		return "", "is empty", nil
	}
	return s, "", nil
}

func isHex(s string) bool {
	for i := range len(s) {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
