package main

import (
	"math"
	"runtime"
	"runtime/debug"

	"github.com/authproxy/authproxy/config"
)

// applyRuntime sets the Go runtime settings of [runtime] that are not zero
// (a zero leaves Go's default and its GOMAXPROCS, GOGC and GOMEMLIMIT
// environment variables in charge) and returns the settings in effect as
// log attributes.
func applyRuntime(r config.Runtime) []any {
	if r.MaxProcs > 0 {
		runtime.GOMAXPROCS(r.MaxProcs)
	}
	if r.GCPercent != 0 {
		debug.SetGCPercent(r.GCPercent)
	}
	if r.MemoryLimit > 0 {
		debug.SetMemoryLimit(r.MemoryLimit)
	}
	limit := any("none")
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 { // a negative input only reads it
		limit = l
	}
	gc := any("default")
	if r.GCPercent != 0 {
		gc = r.GCPercent
	}
	return []any{"gomaxprocs", runtime.GOMAXPROCS(0), "gc_percent", gc, "memory_limit", limit}
}
