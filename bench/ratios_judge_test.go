package bench

import (
	"strings"
	"testing"
	"time"
)

// TestJudge covers the verdicts of TestBench's ratios, the bounds of the
// rate search included: a maximum at the highest step is a lower bound, a
// failed first step an upper one.
func TestJudge(t *testing.T) {
	k := kind{rates: []int{1000, 2000, 4000, 8000}}
	exact := func(rate int) result { return result{rate: rate} }
	top := result{rate: 8000, top: true}
	none := result{}
	for _, c := range []struct {
		name           string
		num, den       result
		goal           float64
		value, verdict string
	}{
		{"exact pass", exact(8000), exact(4000), 2, "2.00×", "pass"},
		{"exact fail", exact(4000), exact(4000), 1.5, "1.00×", "fail"},
		{"numerator at the top, already enough", top, exact(2000), 2, "≥ 4.00×", "pass"},
		{"numerator at the top, not enough yet", top, exact(8000), 2, "1.00×–∞", "open: widen the steps"},
		{"denominator at the top, short whatever it is", exact(4000), top, 0.9, "≤ 0.50×", "fail"},
		{"denominator at the top, could be enough", top, top, 0.9, "0.00×–∞", "open: widen the steps"},
		{"numerator under the first step", none, exact(2000), 1, "≤ 0.50×", "fail"},
		{"denominator under the first step", exact(4000), none, 2, "≥ 4.00×", "pass"},
		{"denominator under the first step, could be short", exact(1000), none, 2, "1.00×–∞", "open: widen the steps"},
	} {
		t.Run(c.name, func(t *testing.T) {
			value, verdict := judge(c.num, c.den, k, c.goal)
			if value != c.value || verdict != c.verdict {
				t.Errorf("judge = %q, %q; want %q, %q", value, verdict, c.value, c.verdict)
			}
		})
	}
}

// TestWriteRatios: the ratios of the kinds and paths that ran, OPTIONS
// standing in for MESSAGE, none when the reference path did not run.
func TestWriteRatios(t *testing.T) {
	kinds := []kind{{key: "options", label: "challenged OPTIONS", rates: []int{1000}}, {key: "call", label: "call", rates: []int{100}}}
	res := map[string]map[string]result{
		"all":      {"options": {rate: 8000}, "call": {rate: 1500}},
		"kamailio": {"options": {rate: 4000}, "call": {rate: 1000}},
	}
	var b strings.Builder
	writeRatios(&b, kinds, res)
	for _, want := range []string{
		"| OPTIONS, default / Kamailio | 8000/s / 4000/s | 2.00× | ≥ 2.0× | pass |",
		"| call, default / Kamailio | 1500/s / 1000/s | 1.50× | ≥ 1.5× | pass |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("no %q in\n%s", want, b.String())
		}
	}
	if n := strings.Count(b.String(), "\n| ") - 1; n != 2 { // the head row aside
		t.Errorf("%d ratio rows, want 2 (the paths off and direct did not run):\n%s", n, b.String())
	}
	b.Reset()
	writeRatios(&b, kinds, map[string]map[string]result{"all": res["all"]})
	if b.Len() != 0 {
		t.Errorf("ratios without Kamailio's run:\n%s", b.String())
	}
}

// TestFrame: the TCP latency client cuts whole messages off the stream.
func TestFrame(t *testing.T) {
	one := "SIP/2.0 200 OK\r\nCall-ID: lat-1@bench\r\nContent-Length: 3\r\n\r\nabc"
	two := "SIP/2.0 407 Proxy Authentication Required\r\nl: 0\r\nCall-ID: lat-2@bench\r\n\r\n"
	stream := []byte("\r\n\r\n" + one + two + "SIP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nab")
	var got []string
	for {
		m, rest, ok := frame(stream)
		if !ok {
			break
		}
		got = append(got, string(m))
		stream = rest
	}
	if len(got) != 2 || got[0] != one || got[1] != two {
		t.Fatalf("frames %q, want %q and %q", got, one, two)
	}
	if !strings.HasSuffix(string(stream), "\r\n\r\nab") {
		t.Errorf("rest %q: want the unfinished third message", stream)
	}
	if k, ok := probeIndex([]byte(two)); !ok || k != 2 {
		t.Errorf("probeIndex = %d, %v; want 2", k, ok)
	}
}

func TestSustained(t *testing.T) {
	const step = 10 * time.Second
	tests := []struct {
		name               string
		successful, failed int
		endedBy            time.Duration
		endedOK            bool
		want               bool
	}{
		{"every call in time", 8000, 0, 11 * time.Second, true, true},
		{"one lost call failed at the receive timeout", 7999, 1, 11 * time.Second, true, true},
		{"backlog: 99.9% ended late", 8000, 0, 13 * time.Second, true, false},
		{"too many failed", 7992, 8, 11 * time.Second, true, false},
		{"calls missing", 7990, 0, 11 * time.Second, true, false},
		{"99.9% never ended", 8000, 0, 0, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sustained(8000, tt.successful, tt.failed, tt.endedBy, tt.endedOK, step); got != tt.want {
				t.Errorf("sustained(8000, %d, %d, %v, %v) = %v, want %v", tt.successful, tt.failed, tt.endedBy, tt.endedOK, got, tt.want)
			}
		})
	}
}
