package proxy

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

func testChallenge(realm, nonce string, proxy bool) challenge {
	return challenge{Challenge: &digest.Challenge{Realm: realm, Nonce: nonce, Opaque: "op", Algorithm: "MD5", QOP: []string{"auth"}, Stale: true}, proxy: proxy}
}

func TestAuthCache(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	const srv = "127.0.0.2:5060"
	k := authCacheKey{server: srv, realmKey: "proxy:asterisk", username: "alice"}

	t.Run("NCIncrementsAfterTheAnswer", func(t *testing.T) {
		c, nonces := newAuthCache(), newNonceCounter()
		nc := nonces.next(srv, "asterisk", "n1", now) // the answer to the challenge
		c.put(srv, "MESSAGE", testChallenge("asterisk", "n1", true), "alice", nc, now)
		for want := 2; want <= 4; want++ {
			ch, got, ok := c.take(k, nonces, now)
			if !ok || got != want {
				t.Fatalf("take = %d, %v; want %d, true", got, ok, want)
			}
			if ch.Stale {
				t.Error("cached challenge keeps stale=true")
			}
		}
	})
	t.Run("RealmsPerMethod", func(t *testing.T) {
		c := newAuthCache()
		c.put(srv, "MESSAGE", testChallenge("asterisk", "n1", true), "alice", 1, now)
		if got := c.realmsFor(srv, "MESSAGE"); len(got) != 1 || got[0] != (realmRef{proxy: true, realm: "asterisk"}) {
			t.Errorf("realmsFor MESSAGE = %v", got)
		}
		if got := c.realmsFor(srv, "INVITE"); len(got) != 0 {
			t.Errorf("realmsFor INVITE = %v, want none (never challenged)", got)
		}
		if got := c.realmsFor("127.0.0.3:5060", "MESSAGE"); len(got) != 0 {
			t.Errorf("other upstream: realmsFor = %v, want none", got)
		}
		for i := range preemptiveRealms + 3 {
			c.put(srv, "MESSAGE", testChallenge(fmt.Sprint("r", i), "n", true), "alice", 1, now)
		}
		if got := c.realmsFor(srv, "MESSAGE"); len(got) != preemptiveRealms {
			t.Errorf("%d realms kept, want %d", len(got), preemptiveRealms)
		}
		c.put(srv, "X-INVENTED", testChallenge("asterisk", "n1", true), "alice", 1, now)
		if got := c.realmsFor(srv, "X-INVENTED"); len(got) != 0 {
			t.Errorf("invented method indexed: %v", got)
		}
	})
	t.Run("Expires", func(t *testing.T) {
		c, nonces := newAuthCache(), newNonceCounter()
		c.put(srv, "MESSAGE", testChallenge("asterisk", "n1", true), "alice", 1, now)
		if _, _, ok := c.take(k, nonces, now.Add(preemptiveTTL+time.Second)); ok {
			t.Error("expired entry used")
		}
		c.put(srv, "MESSAGE", testChallenge("asterisk", "n1", true), "alice", 1, now)
		c.sweep(now.Add(preemptiveTTL + time.Second))
		if n := c.len(); n != 0 {
			t.Errorf("%d entries after sweep, want 0", n)
		}
	})
	t.Run("DropOnlyTheSameNonce", func(t *testing.T) {
		c, nonces := newAuthCache(), newNonceCounter()
		c.put(srv, "MESSAGE", testChallenge("asterisk", "n2", true), "alice", nonces.next(srv, "asterisk", "n2", now), now)
		c.drop(k, "n1") // an older nonce, replaced meanwhile
		if _, _, ok := c.take(k, nonces, now); !ok {
			t.Fatal("drop of an older nonce removed the newer one")
		}
		c.drop(k, "n2")
		if _, _, ok := c.take(k, nonces, now); ok {
			t.Fatal("dropped entry used")
		}
	})
	t.Run("Bounded", func(t *testing.T) {
		c := newAuthCache()
		for i := range preemptiveMax + 50 {
			c.put(srv, "MESSAGE", testChallenge("asterisk", "n", true), fmt.Sprint("u", i), 1, now)
		}
		if n := c.len(); n > preemptiveMax {
			t.Errorf("%d entries, bound %d", n, preemptiveMax)
		}
	})
	t.Run("NeverRepeatsAfterCounterReset", func(t *testing.T) {
		c, nonces := newAuthCache(), newNonceCounter()
		c.put(srv, "MESSAGE", testChallenge("asterisk", "n1", true), "alice", 5, now)
		// The counter lost the nonce (full, cleared): it would restart at 1.
		if _, nc, ok := c.take(k, nonces, now); ok {
			t.Fatalf("took nc %d after the count reached 5", nc)
		}
	})
	t.Run("ConcurrentNCUnique", func(t *testing.T) {
		c, nonces := newAuthCache(), newNonceCounter()
		c.put(srv, "MESSAGE", testChallenge("asterisk", "n1", true), "alice", nonces.next(srv, "asterisk", "n1", now), now)
		var mu sync.Mutex
		seen := map[int]bool{}
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 200 {
					_, nc, ok := c.take(k, nonces, now)
					if !ok {
						t.Error("take failed")
						return
					}
					mu.Lock()
					if seen[nc] {
						t.Errorf("nc %d handed out twice", nc)
					}
					seen[nc] = true
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	})
}

func TestPreemptiveModeApplies(t *testing.T) {
	for _, tc := range []struct {
		mode   Preemptive
		method sip.RequestMethod
		want   bool
	}{
		{PreemptiveOff, sip.REGISTER, false},
		{PreemptiveRegistrations, sip.REGISTER, true},
		{PreemptiveRegistrations, sip.INVITE, false},
		{PreemptiveAll, sip.INVITE, true},
		{PreemptiveAll, sip.ACK, false},
		{PreemptiveAll, sip.CANCEL, false},
	} {
		if got := tc.mode.applies(tc.method); got != tc.want {
			t.Errorf("%s.applies(%s) = %v, want %v", tc.mode, tc.method, got, tc.want)
		}
	}
	for _, s := range []string{"off", "registrations", "all"} {
		m, err := ParsePreemptive(s)
		if err != nil || m.String() != s {
			t.Errorf("ParsePreemptive(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParsePreemptive("yes"); err == nil {
		t.Error("ParsePreemptive(yes): no error")
	}
}
