// Package testutil holds the helpers authproxy's tests share.
package testutil

import (
	"context"
	"testing"
	"time"
)

// EventuallyLimit bounds how long Eventually waits. It is long on purpose:
// the suite must pass on a busy machine, so the limit only ends a wait for
// something that will never happen; a condition that holds returns at
// once.
const EventuallyLimit = 30 * time.Second

// Eventually polls cond until it reports true and fails the test, naming
// what, if that has not happened within EventuallyLimit or before the
// test's context ends. Use it to wait for an event a test cannot be told
// of directly (a counter, a log line, a table size); never to wait for
// time to pass.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if err := Wait(t.Context(), EventuallyLimit, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// Wait polls cond until it reports true, ctx ends or limit passes. The
// first poll is immediate, then every millisecond growing to 50 ms.
func Wait(ctx context.Context, limit time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	pause := time.Millisecond
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			if cond() {
				return nil
			}
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}
