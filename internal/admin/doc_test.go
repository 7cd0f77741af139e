package admin

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// jsonFields returns the JSON names of t's fields, and of the fields of the
// structs it holds (in slices and pointers too), as "path.name".
func jsonFields(t reflect.Type, prefix string, out map[string]bool) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == reflect.TypeFor[time.Time]() {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[prefix+name] = true
		jsonFields(f.Type, prefix+name+".", out)
	}
}

// TestStatusFieldsDocumented: every field of the /status document is
// named in docs/operations.md's description of it.
func TestStatusFieldsDocumented(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	var row string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "| `/status` |") {
			row = sc.Text()
		}
	}
	if row == "" {
		t.Fatal("docs/operations.md has no /status row")
	}
	fields := map[string]bool{}
	jsonFields(reflect.TypeFor[Status](), "", fields)
	if len(fields) < 40 {
		t.Fatalf("found %d fields in Status: the check would prove little", len(fields))
	}
	for path := range fields {
		name := path[strings.LastIndex(path, ".")+1:]
		if !strings.Contains(row, "`"+name+"`") {
			t.Errorf("/status field %s is not in docs/operations.md", path)
		}
	}
}
