package fakepbx

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// recordingTB is a testing.TB that keeps what would fail the test instead
// of failing it, so that a test can prove the fake reports a fault.
type recordingTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errors...)
}

// The tap keeps every request until it is handled, however many arrive,
// and hands the bytes of a copy received while the original was pending
// to each copy.
func TestRawStoreKeepsEveryRequest(t *testing.T) {
	var rs rawStore
	const n = 10000
	for i := range n {
		msg := rawOptions("127.0.0.1:5060", "sip:a@127.0.0.1", fmt.Sprintf("z9hG4bK-%d", i), fmt.Sprintf("call-%d", i), 1)
		if rs.put("UDP", "127.0.0.1:5060", []byte(msg)) {
			t.Fatal("an OPTIONS was consumed")
		}
	}
	for i := range n {
		key := rawKey("UDP", "127.0.0.1:5060", fmt.Sprintf("z9hG4bK-%d", i), 1, "OPTIONS")
		r, ok := rs.take(key)
		if !ok || !r.cseqOK || !strings.Contains(r.raw, fmt.Sprintf("call-%d", i)) {
			t.Fatalf("request %d: ok=%v %+v", i, ok, r)
		}
	}

	ack := strings.Replace(strings.Replace(rawOptions("127.0.0.1:5060", "sip:a@127.0.0.1", "z9hG4bK-ack", "call-ack", 1),
		"OPTIONS sip", "ACK sip", 1), "CSeq: 1 OPTIONS", "CSeq: 1 ACK", 1)
	rs.put("UDP", "127.0.0.1:5060", []byte(ack))
	rs.put("UDP", "127.0.0.1:5060", []byte(ack))
	key := rawKey("UDP", "127.0.0.1:5060", "z9hG4bK-ack", 1, "ACK")
	for copy := 1; copy <= 2; copy++ {
		if r, ok := rs.take(key); !ok || r.raw != ack {
			t.Fatalf("copy %d of the ACK: ok=%v", copy, ok)
		}
	}
	if _, ok := rs.take(key); ok {
		t.Fatal("a third copy of an ACK received twice")
	}
}

// A request whose wire bytes the tap does not have fails the test and is
// refused (500 for its CSeq), instead of being let through unchecked.
func TestMissingRawBytesFailTheTest(t *testing.T) {
	rec := &recordingTB{TB: t}
	pbx := Start(rec, Config{Accounts: map[string]string{"alice": "pw"}})
	msg, err := sip.ParseMessage([]byte(rawOptions("127.0.0.1:5999", "sip:a@127.0.0.1", "z9hG4bK-unseen", "unseen", 1)))
	if err != nil {
		t.Fatal(err)
	}
	req := msg.(*sip.Request)
	req.SetTransport("UDP")
	req.SetSource("127.0.0.1:5999")
	in := pbx.newIncoming(req, nil)
	if in.cseqOK {
		t.Error("a request without raw bytes passed the CSeq check")
	}
	if errs := rec.Errors(); len(errs) != 1 || !strings.Contains(errs[0], "no raw bytes") {
		t.Errorf("test failures reported: %q", errs)
	}
}
