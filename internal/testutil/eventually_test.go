package testutil

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestWait(t *testing.T) {
	t.Run("ReturnsOnceTrue", func(t *testing.T) {
		var n atomic.Int32
		if err := Wait(t.Context(), time.Minute, func() bool { return n.Add(1) >= 3 }); err != nil {
			t.Fatalf("Wait: %v", err)
		}
		if got := n.Load(); got != 3 {
			t.Fatalf("cond called %d times, want 3", got)
		}
	})
	t.Run("LimitEndsIt", func(t *testing.T) {
		err := Wait(t.Context(), 5*time.Millisecond, func() bool { return false })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait = %v, want deadline exceeded", err)
		}
	})
	t.Run("ContextEndsIt", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := Wait(ctx, time.Minute, func() bool { return false }); !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait = %v, want canceled", err)
		}
	})
}
