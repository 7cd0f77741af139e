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
// Entries expire after their TTL without use; sweep removes them.
type cseqTable struct {
	mu      sync.Mutex
	entries map[cseqKey]*cseqEntry
}

type cseqEntry struct {
	offset  uint32
	expires time.Time
}

func newCSeqTable() *cseqTable {
	return &cseqTable{entries: map[cseqKey]*cseqEntry{}}
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
		e = &cseqEntry{}
		t.entries[k] = e
	}
	e.offset += n
	if exp := now.Add(ttl); exp.After(e.expires) {
		e.expires = exp
	}
}

// touch extends the life of an existing entry to now+ttl at least.
func (t *cseqTable) touch(k cseqKey, now time.Time, ttl time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.entries[k]; ok {
		if exp := now.Add(ttl); exp.After(e.expires) {
			e.expires = exp
		}
	}
}

// raise sets the offset for k to off when that is larger, keeping the
// entry until now+ttl at least.
func (t *cseqTable) raise(k cseqKey, off uint32, now time.Time, ttl time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[k]
	if !ok {
		e = &cseqEntry{}
		t.entries[k] = e
	}
	e.offset = max(e.offset, off)
	if exp := now.Add(ttl); exp.After(e.expires) {
		e.expires = exp
	}
}

// all returns every live entry (to write them back to a store).
func (t *cseqTable) all(now time.Time) map[cseqKey]cseqEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[cseqKey]cseqEntry, len(t.entries))
	for k, e := range t.entries {
		if now.Before(e.expires) {
			out[k] = *e
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
	for k, e := range t.entries {
		if now.After(e.expires) {
			delete(t.entries, k)
		}
	}
}

// Idle lifetimes of CSeq offsets (see cseqTable).
const (
	cseqIdleTTL   = 5 * time.Minute // out-of-dialog requests reusing a Call-ID (MESSAGE sessions)
	cseqDialogTTL = 2 * time.Hour   // INVITE dialogs; removed earlier at the 2xx to BYE or a failed INVITE
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
