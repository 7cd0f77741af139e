package resolve

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestOrder_PriorityFirst(t *testing.T) {
	res := Result{Targets: []Target{
		target(UDP, "127.0.0.4:5060", "c.test", 30, 10),
		target(UDP, "127.0.0.2:5060", "a.test", 10, 10),
		target(UDP, "127.0.0.3:5060", "b.test", 20, 10),
		target(UDP, "127.0.0.5:5060", "d.test", 10, 90),
	}}
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 100 {
		got := res.Order(rnd)
		if !slices.IsSortedFunc(got, byPriority) || len(got) != len(res.Targets) {
			t.Fatalf("Order = %v, want every target, by priority", got)
		}
	}
}

// TestOrder_AddressesOfARecordTogether: the addresses of one SRV target
// are tried one after the other, in their order, before the next target.
func TestOrder_AddressesOfARecordTogether(t *testing.T) {
	a1 := target(UDP, "127.0.0.2:5060", "a.test", 10, 50)
	a2 := target(UDP, "[::2]:5060", "a.test", 10, 50)
	b := target(UDP, "127.0.0.3:5060", "b.test", 10, 50)
	res := Result{Targets: []Target{a1, a2, b}}
	rnd := rand.New(rand.NewPCG(3, 4))
	seen := map[string]bool{}
	for range 200 {
		got := res.Order(rnd)
		switch {
		case slices.Equal(got, []Target{a1, a2, b}):
			seen["a first"] = true
		case slices.Equal(got, []Target{b, a1, a2}):
			seen["b first"] = true
		default:
			t.Fatalf("Order = %v: a.test's addresses split or reordered", got)
		}
	}
	if len(seen) != 2 {
		t.Fatalf("in 200 draws only %v came", seen)
	}
}

// TestOrder_Weights: the chance of a record coming first is its weight
// over the sum of weights plus one (RFC 2782); a weight-0 record keeps a
// chance of 1 in sum+1; records all of weight 0 have equal chances. The
// random source is seeded, so the counts are the same at every run.
func TestOrder_Weights(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint16
		want    []float64 // chance of each record coming first
	}{
		{"RFC2782", []uint16{60, 0, 10, 30}, []float64{60.0 / 101, 1.0 / 101, 10.0 / 101, 30.0 / 101}},
		{"AllZero", []uint16{0, 0, 0}, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}},
		{"OneWeighted", []uint16{0, 1000}, []float64{1.0 / 1001, 1000.0 / 1001}},
	}
	const draws = 40000
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var res Result
			for i, w := range tc.weights {
				res.Targets = append(res.Targets, Target{Transport: UDP, Name: string(rune('a' + i)), Weight: w, Priority: 1})
			}
			rnd := rand.New(rand.NewPCG(5, 6))
			first := make([]int, len(tc.weights))
			for range draws {
				got := res.Order(rnd)
				first[int(got[0].Name[0]-'a')]++
			}
			for i, p := range tc.want {
				// Four standard deviations of a binomial count, at least 5.
				tolerance := max(5, 4*math.Sqrt(draws*p*(1-p)))
				if diff := float64(first[i]) - draws*p; diff > tolerance || diff < -tolerance {
					t.Errorf("record %d (weight %d) first %d times in %d, want %.0f ± %.0f",
						i, tc.weights[i], first[i], draws, draws*p, tolerance)
				}
			}
		})
	}
}

func TestOrder_Degenerate(t *testing.T) {
	if got := (Result{}).Order(nil); len(got) != 0 {
		t.Fatalf("empty Order = %v", got)
	}
	lit, _ := literal(Query{Host: "192.0.2.1"})
	if got := lit.Order(nil); !slices.Equal(got, lit.Targets) {
		t.Fatalf("literal Order = %v, want %v", got, lit.Targets)
	}
	// Order copies: the caller may change what it gets.
	res := Result{Targets: []Target{target(UDP, "127.0.0.2:5060", "a.test", 0, 0)}}
	res.Order(nil)[0].Name = "changed"
	if res.Targets[0].Name != "a.test" {
		t.Fatal("Order returned the result's own slice")
	}
}
