package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// binding is one contact a client registered through authproxy.
type binding struct {
	aor       string  // To URI of the REGISTER, "user@host" (lowercased host)
	contact   sip.Uri // the client's Contact as it sent it
	ckey      string  // contactKey(contact)
	alias     string  // user part of the rewritten Contact (contact mode)
	upstream  string  // name of the upstream it was registered with
	transport string  // "UDP"/"TCP"/"TLS": how the client reached us
	addr      string  // host:port the REGISTER came from
	expires   time.Time
	member    string // instance it was registered through (shared store); "" for this one
	aorIndex  int    // its place in bindingTable.byAOR[aor]
}

// Binding is a snapshot of one registered contact, for tests and status.
type Binding struct {
	AOR       string
	Contact   string
	Upstream  string
	Transport string
	Source    string
	Expires   time.Time
}

// bindingTable holds the clients' registered contacts, keyed by AOR and
// contact, indexed by contact and alias for requests toward them and by
// AOR for a REGISTER that removes all of an AOR's contacts.
type bindingTable struct {
	mu        sync.Mutex
	byKey     map[string]*binding   // aor + "\x00" + ckey
	byContact map[string]*binding   // ckey (the latest registration wins)
	byAlias   map[string]*binding   // alias
	byAOR     map[string][]*binding // aor (a few contacts each)
	// byFlow indexes the bindings registered over each WebSocket
	// connection (flowKey), for removeFlow when it closes; a set, so that
	// one connection with many bindings costs no more per removal.
	byFlow map[string]map[*binding]struct{}
}

// flowKey names the connection (or UDP source) a binding was registered
// over: its transport and the client's address.
func flowKey(transport, addr string) string { return transport + "\x00" + addr }

func newBindingTable() *bindingTable {
	return &bindingTable{byKey: map[string]*binding{}, byContact: map[string]*binding{}, byAlias: map[string]*binding{},
		byAOR: map[string][]*binding{}, byFlow: map[string]map[*binding]struct{}{}}
}

// contactKey identifies a contact URI for matching a Request-URI against
// it: user, host (case-insensitive) and port (5060 when absent; RFC 3261
// §19.1.4 compares URIs without their transport-independent parameters
// here, since a registrar may add or reorder them).
func contactKey(u sip.Uri) string {
	port := u.Port
	if port == 0 {
		port = 5060
	}
	return u.User + "@" + strings.ToLower(strings.Trim(u.Host, "[]")) + ":" + strconv.Itoa(port)
}

// aorOf is the address-of-record of a To URI.
func aorOf(u sip.Uri) string {
	return u.User + "@" + strings.ToLower(u.Host)
}

// aliasFor is the user part of the Contact authproxy registers in contact
// mode: stable for an AOR and contact, so that refreshes keep the
// registrar's binding.
func aliasFor(aor, ckey string) string {
	sum := sha256.Sum256([]byte(aor + "\x00" + ckey))
	return aliasPrefix + hex.EncodeToString(sum[:10])
}

// put stores b, replacing a binding of the same AOR and contact. It
// reports false when the table is full.
func (t *bindingTable) put(b *binding, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := b.aor + "\x00" + b.ckey
	if _, ok := t.byKey[k]; !ok && len(t.byKey) >= maxBindings {
		t.sweepLocked(now)
		if len(t.byKey) >= maxBindings {
			return false
		}
	}
	if old, ok := t.byKey[k]; ok {
		t.unindexLocked(old)
	}
	t.byKey[k] = b
	t.byContact[b.ckey] = b
	if b.alias != "" {
		t.byAlias[b.alias] = b
	}
	b.aorIndex = len(t.byAOR[b.aor])
	t.byAOR[b.aor] = append(t.byAOR[b.aor], b)
	if isWebSocket(b.transport) {
		fk := flowKey(b.transport, b.addr)
		if t.byFlow[fk] == nil {
			t.byFlow[fk] = map[*binding]struct{}{}
		}
		t.byFlow[fk][b] = struct{}{}
	}
	return true
}

// remove deletes the binding of aor and ckey.
func (t *bindingTable) remove(aor, ckey string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if b, ok := t.byKey[aor+"\x00"+ckey]; ok {
		delete(t.byKey, aor+"\x00"+ckey)
		t.unindexLocked(b)
	}
}

// removeAOR deletes every binding of aor made through upstream (Contact: *
// with Expires: 0, RFC 3261 §10.2.2) and returns them: a walk over that
// AOR's contacts, not the whole table.
func (t *bindingTable) removeAOR(aor, upstream string) []*binding {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*binding
	for _, b := range slices.Clone(t.byAOR[aor]) { // unindexLocked edits the list
		if b.upstream == upstream {
			delete(t.byKey, b.aor+"\x00"+b.ckey)
			t.unindexLocked(b)
			out = append(out, b)
		}
	}
	return out
}

// all returns a copy of every live binding.
func (t *bindingTable) all(now time.Time) []*binding {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*binding, 0, len(t.byKey))
	for _, b := range t.byKey {
		if now.Before(b.expires) {
			cp := *b
			out = append(out, &cp)
		}
	}
	return out
}

// removeFlow deletes every binding registered over the connection of
// transport from addr (a WebSocket that closed) and returns them: a walk
// over that connection's bindings, not the whole table.
func (t *bindingTable) removeFlow(transport, addr string) []binding {
	t.mu.Lock()
	defer t.mu.Unlock()
	flow := t.byFlow[flowKey(transport, addr)]
	out := make([]binding, 0, len(flow))
	for b := range flow { // unindexLocked deletes b from flow: allowed while ranging
		delete(t.byKey, b.aor+"\x00"+b.ckey)
		t.unindexLocked(b)
		out = append(out, *b)
	}
	return out
}

func (t *bindingTable) unindexLocked(b *binding) {
	if t.byContact[b.ckey] == b {
		delete(t.byContact, b.ckey)
	}
	if b.alias != "" && t.byAlias[b.alias] == b {
		delete(t.byAlias, b.alias)
	}
	// Swap-remove: an AOR with many contacts costs no more per removal.
	if contacts := t.byAOR[b.aor]; b.aorIndex < len(contacts) && contacts[b.aorIndex] == b {
		last := len(contacts) - 1
		contacts[b.aorIndex] = contacts[last]
		contacts[b.aorIndex].aorIndex = b.aorIndex
		contacts[last] = nil
		if last == 0 {
			delete(t.byAOR, b.aor)
		} else {
			t.byAOR[b.aor] = contacts[:last]
		}
	}
	if flow := t.byFlow[flowKey(b.transport, b.addr)]; flow != nil {
		delete(flow, b)
		if len(flow) == 0 {
			delete(t.byFlow, flowKey(b.transport, b.addr))
		}
	}
}

// lookup finds the live binding a Request-URI addresses: by alias when it
// names authproxy (own reports that), else by contact.
func (t *bindingTable) lookup(ruri sip.Uri, own bool, now time.Time) *binding {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b *binding
	if own && strings.HasPrefix(ruri.User, aliasPrefix) {
		b = t.byAlias[ruri.User]
	} else {
		b = t.byContact[contactKey(ruri)]
	}
	if b == nil || !now.Before(b.expires) {
		return nil
	}
	cp := *b
	return &cp
}

// sweep removes expired bindings.
func (t *bindingTable) sweep(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepLocked(now)
}

func (t *bindingTable) sweepLocked(now time.Time) {
	for k, b := range t.byKey {
		if !now.Before(b.expires) {
			delete(t.byKey, k)
			t.unindexLocked(b)
		}
	}
}

func (t *bindingTable) snapshot() []Binding {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Binding, 0, len(t.byKey))
	for _, b := range t.byKey {
		out = append(out, Binding{AOR: b.aor, Contact: b.contact.String(), Upstream: b.upstream,
			Transport: b.transport, Source: b.addr, Expires: b.expires})
	}
	return out
}
