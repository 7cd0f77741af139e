package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

// TestLogFormsOneWay: whatever handler writes them, durations are Go
// duration strings and nil lists are empty lists.
func TestLogFormsOneWay(t *testing.T) {
	var nilList []string
	for _, format := range []string{"json", "text", "tint"} {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			log := newLogger(&out, config.Log{Format: format}, slog.LevelInfo)
			log.Info("x", "grace", 5*time.Second, "took", 225*time.Microsecond, "any", any(2*time.Minute),
				"realms_answered", nilList, "restart_needed", []string{"listen"}, "group", slog.GroupValue(slog.Duration("d", time.Millisecond)))
			line := out.String()
			for _, want := range []string{"5s", "225µs", "2m0s", "1ms"} {
				if !strings.Contains(line, want) {
					t.Errorf("%s lacks %q", line, want)
				}
			}
			for _, bad := range []string{"5000000000", "null", "<nil>"} {
				if strings.Contains(line, bad) {
					t.Errorf("%s has %q", line, bad)
				}
			}
			if format != "json" {
				return
			}
			var rec map[string]any
			if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
				t.Fatal(err)
			}
			if got, ok := rec["realms_answered"].([]any); !ok || len(got) != 0 {
				t.Errorf("realms_answered = %#v, want []", rec["realms_answered"])
			}
			if rec["grace"] != "5s" {
				t.Errorf("grace = %#v, want \"5s\"", rec["grace"])
			}
		})
	}
}
