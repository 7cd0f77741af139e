package testutil

import (
	"strconv"
	"strings"
	"testing"
)

// Sample is one line of the Prometheus text exposition.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// ParseMetrics parses the Prometheus text format's sample lines.
func ParseMetrics(t *testing.T, text string) []Sample {
	t.Helper()
	var out []Sample
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := Sample{Labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(rest, "{ "); i >= 0 && rest[i] == '{' {
			s.Name = rest[:i]
			rest = rest[i+1:]
			for !strings.HasPrefix(rest, "}") {
				k, after, ok := strings.Cut(rest, `="`)
				if !ok {
					t.Fatalf("bad metric line %q", line)
				}
				var v strings.Builder
				j := 0
				for ; j < len(after) && after[j] != '"'; j++ {
					if after[j] == '\\' && j+1 < len(after) {
						j++
					}
					v.WriteByte(after[j])
				}
				s.Labels[k] = v.String()
				rest = strings.TrimPrefix(after[j+1:], ",")
			}
			rest = strings.TrimSpace(rest[1:])
		} else {
			name, after, _ := strings.Cut(rest, " ")
			s.Name, rest = name, after
		}
		valStr, _, _ := strings.Cut(rest, " ")
		v, err := strconv.ParseFloat(valStr, 64)
		if err != nil {
			t.Fatalf("bad value in %q: %v", line, err)
		}
		s.Value = v
		out = append(out, s)
	}
	return out
}

// Metrics is a scrape of /metrics.
type Metrics []Sample

// Sum adds the values of the samples called name whose labels include
// every pair of match; found is false when none matched.
func (ms Metrics) Sum(name string, match map[string]string) (total float64, found bool) {
	for _, s := range ms {
		if s.Name != name {
			continue
		}
		ok := true
		for k, v := range match {
			if s.Labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			total += s.Value
			found = true
		}
	}
	return total, found
}

// ExpectMetric fails unless samples match and their sum is want; a
// missing series fails, whatever want is.
func ExpectMetric(t *testing.T, ms Metrics, name string, match map[string]string, want float64) {
	t.Helper()
	got, found := ms.Sum(name, match)
	if !found {
		t.Errorf("%s%v: no sample, want %v", name, match, want)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, match, got, want)
	}
}

// ExpectMetricZeroOrAbsent fails unless the matching samples sum to 0 or
// there are none: for a labelled counter, which exists only once counted.
func ExpectMetricZeroOrAbsent(t *testing.T, ms Metrics, name string, match map[string]string) {
	t.Helper()
	if got, _ := ms.Sum(name, match); got != 0 {
		t.Errorf("%s%v = %v, want 0 or no sample", name, match, got)
	}
}

// Labels are the label pairs a metric sample must have.
type Labels = map[string]string
