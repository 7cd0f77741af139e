package resolve

import (
	"cmp"
	"math/rand/v2"
	"slices"
)

// Order returns r's targets in the order one request tries them (RFC 2782,
// RFC 3263 §4.3): by priority, lowest first; within a priority, the SRV
// records in a weighted random draw, each record's addresses together in
// their listed order (the next address of a host before the next host).
//
// The draw is RFC 2782's: the next record is picked with a chance of its
// weight over the sum of the weights left, weight-0 records put first so
// they keep a small chance (1 in sum+1) among weighted ones; records all of
// weight 0 are drawn with equal chances. rnd is the source of randomness;
// nil uses math/rand/v2's global source. Targets found without SRV (one
// host, or an IP literal) come back in their listed order.
func (r Result) Order(rnd *rand.Rand) []Target {
	out := make([]Target, 0, len(r.Targets))
	sorted := slices.IsSortedFunc(r.Targets, byPriority)
	ts := r.Targets
	if !sorted {
		ts = slices.Clone(ts)
		slices.SortStableFunc(ts, byPriority)
	}
	for len(ts) > 0 {
		n := 1
		for n < len(ts) && ts[n].Priority == ts[0].Priority {
			n++
		}
		out = appendDrawn(out, groups(ts[:n]), rnd)
		ts = ts[n:]
	}
	return out
}

func byPriority(a, b Target) int { return cmp.Compare(a.Priority, b.Priority) }

// groups splits the targets of one priority into the SRV records they came
// from: a run of targets with the same name, port, transport and weight.
func groups(ts []Target) [][]Target {
	var gs [][]Target
	start := 0
	for i := 1; i <= len(ts); i++ {
		if i == len(ts) || !sameRecord(ts[i], ts[start]) {
			gs = append(gs, ts[start:i])
			start = i
		}
	}
	return gs
}

func sameRecord(a, b Target) bool {
	return a.Name == b.Name && a.Addr.Port() == b.Addr.Port() &&
		a.Transport == b.Transport && a.Weight == b.Weight
}

// appendDrawn appends the groups of one priority to out in a weighted
// random order (RFC 2782, "Usage rules").
func appendDrawn(out []Target, gs [][]Target, rnd *rand.Rand) []Target {
	if len(gs) == 1 {
		return append(out, gs[0]...)
	}
	// Weight-0 records first, so that a draw of 0 picks one of them.
	slices.SortStableFunc(gs, func(a, b []Target) int {
		return cmp.Compare(min(a[0].Weight, 1), min(b[0].Weight, 1))
	})
	var sum uint64
	for _, g := range gs {
		sum += uint64(g[0].Weight)
	}
	for len(gs) > 0 {
		i := 0
		if sum == 0 {
			i = intN(rnd, len(gs)) // all weight 0: equal chances
		} else {
			pick := uint64N(rnd, sum+1) // in [0, sum]
			var run uint64
			for i = range gs {
				run += uint64(gs[i][0].Weight)
				if run >= pick {
					break
				}
			}
		}
		out = append(out, gs[i]...)
		sum -= uint64(gs[i][0].Weight)
		gs = slices.Delete(gs, i, i+1)
	}
	return out
}

func intN(rnd *rand.Rand, n int) int {
	if rnd == nil {
		return rand.IntN(n)
	}
	return rnd.IntN(n)
}

func uint64N(rnd *rand.Rand, n uint64) uint64 {
	if rnd == nil {
		return rand.Uint64N(n)
	}
	return rnd.Uint64N(n)
}
