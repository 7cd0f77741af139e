package state

import (
	"context"
	"testing"
)

// TestFile_WriteVisibleWhileCommitting: a write stays readable and counted
// as pending while the commit that covers it is in flight, and is no
// longer pending once that commit returned.
func TestFile_WriteVisibleWhileCommitting(t *testing.T) {
	f, err := OpenFile(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	ctx := context.Background()
	if err := f.Put(ctx, "k", []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	// An open write transaction holds the commit back (bbolt has one
	// writer at a time).
	blocker, err := f.db.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	flushed := make(chan error, 1)
	go func() { flushed <- f.Flush() }()
	// Whether or not the commit has taken its copy yet, the write must be
	// readable and pending.
	if v, err := f.Get(ctx, "k"); err != nil || string(v) != "v1" {
		t.Fatalf("Get during the commit: %q, %v; want v1", v, err)
	}
	if n := f.Pending(); n != 1 {
		t.Fatalf("Pending during the commit: %d, want 1", n)
	}
	if err := f.Put(ctx, "k", []byte("v2"), 0); err != nil { // newer than what the commit may have copied
		t.Fatal(err)
	}
	if err := blocker.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); err != nil { // commits v2 if the first commit had copied v1
		t.Fatal(err)
	}
	if n := f.Pending(); n != 0 {
		t.Fatalf("Pending after the commits: %d, want 0", n)
	}
	if v, err := f.Get(ctx, "k"); err != nil || string(v) != "v2" {
		t.Fatalf("Get after the commits: %q, %v; want v2", v, err)
	}
}
