package proxy

import (
	"context"
	"net/netip"
	"strconv"
	"time"
)

// Cluster-wide rate limits (Limits.Shared). Asking the store on every
// request would put a round trip on the request path, refused requests
// included; instead each instance counts the requests it admitted from
// each source and adds those counts to a counter per source and second in
// the store every sharedRateSync. A source whose counter for the current
// second passes Rate+Burst is refused by every instance that sees the
// total, until the second ends. The verdict lags by up to one sync
// interval, and counts taken across a second's boundary are added to the
// later second; each instance's own token bucket still applies meanwhile.

// sharedRateSync is how often the counts go to the store: the lag of a
// cluster-wide verdict, and one pipelined round trip per interval.
const sharedRateSync = 200 * time.Millisecond

// sharedRateKeep keeps a second's counters a little past it, for the
// instances whose sync falls just after the boundary.
const sharedRateKeep = 3 * time.Second

// keyRate + source + "/" + Unix second: a source's cluster-wide count.
const keyRate = "rate/"

// takeUnsynced returns the requests admitted per source since the last
// call, and forgets them.
func (lm *limiter) takeUnsynced() map[netip.Addr]int64 {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if !lm.l.Shared || lm.l.Rate <= 0 {
		return nil
	}
	out := map[netip.Addr]int64{}
	for a, s := range lm.sources {
		if s.unsynced > 0 {
			out[a] = s.unsynced
			s.unsynced = 0
		}
	}
	return out
}

// clusterLimit is the most requests a source may send in one second
// through the whole cluster.
func (lm *limiter) clusterLimit() int64 {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	return int64(lm.l.Rate) + int64(lm.l.Burst)
}

// clusterBlock refuses src until until (the end of the second its
// cluster-wide count passed the limit).
func (lm *limiter) clusterBlock(src netip.Addr, until time.Time) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if s, ok := lm.sources[src]; ok && until.After(s.clusterUntil) {
		s.clusterUntil = until
	}
}

// syncSharedRate adds this instance's counts to the store's counters of
// the second now falls in, and blocks the sources whose total passed the
// limit. A store that does not answer leaves the local limits alone.
func (p *Proxy) syncSharedRate(ctx context.Context, now time.Time) {
	counts := p.limiter.takeUnsynced()
	if len(counts) == 0 || !p.store.shared || !p.store.healthy() {
		return
	}
	sec := now.Unix()
	suffix := "/" + strconv.FormatInt(sec, 10)
	deltas := make(map[string]int64, len(counts))
	keyOf := make(map[string]netip.Addr, len(counts))
	for a, n := range counts {
		k := keyRate + a.String() + suffix
		deltas[k], keyOf[k] = n, a
	}
	c, cancel := context.WithTimeout(ctx, storeOpTimeout)
	defer cancel()
	totals, err := p.store.st.Add(c, deltas, sharedRateKeep)
	if err != nil {
		p.store.failed(err)
		return
	}
	limit, until := p.limiter.clusterLimit(), time.Unix(sec+1, 0)
	for k, total := range totals {
		if total > limit {
			p.limiter.clusterBlock(keyOf[k], until)
		}
	}
}

// runSharedRate syncs the counts every sharedRateSync until ctx ends.
func (p *Proxy) runSharedRate(ctx context.Context) {
	t := time.NewTicker(sharedRateSync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.syncSharedRate(ctx, now)
		}
	}
}
