package proxy

import (
	"context"
	"log/slog"
)

// lazyAttrs is a slog.Handler that adds attrs to the records it passes to
// base, but only formats them when a record is actually written. Every
// request gets a logger carrying its method and Call-ID; with the JSON and
// text handlers, Logger.With formats those attributes at once, which on a
// busy proxy that logs nothing per request was a measurable share of the
// CPU spent per request.
type lazyAttrs struct {
	base  slog.Handler
	attrs []slog.Attr
}

// withLazyAttrs returns log with args (key, value pairs, as Logger.With)
// added only when a record is written.
func withLazyAttrs(log *slog.Logger, args ...any) *slog.Logger {
	return slog.New(&lazyAttrs{base: log.Handler(), attrs: argsToAttrs(args)})
}

func argsToAttrs(args []any) []slog.Attr {
	attrs := make([]slog.Attr, 0, len(args)/2)
	for len(args) > 0 {
		switch k := args[0].(type) {
		case slog.Attr:
			attrs = append(attrs, k)
			args = args[1:]
		case string:
			if len(args) == 1 {
				attrs = append(attrs, slog.String("!BADKEY", k))
				args = nil
				continue
			}
			attrs = append(attrs, slog.Any(k, args[1]))
			args = args[2:]
		default:
			attrs = append(attrs, slog.Any("!BADKEY", k))
			args = args[1:]
		}
	}
	return attrs
}

func (h *lazyAttrs) Enabled(ctx context.Context, l slog.Level) bool {
	return h.base.Enabled(ctx, l)
}

func (h *lazyAttrs) Handle(ctx context.Context, r slog.Record) error {
	return h.base.WithAttrs(h.attrs).Handle(ctx, r)
}

func (h *lazyAttrs) WithAttrs(attrs []slog.Attr) slog.Handler {
	all := make([]slog.Attr, 0, len(h.attrs)+len(attrs))
	return &lazyAttrs{base: h.base, attrs: append(append(all, h.attrs...), attrs...)}
}

func (h *lazyAttrs) WithGroup(name string) slog.Handler {
	return h.base.WithAttrs(h.attrs).WithGroup(name)
}
