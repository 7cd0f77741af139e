package scenarios

import (
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
)

// TestCancelWhileChallengeHeld makes the race of a CANCEL with the
// challenge deterministic: the upstream holds its 407 to the INVITE until
// the client's CANCEL has been taken by authproxy, then sends it.
// authproxy must not answer that challenge: no authenticated INVITE may
// reach the upstream for the cancelled call, and the client gets 487.
func TestCancelWhileChallengeHeld(t *testing.T) {
	for _, clientTP := range []string{"udp", "tcp"} {
		t.Run(clientTP, func(t *testing.T) {
			held := make(chan string, 1)
			release := make(chan struct{})
			h := startHarness(t, harnessOptions{A: fakepbx.Config{BeforeChallenge: func(r fakepbx.Request) {
				if r.Method != "INVITE" {
					return
				}
				held <- r.CallID
				select {
				case <-release:
				case <-t.Context().Done():
				}
			}}})
			ph := siptest.StartPhone(t, "1001", clientTP, h.Addr[clientTP])
			c := ph.Dial("sip:1002@pbx-a.example.com", siptest.SDP)
			if got := <-held; got != c.CallID {
				t.Fatalf("held the challenge of call %s, want %s", got, c.CallID)
			}
			cancelUntilMatched(t, c)
			// sipgo answers the CANCEL 200 before its INVITE transaction
			// takes it; the 487 comes after authproxy was told. Only then
			// is the challenge released.
			if res := c.WaitFinal(testutil.EventuallyLimit); res.StatusCode != sip.StatusRequestTerminated {
				t.Fatalf("INVITE final %d, want 487", res.StatusCode)
			}
			close(release)
			// Once authproxy is done with the INVITE it sends nothing more
			// for it: what reached the upstream by then is all there is.
			waitRequestDone(t, h, "INVITE", c.CallID)
			for _, r := range h.A.Requests() {
				if r.CallID == c.CallID && r.Method == "INVITE" && len(r.Authorization) > 0 {
					t.Fatalf("an authenticated INVITE reached the upstream after the CANCEL: %v", summarize([]fakepbx.Request{r}))
				}
			}
			assertNoCallErrors(t, h.A)
		})
	}
}
