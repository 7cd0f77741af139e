package config

import (
	"bufio"
	"bytes"
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
