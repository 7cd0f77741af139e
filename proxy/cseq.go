package proxy

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// cseqKey identifies one client→upstream CSeq space: RFC 3261 §8.1.1.5 and
// §12.2.1.1 number requests per Call-ID in each direction, and the From tag
// names the direction (the client's side).
type cseqKey struct {
	callID  string
	fromTag string
}

// cseqTable remembers, per client CSeq space, how many numbers authproxy has
// added upstream. Every answered challenge re-sends the request with CSeq+1
// (RFC 3261 §22.1), so the upstream has seen more numbers than the client
// sent. Later requests with the same Call-ID (a REGISTER refresh, §10.3
// step 7; in-dialog requests) are shifted by the offset so that the upstream
// still sees increasing numbers, and responses are shifted back.
//
// Entries expire after their TTL without use; sweep removes them. They are
// stored by value, with their expiry as Unix nanoseconds, so that a table of
// a million offsets holds no pointer per entry for the collector to follow.
type cseqTable struct {
	mu      sync.Mutex
	entries map[cseqKey]cseqEntry
}

type cseqEntry struct {
	offset uint32
	// stored marks a REGISTER's offset, which the state store holds too
	// (cseqstore.go); it fits in the padding after offset.
	stored  bool
	expires int64 // Unix nanoseconds
}

func newCSeqTable() *cseqTable {
	return &cseqTable{entries: map[cseqKey]cseqEntry{}}
}

// offset returns the current offset for k (0 when none is known).
func (t *cseqTable) offset(k cseqKey) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.entries[k]; ok {
		return e.offset
	}
	return 0
}

// add grows the offset for k by n and keeps the entry until now+ttl at least.
func (t *cseqTable) add(k cseqKey, n uint32, now time.Time, ttl time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[k]
	if !ok {
		// The key's strings may be cut from a whole header line; a copy
		// keeps only what the key needs.
		k = cseqKey{callID: strings.Clone(k.callID), fromTag: strings.Clone(k.fromTag)}
	}
	e.offset += n
	e.expires = max(e.expires, now.Add(ttl).UnixNano())
	t.entries[k] = e
}

// touch extends the life of an existing entry to now+ttl at least.
func (t *cseqTable) touch(k cseqKey, now time.Time, ttl time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.entries[k]; ok {
		if exp := now.Add(ttl).UnixNano(); exp > e.expires {
			e.expires = exp
			t.entries[k] = e
		}
	}
}

// raise sets the offset for k to off (read from the state store) when
// that is larger, keeping the entry until now+ttl at least.
func (t *cseqTable) raise(k cseqKey, off uint32, now time.Time, ttl time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[k]
	if !ok {
		k = cseqKey{callID: strings.Clone(k.callID), fromTag: strings.Clone(k.fromTag)}
	}
	e.offset = max(e.offset, off)
	e.stored = true // raised from the store's value
	e.expires = max(e.expires, now.Add(ttl).UnixNano())
	t.entries[k] = e
}

// markStored notes that k's offset is in the state store too.
func (t *cseqTable) markStored(k cseqKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.entries[k]; ok && !e.stored {
		e.stored = true
		t.entries[k] = e
	}
}

// stored returns the live entries markStored marked (to write them back
// to a store that lost them).
func (t *cseqTable) stored(now time.Time) map[cseqKey]cseqEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := now.UnixNano()
	out := map[cseqKey]cseqEntry{}
	for k, e := range t.entries {
		if e.stored && n < e.expires {
			out[k] = e
		}
	}
	return out
}

// remove forgets k (its dialog or transaction ended).
func (t *cseqTable) remove(k cseqKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.entries, k)
}

// sweep removes expired entries.
func (t *cseqTable) sweep(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := now.UnixNano()
	for k, e := range t.entries {
		if n > e.expires {
			delete(t.entries, k)
		}
	}
}

// Idle lifetimes of CSeq offsets (see cseqTable).
//
// An out-of-dialog request other than REGISTER or SUBSCRIBE leaves no state
// at the upstream beyond its server transaction, which lives 64*T1 after its
// final response at most (Timer J, RFC 3261 §17.2.2). While it lives, a new
// request with the same Call-ID, From tag and CSeq would be taken for a
// merged request (§8.2.2.2, 482), so the offset must outlast it; afterwards
// no upstream compares CSeq numbers across out-of-dialog requests (§12.2.2
// and §10.3 compare them only within a dialog or a registration). Twice
// Timer J leaves a margin; with the 30 s sweep an offset lives 64–94 s, so
// 4,000 challenged requests a second keep about 300,000 offsets.
const (
	cseqIdleTTL   = 64 * time.Second // 2 × 64*T1 with T1 = 500 ms: out-of-dialog requests reusing a Call-ID
	cseqDialogTTL = 2 * time.Hour    // INVITE dialogs; removed earlier at the 2xx to BYE or a failed INVITE
	cseqExpiryPad = 64 * time.Second
)

// cseqTTL is how long a CSeq offset must outlive its last use: for a
// registration or subscription its expiry, for a dialog its idle bound.
func (f *forwarding) cseqTTL(res *sip.Response) time.Duration {
	switch f.req.Method {
	case sip.INVITE:
		return cseqDialogTTL
	case sip.REGISTER, sip.SUBSCRIBE:
		ttl := cseqIdleTTL
		if res != nil {
			if exp := expiresOf(res); exp+cseqExpiryPad > ttl {
				ttl = exp + cseqExpiryPad
			}
		}
		return ttl
	}
	return cseqIdleTTL
}

// expiresOf returns the largest registration/subscription lifetime a 2xx
// grants: the Expires header or any Contact's expires parameter.
func expiresOf(res *sip.Response) time.Duration {
	var secs int
	if h := res.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Value())); err == nil && n > secs {
			secs = n
		}
	}
	for _, h := range res.GetHeaders("Contact") {
		if c, ok := h.(*sip.ContactHeader); ok {
			if v, ok := c.Params.Get("expires"); ok {
				if n, err := strconv.Atoi(v); err == nil && n > secs {
					secs = n
				}
			}
		}
	}
	return time.Duration(secs) * time.Second
}
