package credentials_test

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/credentials"
)

// rawSecret and rawHA1 are distinctive values that must never be printed.
const (
	rawSecret = "s3cr3t-Hunter2-XYZZY"
	rawHA1    = "feedfacecafebeef0123456789abcdef"
)

// redactionFixtures builds the values the redaction tests print.
func redactionFixtures(t *testing.T) (credentials.Secret, credentials.Credential, credentials.Entry, *credentials.Store) {
	t.Helper()
	sec := credentials.NewSecret(rawSecret)
	e := credentials.Entry{
		Username: "alice",
		Password: sec,
		HA1:      map[string]credentials.Secret{credentials.MD5: credentials.NewSecret(rawHA1)},
		Server:   "pbx-a",
		Realm:    "asterisk",
	}
	s := mustStore(t, e)
	c := s.Lookup("pbx-a:5060", "asterisk", "bob")
	if c.Password.Reveal() != rawSecret {
		t.Fatalf("fixture lookup returned %v", c)
	}
	return sec, c, e, s
}

func assertRedacted(t *testing.T, out string) {
	t.Helper()
	for _, raw := range []string{rawSecret, rawHA1} {
		if strings.Contains(out, raw) {
			t.Errorf("output contains a secret: %s", out)
		}
		// %x of the raw value would be a leak too.
		if hex := fmt.Sprintf("%x", raw); strings.Contains(out, hex) {
			t.Errorf("output contains a hex-encoded secret: %s", out)
		}
	}
}

func TestSecretRedactsInFmt(t *testing.T) {
	sec, cred, e, store := redactionFixtures(t)
	type exported struct {
		Name   string
		Secret credentials.Secret
	}
	type unexported struct {
		name   string
		secret credentials.Secret // fmt cannot call methods on it
		cred   credentials.Credential
	}
	values := map[string]any{
		"Secret":                         sec,
		"*Secret":                        &sec,
		"Credential":                     cred,
		"*Credential":                    &cred,
		"Entry":                          e,
		"struct with exported Secret":    exported{"x", sec},
		"struct with unexported Secret":  unexported{"x", sec, cred},
		"*struct with unexported Secret": &unexported{"x", sec, cred},
		"[]Secret":                       []credentials.Secret{sec},
		"map of Secret":                  map[string]credentials.Secret{"k": sec},
		"[]any":                          []any{sec, cred},
		"*Store":                         store,
		"Store copy":                     *store,
	}
	verbs := []string{"%s", "%v", "%+v", "%#v", "%q", "%x", "%X", "%d", "%T %v", "%20s", "%-8v"}
	for name, v := range values {
		for _, verb := range verbs {
			t.Run(name+" "+verb, func(t *testing.T) {
				var out string
				if strings.Count(verb, "%") == 2 {
					out = fmt.Sprintf(verb, v, v)
				} else {
					out = fmt.Sprintf(verb, v)
				}
				assertRedacted(t, out)
			})
		}
		t.Run(name+" Sprint Sprintln Fprint", func(t *testing.T) {
			var buf bytes.Buffer
			fmt.Fprint(&buf, v)
			fmt.Fprintln(&buf, v, v)
			assertRedacted(t, fmt.Sprint(v)+fmt.Sprintln(v)+buf.String())
		})
	}
	t.Run("Secret prints as [redacted]", func(t *testing.T) {
		if sec.String() != "[redacted]" || sec.GoString() != "[redacted]" {
			t.Errorf("String/GoString = %q/%q", sec.String(), sec.GoString())
		}
		if got := fmt.Sprintf("%s|%v|%#v|%q", sec, sec, sec, sec); got != "[redacted]|[redacted]|[redacted]|[redacted]" {
			t.Errorf("got %q", got)
		}
	})
	t.Run("Reveal still returns the value", func(t *testing.T) {
		if sec.Reveal() != rawSecret || sec.IsZero() {
			t.Error("Reveal/IsZero broken")
		}
		if !credentials.NewSecret("").IsZero() || (credentials.Secret{}).Reveal() != "" {
			t.Error("zero Secret is not empty")
		}
		if !reflect.DeepEqual(credentials.NewSecret("a"), credentials.NewSecret("a")) || reflect.DeepEqual(credentials.NewSecret("a"), credentials.NewSecret("b")) {
			t.Error("reflect.DeepEqual does not compare Secret content")
		}
		if credentials.NewSecret("") != (credentials.Secret{}) {
			t.Error(`NewSecret("") is not the zero Secret`)
		}
	})
}

func TestSecretRedactsInSlog(t *testing.T) {
	sec, cred, e, store := redactionFixtures(t)
	handlers := map[string]func(*bytes.Buffer) slog.Handler{
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	}
	for hname, newHandler := range handlers {
		t.Run(hname, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(newHandler(&buf))
			log.Info("secret", "secret", sec, "ptr", &sec)
			log.Info("credential", "cred", cred, slog.Any("credptr", &cred))
			log.Info("entry", "entry", e, "store", store)
			log.Info("group", slog.Group("g", "secret", sec, "cred", cred))
			log.With("secret", sec).Error("with", "err", fmt.Errorf("using %v: %w", sec, errors.New("boom")))
			assertRedacted(t, buf.String())
			if !strings.Contains(buf.String(), "alice") || !strings.Contains(buf.String(), "asterisk") {
				t.Errorf("credential username/scope missing from log: %s", buf.String())
			}
		})
	}
	t.Run("credential LogValue shows scope", func(t *testing.T) {
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "cred", cred)
		want := "cred.username=alice cred.server=pbx-a cred.realm=asterisk cred.user=* cred.anonymous=false"
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log line %q lacks %q", buf.String(), want)
		}
	})
}

func TestSecretRedactsInEncodings(t *testing.T) {
	sec, cred, e, _ := redactionFixtures(t)
	holder := struct {
		Secret     credentials.Secret
		SecretPtr  *credentials.Secret
		Credential credentials.Credential
		Entry      credentials.Entry
	}{sec, &sec, cred, e}
	t.Run("json.Marshal", func(t *testing.T) {
		b, err := json.Marshal(holder)
		if err != nil {
			t.Fatal(err)
		}
		assertRedacted(t, string(b))
		if !strings.Contains(string(b), `"Secret":"[redacted]"`) {
			t.Errorf("json = %s, want Secret shown as [redacted]", b)
		}
	})
	t.Run("json.MarshalIndent of map", func(t *testing.T) {
		b, err := json.MarshalIndent(map[string]any{"s": sec, "c": cred}, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		assertRedacted(t, string(b))
	})
	t.Run("xml.Marshal", func(t *testing.T) {
		b, err := xml.Marshal(struct {
			XMLName xml.Name           `xml:"x"`
			S       credentials.Secret `xml:"s"`
			A       credentials.Secret `xml:"a,attr"`
		}{S: sec, A: sec})
		if err != nil {
			t.Fatal(err)
		}
		assertRedacted(t, string(b))
	})
}

func TestSecretRedactsInErrors(t *testing.T) {
	sec, cred, _, _ := redactionFixtures(t)
	base := errors.New("digest failed")
	errs := map[string]error{
		"Errorf %v":         fmt.Errorf("password %v: %w", sec, base),
		"Errorf %s %q":      fmt.Errorf("password %s %q: %w", sec, sec, base),
		"Errorf %+v cred":   fmt.Errorf("cred %+v: %w", cred, base),
		"Errorf %#v cred":   fmt.Errorf("cred %#v: %w", cred, base),
		"nested wrap":       fmt.Errorf("outer: %w", fmt.Errorf("inner %v: %w", sec, base)),
		"errors.Join":       errors.Join(fmt.Errorf("a %v", sec), fmt.Errorf("b %v", cred)),
		"Errorf %v secret*": fmt.Errorf("ptr %v: %w", &sec, base),
	}
	for name, err := range errs {
		t.Run(name, func(t *testing.T) {
			assertRedacted(t, err.Error())
			assertRedacted(t, fmt.Sprintf("%+v %#v", err, err))
			if !errors.Is(err, base) && name != "errors.Join" {
				t.Errorf("wrapping lost")
			}
		})
	}
}
