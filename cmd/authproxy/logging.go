package main

import (
	"log/slog"
	"reflect"
	"time"
)

// replaceLogAttr is the one place log values take their written form,
// whichever handler writes them:
//   - a time.Duration is a Go duration string ("225µs", "5s", "2m0s"), as
//     the request line's duration always was: what operators read, and
//     what Go's time.ParseDuration and Loki's duration filters parse. The
//     JSON handler would otherwise write nanoseconds as an integer.
//   - a nil slice is an empty list, [] in JSON, never null: a field
//     holding a list holds one on every line.
func replaceLogAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindDuration:
		return slog.String(a.Key, a.Value.Duration().String())
	case slog.KindAny:
		v := a.Value.Any()
		if d, ok := v.(time.Duration); ok {
			return slog.String(a.Key, d.String())
		}
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice && rv.IsNil() {
			return slog.Any(a.Key, reflect.MakeSlice(rv.Type(), 0, 0).Interface())
		}
	}
	return a
}
