package proxy

import (
	"context"
	"strconv"
	"strings"
	"time"
)

// A REGISTER refresh reuses its Call-ID (RFC 3261 §10.3 step 7), and the
// registrar refuses a CSeq that is not higher than the last it saw for it
// (§10.3 step 7 again). After authproxy answered a challenge the registrar
// has seen more numbers than the client sent (cseqTable), so the offset of
// each REGISTER Call-ID goes to the store: a refresh through another
// instance, or after a restart, is shifted by the same offset. Offsets of
// other requests (in-dialog requests stay on the instance that
// Record-Routed them) stay local.

func cseqStoreKey(k cseqKey) string { return keyCSeq + k.callID + "\x00" + k.fromTag }

// loadRegisterOffset raises the local offset of a REGISTER's Call-ID to
// the store's, which another instance (or this one before a restart) may
// have grown. Offsets only grow: a registrar accepts any higher CSeq.
func (p *Proxy) loadRegisterOffset(k cseqKey) {
	if !p.store.shared {
		return // loaded at start (loadOffsets); this instance wrote the rest
	}
	v, err := p.store.get(cseqStoreKey(k))
	if err != nil {
		return
	}
	n, err := strconv.ParseUint(string(v), 10, 32)
	if err != nil || n == 0 {
		return
	}
	p.cseq.raise(k, uint32(n), time.Now(), cseqIdleTTL)
}

// loadOffsets fills the local table from a store this instance owns (a
// restart with the file backend), so that the request path never reads
// it.
func (p *Proxy) loadOffsets(ctx context.Context) int {
	if p.store.shared {
		return 0
	}
	now := time.Now()
	n := 0
	err := p.store.st.Scan(ctx, keyCSeq, func(k string, v []byte) error {
		callID, fromTag, ok := strings.Cut(strings.TrimPrefix(k, keyCSeq), "\x00")
		off, err := strconv.ParseUint(string(v), 10, 32)
		if ok && err == nil && off > 0 {
			// The store does not return the TTL left: the registration's
			// longest (an hour) plus the margin bounds it.
			p.cseq.raise(cseqKey{callID: callID, fromTag: fromTag}, uint32(off), now, defaultRegisterExpiry+cseqExpiryPad)
			n++
		}
		return nil
	})
	if err != nil {
		p.log.Warn("CSeq offsets not loaded from the state store", "error", err)
	}
	return n
}

// saveRegisterOffset writes the offset of a REGISTER's Call-ID, kept as
// long as the registration lives (ttl, its expiry and a margin).
func (p *Proxy) saveRegisterOffset(k cseqKey, ttl time.Duration) {
	off := p.cseq.offset(k)
	if off == 0 {
		return
	}
	p.cseq.markStored(k)
	p.store.put(cseqStoreKey(k), []byte(strconv.FormatUint(uint64(off), 10)), ttl)
}

// republishOffsets writes the REGISTER offsets back (the store returned
// empty), each with its remaining life.
func (p *Proxy) republishOffsets() {
	now := time.Now()
	for k, e := range p.cseq.stored(now) {
		if e.offset > 0 {
			p.store.put(cseqStoreKey(k), []byte(strconv.FormatUint(uint64(e.offset), 10)), time.Duration(e.expires-now.UnixNano()))
		}
	}
}
