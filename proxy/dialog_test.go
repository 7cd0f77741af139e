package proxy

import (
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/emiago/sipgo/sip"
)

// TestDialogIdleTimeout: a dialog with no request for longer than
// dialog_idle_timeout is forgotten at the next sweep; a request in the
// dialog, from either side, restarts the wait.
func TestDialogIdleTimeout(t *testing.T) {
	const idle = 2 * time.Hour
	start := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		name    string
		touch   func(*dialogTable, time.Time) *dialog // a request at start+1h
		sweepAt time.Duration                         // after start
		kept    bool
	}{
		{name: "within the bound", sweepAt: idle, kept: true},
		{name: "past the bound", sweepAt: idle + time.Second, kept: false},
		{name: "client request restarts the wait", sweepAt: idle + time.Minute, kept: true,
			touch: func(dt *dialogTable, now time.Time) *dialog { return dt.fromClient("c1", "caller", "callee", now) }},
		{name: "upstream request restarts the wait", sweepAt: idle + time.Minute, kept: true,
			touch: func(dt *dialogTable, now time.Time) *dialog { return dt.fromUpstream("c1", "callee", "caller", now) }},
		{name: "restarted wait ends too", sweepAt: time.Hour + idle + time.Second, kept: false,
			touch: func(dt *dialogTable, now time.Time) *dialog { return dt.fromClient("c1", "caller", "callee", now) }},
		{name: "a request of another dialog does not count", sweepAt: idle + time.Minute, kept: false,
			touch: func(dt *dialogTable, now time.Time) *dialog {
				if d := dt.fromClient("c1", "caller", "other-callee", now); d != nil {
					t.Error("a request with another To tag found the dialog")
				}
				return &dialog{}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dt := newDialogTable()
			dt.put(&dialog{key: dialogKey{callID: "c1", callerTag: "caller", calleeTag: "callee"}, lastUse: start})
			if tc.touch != nil && tc.touch(dt, start.Add(time.Hour)) == nil {
				t.Fatal("the request did not find its dialog")
			}
			dt.sweep(start.Add(tc.sweepAt), idle)
			if got := dt.len() == 1; got != tc.kept {
				t.Fatalf("dialog kept = %v after a sweep at +%v, want %v", got, tc.sweepAt, tc.kept)
			}
		})
	}
}

// TestAnsweredDialogRecordedBeforeEitherRelay: the first 2xx of a dialog
// and its retransmission arrive together (one through the client
// transaction's Responses, one through its retransmission hook). The one
// that does not record the dialog must not go on to relay its 2xx before
// the other has recorded it: the client's ACK would find no dialog (or
// the one before a re-INVITE) and go upstream without the INVITE's CSeq
// and credentials. The loser is held until the winner's record is done.
func TestAnsweredDialogRecordedBeforeEitherRelay(t *testing.T) {
	res := sip.NewResponse(200, "OK")
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: "1002", Host: "pbx-a.example.com"}, Params: sip.NewParams()}
	to.Params.Add("tag", "callee")
	res.AppendHeader(to)
	var answered answeredDialogs
	var recorded atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	winnerDone := make(chan struct{})
	go func() {
		defer close(winnerDone)
		answered.recordFirst(res, func() {
			close(entered)
			<-release
			recorded.Store(true)
		})
	}()
	<-entered
	loserStarted, loserSaw := make(chan struct{}), make(chan bool, 1)
	go func() {
		close(loserStarted)
		answered.recordFirst(res.Clone(), func() { t.Error("the dialog recorded twice") })
		loserSaw <- recorded.Load()
	}()
	<-loserStarted
	for range 100 {
		runtime.Gosched() // let the loser run as far as it may
	}
	close(release)
	if !<-loserSaw {
		t.Error("the second 2xx went on before the first had recorded the dialog")
	}
	<-winnerDone
}

// BenchmarkDialogSweep fills the dialog table with n dialogs and measures
// the 30 s sweep over them (ns/op, removing nothing) and the longest time
// it holds one lock (lock-ns), which is how long a request in any dialog
// of that shard may wait for it.
func BenchmarkDialogSweep(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("dialogs=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			now := time.Now()
			tb := newDialogTable()
			up := &upstream{}
			for i := range n {
				id := strconv.Itoa(i)
				tb.put(&dialog{key: dialogKey{callID: id + "@192.0.2.10", callerTag: "a" + id, calleeTag: "b" + id}, up: up, lastUse: now})
			}
			var longest time.Duration
			for b.Loop() {
				for i := range tb.shards {
					start := time.Now()
					tb.shards[i].sweep(now, time.Hour)
					longest = max(longest, time.Since(start))
				}
			}
			b.ReportMetric(float64(longest.Nanoseconds()), "lock-ns")
			if got := tb.len(); got != n {
				b.Fatalf("%d dialogs after the sweeps, want %d", got, n)
			}
		})
	}
}

// TestDialogCompact checks that a stored dialog keeps its strings in one
// allocation of its own: equal values, none sharing memory with the
// message they came from, the answers in a slice of the dialog's.
func TestDialogCompact(t *testing.T) {
	tests := []struct {
		name string
		auth []authAnswer
	}{
		{"no credentials", nil},
		{"one answer", []authAnswer{{key: "proxy:pbx", header: "Proxy-Authorization", value: `Digest username="1001"`}}},
		{"two answers", []authAnswer{
			{key: "proxy:pbx", header: "Proxy-Authorization", value: `Digest username="1001"`},
			{key: "www:carrier", header: "Authorization", value: `Digest username="trunk"`},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := "a84b4c76e66710@pc33.example.com 1928301774 a6c85cf 192.0.2.4:5060"
			callID, from, to, addr := msg[:31], msg[32:42], msg[43:50], msg[51:]
			auth := append([]authAnswer(nil), tt.auth...)
			d := &dialog{key: dialogKey{callID: callID, callerTag: from, calleeTag: to}, clientAddr: addr, inviteAuth: auth}
			d.compact()
			want := []string{callID, from, to, addr}
			got := []string{d.key.callID, d.key.callerTag, d.key.calleeTag, d.clientAddr}
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("field %d = %q, want %q", i, got[i], want[i])
				}
				if unsafe.StringData(got[i]) == unsafe.StringData(want[i]) {
					t.Errorf("field %d still shares the message's memory", i)
				}
			}
			if len(d.inviteAuth) != len(tt.auth) {
				t.Fatalf("%d answers, want %d", len(d.inviteAuth), len(tt.auth))
			}
			for i, a := range d.inviteAuth {
				if a != tt.auth[i] {
					t.Errorf("answer %d = %+v, want %+v", i, a, tt.auth[i])
				}
				if unsafe.StringData(a.value) == unsafe.StringData(auth[i].value) {
					t.Errorf("answer %d's value still shares the request's memory", i)
				}
			}
			if len(auth) > 0 && &d.inviteAuth[0] == &auth[0] {
				t.Error("the answers still share the request's slice")
			}
		})
	}
}
