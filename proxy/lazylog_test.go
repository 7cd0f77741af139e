package proxy

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestLazyAttrsMatchesWith(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []any
	}{
		{"pairs", []any{"method", "INVITE", "call_id", "abc@h"}},
		{"attr", []any{slog.Int("n", 3), "k", "v"}},
		{"odd", []any{"k", "v", "dangling"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var eager, lazy bytes.Buffer
			opts := &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			}}
			slog.New(slog.NewJSONHandler(&eager, opts)).With(tc.args...).With("more", 1).Info("msg", "x", 2)
			withLazyAttrs(slog.New(slog.NewJSONHandler(&lazy, opts)), tc.args...).With("more", 1).Info("msg", "x", 2)
			if eager.String() != lazy.String() {
				t.Errorf("lazy logger wrote\n%s\nwant (Logger.With)\n%s", lazy.String(), eager.String())
			}
		})
	}
	var buf bytes.Buffer
	l := withLazyAttrs(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})), "k", "v")
	l.Info("dropped")
	l.WithGroup("g").Warn("kept", "a", 1)
	if got := buf.String(); strings.Contains(got, "dropped") || !strings.Contains(got, "k=v") || !strings.Contains(got, "g.a=1") {
		t.Errorf("got %q", got)
	}
}
