package proxy

import (
	"log/slog"
	"strconv"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/emiago/sipgo/siptest"
)

// BenchmarkHandleMessage forwards one MESSAGE through the whole handler
// (routing, access control, clone, CSeq, Via, challenge answer, relay) to an
// upstream double that challenges every request without credentials, with
// logging discarded: "challenged" pays the 407 round and one digest per
// request, "preemptive" sends the answer with the first try.
func BenchmarkHandleMessage(b *testing.B) {
	const raw = "MESSAGE sip:1002@pbx-a.example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-bench;rport\r\n" +
		"From: <sip:1001@pbx-a.example.com>;tag=a\r\nTo: <sip:1002@pbx-a.example.com>\r\n" +
		"Call-ID: bench\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
	for _, mode := range []Preemptive{PreemptiveOff, PreemptiveAll} {
		name := "challenged"
		if mode == PreemptiveAll {
			name = "preemptive"
		}
		b.Run(name, func(b *testing.B) {
			sp := newSocketlessProxy(b, fuzzUpstream([]string{`Digest realm="asterisk", nonce="n0nce", opaque="op", qop="auth", algorithm=MD5`}, 0))
			sp.p.log = slog.New(slog.DiscardHandler)
			for _, u := range sp.p.rt.Load().upstreams {
				u.Preemptive = mode
			}
			msg, err := sip.ParseMessage([]byte(raw))
			if err != nil {
				b.Fatal(err)
			}
			tmpl := msg.(*sip.Request)
			tmpl.SetTransport("UDP")
			tmpl.SetSource("127.0.0.1:5999")
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				req := tmpl.Clone()
				id := sip.CallIDHeader("bench-" + strconv.Itoa(i))
				req.ReplaceHeader(&id)
				req.Via().Params.Add("branch", "z9hG4bK-"+strconv.Itoa(i))
				tx := siptest.NewServerTxRecorder(req)
				sp.p.handle(req, tx)
				if rs := tx.Result(); len(rs) == 0 || rs[len(rs)-1].StatusCode != 200 {
					b.Fatalf("no 200: %v", rs)
				}
				tx.Terminate()
				sp.mu.Lock()
				sp.sent = sp.sent[:0] // the double keeps every request sent
				sp.mu.Unlock()
			}
		})
	}
}
