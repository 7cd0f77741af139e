package fakepbx

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestStaleAlways: every correct answer gets a fresh stale=true challenge,
// however many rounds the client answers.
func TestStaleAlways(t *testing.T) {
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, StaleAlways: true})
	c := newClient(t)
	call := newCall(pbx, sip.MESSAGE, "UDP")
	res := do(t, c, call.request(t))
	for round := range 4 {
		ch := challengesOf(t, res)[0]
		if round > 0 && !ch.Stale {
			t.Fatalf("round %d: challenge not stale", round)
		}
		call.cseq++
		req := call.request(t)
		req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", 1))
		res = do(t, c, req)
		wantStatus(t, res, 407)
	}
	if got := pbx.Challenges(); got != 5 {
		t.Errorf("Challenges() = %d, want 5", got)
	}
}

// TestNCAnyOrder: with NCAnyOrder a lower count than one accepted passes,
// a repeated one does not; without it the lower one is refused.
func TestNCAnyOrder(t *testing.T) {
	for _, anyOrder := range []bool{false, true} {
		pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, NCAnyOrder: anyOrder})
		c := newClient(t)
		call := newCall(pbx, sip.OPTIONS, "TCP")
		ch := challengesOf(t, do(t, c, call.request(t)))[0]
		send := func(nc int) int {
			call.cseq++
			req := call.request(t)
			req.AppendHeader(answer(t, 407, ch, req, "alice", "pw", nc))
			return do(t, c, req).StatusCode
		}
		if got := send(3); got != 200 {
			t.Fatalf("anyOrder=%v: nc 3: %d", anyOrder, got)
		}
		want := 407
		if anyOrder {
			want = 200
		}
		if got := send(2); got != want {
			t.Errorf("anyOrder=%v: nc 2 after 3: %d, want %d", anyOrder, got, want)
		}
		if got := send(3); got != 407 {
			t.Errorf("anyOrder=%v: nc 3 again: %d, want 407", anyOrder, got)
		}
	}
}

// TestSetAccount: a password set while the fake runs is the only one
// accepted from then on.
func TestSetAccount(t *testing.T) {
	accounts := map[string]string{"alice": "old"}
	pbx := Start(t, Config{Accounts: accounts})
	c := newClient(t)
	try := func(pass string) int {
		call := newCall(pbx, sip.MESSAGE, "TCP")
		ch := challengesOf(t, do(t, c, call.request(t)))[0]
		call.cseq++
		req := call.request(t)
		req.AppendHeader(answer(t, 407, ch, req, "alice", pass, 1))
		return do(t, c, req).StatusCode
	}
	if try("old") != 200 || try("new") != 407 {
		t.Fatal("before SetAccount: want old accepted, new refused")
	}
	pbx.SetAccount("alice", "new")
	if try("new") != 200 || try("old") != 407 {
		t.Fatal("after SetAccount: want new accepted, old refused")
	}
	if accounts["alice"] != "old" {
		t.Error("SetAccount changed the caller's map")
	}
}

// TestBeforeChallenge: a request whose challenge is held gets no answer
// until the hook returns.
func TestBeforeChallenge(t *testing.T) {
	held, release := make(chan Request, 1), make(chan struct{})
	pbx := Start(t, Config{Accounts: map[string]string{"alice": "pw"}, BeforeChallenge: func(r Request) {
		held <- r
		select {
		case <-release:
		case <-t.Context().Done():
		}
	}})
	c := newClient(t)
	call := newCall(pbx, sip.MESSAGE, "TCP")
	req := call.request(t)
	got := make(chan *sip.Response, 1)
	go func() {
		res, err := tryDo(c, req, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- res
	}()
	r := <-held
	if r.CallID != call.callID {
		t.Fatalf("held %s, sent %s", r.CallID, call.callID)
	}
	// The handler is in the hook: nothing can have been answered yet.
	select {
	case res := <-got:
		t.Fatalf("answered %v while held", res)
	default:
	}
	close(release)
	if res := <-got; res == nil || res.StatusCode != 407 {
		t.Fatalf("after release: %v, want 407", res)
	}
}
