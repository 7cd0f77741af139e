package proxy

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

func TestCSeqTable(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	k := cseqKey{callID: "c1@host", fromTag: "t1"}
	other := cseqKey{callID: "c1@host", fromTag: "t2"}
	for _, tc := range []struct {
		name  string
		steps func(tb *cseqTable)
		at    time.Time // when the sweep runs
		want  map[cseqKey]uint32
	}{
		{name: "offsets add up per key", steps: func(tb *cseqTable) {
			tb.add(k, 1, t0, time.Minute)
			tb.add(k, 2, t0, time.Minute)
			tb.add(other, 1, t0, time.Minute)
		}, at: t0, want: map[cseqKey]uint32{k: 3, other: 1}},
		{name: "expired after its ttl", steps: func(tb *cseqTable) {
			tb.add(k, 1, t0, time.Minute)
		}, at: t0.Add(time.Minute + time.Nanosecond), want: map[cseqKey]uint32{k: 0}},
		{name: "kept at its expiry", steps: func(tb *cseqTable) {
			tb.add(k, 1, t0, time.Minute)
		}, at: t0.Add(time.Minute), want: map[cseqKey]uint32{k: 1}},
		{name: "touch extends", steps: func(tb *cseqTable) {
			tb.add(k, 1, t0, time.Minute)
			tb.touch(k, t0.Add(50*time.Second), time.Minute)
		}, at: t0.Add(100 * time.Second), want: map[cseqKey]uint32{k: 1}},
		{name: "a shorter ttl never shortens", steps: func(tb *cseqTable) {
			tb.add(k, 1, t0, time.Hour)
			tb.add(k, 1, t0, time.Second)
			tb.touch(k, t0, time.Second)
		}, at: t0.Add(time.Minute), want: map[cseqKey]uint32{k: 2}},
		{name: "touch creates nothing", steps: func(tb *cseqTable) {
			tb.touch(k, t0, time.Hour)
		}, at: t0, want: map[cseqKey]uint32{k: 0}},
		{name: "removed", steps: func(tb *cseqTable) {
			tb.add(k, 1, t0, time.Hour)
			tb.add(other, 1, t0, time.Hour)
			tb.remove(k)
		}, at: t0, want: map[cseqKey]uint32{k: 0, other: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := newCSeqTable()
			tc.steps(tb)
			tb.sweep(tc.at)
			for key, want := range tc.want {
				if got := tb.offset(key); got != want {
					t.Errorf("offset(%v) = %d, want %d", key, got, want)
				}
			}
		})
	}
}

// BenchmarkCSeqTable fills the table with the offsets of n challenged
// out-of-dialog requests (a Call-ID and From tag each, as SIPp makes them)
// and reports the heap each costs; ns/op is how long the 30 s sweep holds
// the table's lock over them (one sweep that removes nothing).
func BenchmarkCSeqTable(b *testing.B) {
	for _, n := range []int{10_000, 300_000} {
		b.Run(fmt.Sprintf("offsets=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			now := time.Now()
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			tb := newCSeqTable()
			for i := range n {
				// As parsed from a message: the key's strings are cut
				// from longer header values.
				callID := fmt.Sprintf("%d-1234@192.0.2.10;padding-of-a-header-line", i)
				tb.add(cseqKey{callID: callID[:len(callID)-28], fromTag: "tag" + callID[:8]}, 1, now, cseqIdleTTL)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			for b.Loop() {
				tb.sweep(now)
			}
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "heap-B/offset")
			runtime.KeepAlive(tb)
		})
	}
}
