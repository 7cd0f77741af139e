package config

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// schemaKeys returns the keys of a table's struct type t, by their koanf
// tags; the keys of a nested array of tables (client.user) are returned
// too, with their own.
func schemaKeys(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("koanf")
		if name == "" || name == "-" {
			continue
		}
		out = append(out, name)
		ft := f.Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			out = append(out, schemaKeys(ft)...)
		}
	}
	return out
}

// TestKeyTableDocumentsSchema: docs/configuration.md's table of keys has
// a row for every table of the file, and names every key the file may
// hold in its table's row.
func TestKeyTableDocumentsSchema(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `\\[{1,2}([a-z]+)\\]{1,2}` \\| (.*) \\|$")
	rows := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			rows[m[1]] = m[2]
		}
	}
	root := reflect.TypeFor[fileConfig]()
	keys := 0
	for i := range root.NumField() {
		f := root.Field(i)
		table := f.Tag.Get("koanf")
		text, ok := rows[table]
		if !ok {
			t.Errorf("docs/configuration.md has no row for the %s table", table)
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		for _, k := range schemaKeys(ft) {
			keys++
			if !strings.Contains(text, "`"+k+"`") && !strings.Contains(text, "`[["+table+"."+k+"]]`") {
				t.Errorf("docs/configuration.md's %s row does not name the key %s", table, k)
			}
		}
	}
	if keys < 60 {
		t.Errorf("checked %d keys: the schema walk found too few", keys)
	}
}

// TestKeyTableDefaults: where docs/configuration.md's key table gives a
// key of a single table its default ("`key` (`value`" or "`a` / `b`
// (`x` / `y`"), that is the default the file gets.
func TestKeyTableDefaults(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	v := &validator{opts: options{lookupEnv: func(string) (string, bool) { return "", false }}, bad: map[string]bool{}}
	raw, err := v.load(nil)
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `\\[([a-z]+)\\]` \\| (.*) \\|$")
	one := regexp.MustCompile("`([a-z_0-9]+)` \\(`([^`]+)`")
	pair := regexp.MustCompile("`([a-z_0-9]+)` / `([a-z_0-9]+)` \\(`([^`]+)` / `([^`]+)`")
	checked := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for sc.Scan() {
		m := row.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		table, text := m[1], m[2]
		defaults, _ := raw[table].(map[string]any)
		documented := map[string]string{}
		for _, d := range one.FindAllStringSubmatch(text, -1) {
			documented[d[1]] = d[2]
		}
		for _, d := range pair.FindAllStringSubmatch(text, -1) {
			documented[d[1]], documented[d[2]] = d[3], d[4]
		}
		for key, doc := range documented {
			def, ok := defaults[key]
			if !ok {
				t.Errorf("docs/configuration.md gives %s.%s the default %s; the file has no default for it", table, key, doc)
				continue
			}
			checked++
			if got := tomlValue(def); got != doc {
				t.Errorf("docs/configuration.md: %s.%s defaults to %s; the file's default is %s", table, key, doc, got)
			}
		}
	}
	if checked < 30 {
		t.Errorf("checked %d documented defaults, want the key table's", checked)
	}
}

// tomlValue writes a default as the key table does: strings quoted.
func tomlValue(v any) string {
	switch v := v.(type) {
	case string:
		return `"` + v + `"`
	case []any:
		if len(v) == 0 {
			return "[]"
		}
	}
	return fmt.Sprint(v)
}
