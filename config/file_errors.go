package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// Faults of the file described in its own terms: unknown keys (with a
// suggestion), TOML type names, values shown or redacted.

// checkKeys reports every key of m (at path) that t has no field for, and
// deletes it from m so that decoding does not report it a second time. It
// recurses into tables and arrays of tables. Values of unknown keys are not
// shown: a misspelt "pasword" still holds a password.
func (v *validator) checkKeys(path string, m map[string]any, t reflect.Type) {
	fields := map[string]reflect.StructField{}
	for i := range t.NumField() {
		f := t.Field(i)
		fields[f.Tag.Get("koanf")] = f
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		key := joinKey(path, name)
		f, ok := fields[name]
		if !ok {
			v.add(key, "", "unknown key"+suggest(name, fields), ErrUnknownKey, nil)
			delete(m, name)
			continue
		}
		switch ft := f.Type; {
		case ft.Kind() == reflect.Struct:
			if sub, ok := m[name].(map[string]any); ok {
				v.checkKeys(key, sub, ft)
			}
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			switch val := m[name].(type) {
			case []any:
				for i, e := range val {
					if sub, ok := e.(map[string]any); ok {
						v.checkKeys(fmt.Sprintf("%s[%d]", key, i), sub, ft.Elem())
					}
				}
			case []map[string]any:
				for i, sub := range val {
					v.checkKeys(fmt.Sprintf("%s[%d]", key, i), sub, ft.Elem())
				}
			case map[string]any:
				// The commonest TOML slip: [listen] instead of [[listen]].
				v.add(key, "", fmt.Sprintf("must be an array of tables: write [[%s]], not [%s]", name, name), ErrInvalid, nil)
				v.bad[key] = true
				delete(m, name)
			}
		}
	}
}

// suggest returns a "did you mean" hint for an unknown key, or "".
func suggest(name string, fields map[string]reflect.StructField) string {
	if strings.Contains(name, ".") {
		return ` (a quoted key cannot contain "."; use a [table] header or a bare dotted key)`
	}
	best, bestDist := "", 3 // at most two edits away
	for known := range fields {
		if d := editDistance(name, known); d < bestDist || d == bestDist && known < best {
			best, bestDist = known, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// joinKey appends a key to a path, quoting it when it is not a plain
// identifier so that odd keys ("a.b", "", control characters) read
// unambiguously.
func joinKey(path, name string) string {
	if !plainKey(name) {
		name = strconv.Quote(name)
	}
	if path == "" {
		return name
	}
	return path + "." + name
}

func plainKey(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// typeRule says what a key should hold, in TOML terms, from the schema
// rather than from mapstructure's wording: "must be an integer, not a
// string".
func typeRule(key string, raw any, err error) string {
	want := schemaType(key)
	if want == nil {
		if err == nil {
			return "cannot decode"
		}
		return err.Error()
	}
	name := tomlTypeName(want)
	if isDurationKey(lastSegment(key)) {
		name = `a duration string such as "5s"`
	}
	return "must be " + name + ", not " + tomlValueName(raw)
}

// schemaType returns the file type a key path such as
// "upstream[1].domains[0]" decodes into, or nil.
func schemaType(key string) reflect.Type {
	t := fileConfigType
	for part := range strings.SplitSeq(key, ".") {
		name, _, _ := strings.Cut(part, "[")
		if t.Kind() != reflect.Struct {
			return nil
		}
		var found bool
		for i := range t.NumField() {
			if f := t.Field(i); f.Tag.Get("koanf") == name {
				t, found = f.Type, true
				break
			}
		}
		if !found {
			return nil
		}
		for range strings.Count(part, "[") { // one element type per index
			if t.Kind() != reflect.Slice {
				return nil
			}
			t = t.Elem()
		}
	}
	return t
}

func tomlTypeName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int64:
		return "an integer"
	case reflect.Bool:
		return "true or false"
	case reflect.Struct:
		return "a table"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Struct {
			return "an array of tables"
		}
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(tomlTypeName(t.Elem()), "a "), "an ") + "s"
	}
	return t.String()
}

func tomlValueName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64, int:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case nil:
		return "nothing"
	}
	return fmt.Sprintf("a %T", v) // TOML date/time types
}

// showValue renders a raw value for an error: scalars quoted or printed,
// composites described, secrets redacted.
func showValue(key string, v any) string {
	if isSecretKey(lastSegment(key)) {
		return redacted
	}
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case int64, float64, bool:
		return fmt.Sprint(x)
	}
	return ""
}

// lastSegment returns the last field name of a key path, without indexes:
// "credential[0].password" → "password", "upstream[1].domains[0]" →
// "domains".
func lastSegment(key string) string {
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		key = key[i+1:]
	}
	if i := strings.IndexByte(key, '['); i >= 0 {
		key = key[:i]
	}
	return key
}

// lookupPath finds the raw value at a mapstructure key path such as
// "upstream[1].domains[0]". It only has to handle schema keys, which are
// plain identifiers.
func lookupPath(root map[string]any, key string) any {
	var cur any = root
	for part := range strings.SplitSeq(key, ".") {
		name, rest, _ := strings.Cut(part, "[")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[name]
		for rest != "" {
			idx, after, ok := strings.Cut(rest, "]")
			if !ok {
				return nil
			}
			n, err := strconv.Atoi(idx)
			arr, isArr := cur.([]any)
			if err != nil || !isArr || n < 0 || n >= len(arr) {
				return nil
			}
			cur = arr[n]
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return cur
}
