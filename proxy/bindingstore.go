package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/state"
)

// storedBinding is a binding as the store keeps it.
type storedBinding struct {
	AOR       string    `json:"aor"`
	Contact   string    `json:"contact"`
	Alias     string    `json:"alias,omitempty"`
	Upstream  string    `json:"upstream"`
	Transport string    `json:"transport"`
	Addr      string    `json:"addr"`
	Expires   time.Time `json:"expires"`
	// Member is the instance the client registered through: over TCP and
	// TLS the one holding its connection.
	Member string `json:"member,omitempty"`
}

func toStored(b *binding, member string) storedBinding {
	return storedBinding{AOR: b.aor, Contact: b.contact.String(), Alias: b.alias, Upstream: b.upstream,
		Transport: b.transport, Addr: b.addr, Expires: b.expires, Member: member}
}

func (sb storedBinding) binding() (*binding, error) {
	var u sip.Uri
	if err := sip.ParseUri(sb.Contact, &u); err != nil {
		return nil, err
	}
	return &binding{aor: sb.AOR, contact: u, ckey: contactKey(u), alias: sb.Alias, upstream: sb.Upstream,
		transport: sb.Transport, addr: sb.Addr, expires: sb.Expires, member: sb.Member}, nil
}

// saveBinding writes b to the store, under its contact and (contact mode)
// its alias, expiring when the registration does (RFC 3261 §10.2.1.1).
func (p *Proxy) saveBinding(b *binding) {
	ttl := time.Until(b.expires)
	if ttl <= 0 {
		return
	}
	sb := toStored(b, p.store.id)
	p.store.putJSON(keyContact+b.ckey, sb, ttl)
	if b.alias != "" {
		p.store.putJSON(keyAlias+b.alias, sb, ttl)
	}
}

// forgetBinding removes b from the store, unless another AOR's
// registration holds the contact now.
func (p *Proxy) forgetBinding(aor, ckey, alias string) {
	if v, err := p.store.get(keyContact + ckey); err == nil {
		var sb storedBinding
		if json.Unmarshal(v, &sb) == nil && sb.AOR != aor {
			return
		}
	}
	p.store.del(keyContact + ckey)
	if alias != "" {
		p.store.del(keyAlias + alias)
	}
}

// storedLookup finds the binding a Request-URI addresses in a shared
// store: a client may have registered, or refreshed from a new address,
// through another instance. ok is false when the store cannot say (down):
// the local table answers then.
func (p *Proxy) storedLookup(ruri sip.Uri, own bool, now time.Time) (b *binding, ok bool) {
	key := keyContact + contactKey(ruri)
	if own && strings.HasPrefix(ruri.User, aliasPrefix) {
		key = keyAlias + ruri.User
	}
	v, err := p.store.get(key)
	if errors.Is(err, state.ErrNotFound) {
		return nil, true
	}
	if err != nil {
		return nil, false
	}
	var sb storedBinding
	if err := json.Unmarshal(v, &sb); err != nil {
		return nil, true
	}
	b, err = sb.binding()
	if err != nil || !now.Before(b.expires) {
		return nil, true
	}
	return b, true
}

// lookupBinding finds the live binding a Request-URI addresses: in a
// shared store first (it has the newest registration, wherever it was
// made), else in the local table.
func (p *Proxy) lookupBinding(ruri sip.Uri, own bool, now time.Time) *binding {
	if p.store.shared {
		if b, ok := p.storedLookup(ruri, own, now); ok {
			return b
		}
	}
	return p.bindings.lookup(ruri, own, now)
}

// loadBindings fills the local table from a store this instance owns
// (a restart with the file backend): phones registered before the restart
// are reachable before they refresh.
func (p *Proxy) loadBindings(ctx context.Context) int {
	if p.store.shared {
		return 0
	}
	now := time.Now()
	n := 0
	err := p.store.st.Scan(ctx, keyContact, func(_ string, v []byte) error {
		var sb storedBinding
		if json.Unmarshal(v, &sb) != nil {
			return nil
		}
		b, err := sb.binding()
		if err != nil || !now.Before(b.expires) || isWebSocket(b.transport) {
			// A WebSocket does not outlive the process: its client
			// registers again over a new one.
			return nil
		}
		if p.bindings.put(b, now) {
			n++
		}
		return nil
	})
	if err != nil {
		p.log.Warn("bindings not loaded from the state store", "error", err)
	}
	return n
}

// republishBindings writes every local binding back to the store.
func (p *Proxy) republishBindings() {
	for _, b := range p.bindings.all(time.Now()) {
		p.saveBinding(b)
	}
}
