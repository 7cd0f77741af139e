package state

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Memory is a Store in this process's memory: what authproxy has always
// done, nothing survives a restart.
type Memory struct {
	mu     sync.Mutex
	now    func() time.Time
	items  map[string]item
	tokens map[string]uint64 // last fencing token per lease name
	closed bool
}

type item struct {
	value   []byte
	expires time.Time // zero: never
}

func (it item) live(now time.Time) bool { return it.expires.IsZero() || now.Before(it.expires) }

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{now: time.Now, items: map[string]item{}, tokens: map[string]uint64{}}
}

func expiry(now time.Time, ttl time.Duration) time.Time {
	if ttl <= 0 {
		return time.Time{}
	}
	return now.Add(ttl)
}

// Put implements Store.
func (m *Memory) Put(_ context.Context, key string, value []byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.items[key] = item{value: append([]byte(nil), value...), expires: expiry(m.now(), ttl)}
	return nil
}

// Get implements Store.
func (m *Memory) Get(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	it, ok := m.items[key]
	if !ok || !it.live(m.now()) {
		return nil, ErrNotFound
	}
	return append([]byte(nil), it.value...), nil
}

// Delete implements Store.
func (m *Memory) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.items, key)
	return nil
}

// Scan implements Store. It also drops the expired entries it passes.
func (m *Memory) Scan(ctx context.Context, prefix string, fn func(string, []byte) error) error {
	m.mu.Lock()
	now := m.now()
	type kv struct {
		k string
		v []byte
	}
	var out []kv
	for k, it := range m.items {
		if !it.live(now) {
			delete(m.items, k)
			continue
		}
		if strings.HasPrefix(k, prefix) {
			out = append(out, kv{k, append([]byte(nil), it.value...)})
		}
	}
	m.mu.Unlock()
	for _, e := range out {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(e.k, e.v); err != nil {
			return err
		}
	}
	return nil
}

// Add implements Store.
func (m *Memory) Add(_ context.Context, deltas map[string]int64, ttl time.Duration) (map[string]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	now := m.now()
	out := make(map[string]int64, len(deltas))
	for k, d := range deltas {
		var n int64
		if it, ok := m.items[k]; ok && it.live(now) {
			n, _ = strconv.ParseInt(string(it.value), 10, 64)
		}
		n += d
		m.items[k] = item{value: []byte(strconv.FormatInt(n, 10)), expires: expiry(now, ttl)}
		out[k] = n
	}
	return out, nil
}

const leasePrefix = "lease/"

// Acquire implements Store.
func (m *Memory) Acquire(_ context.Context, name, holder string, ttl time.Duration) (Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if it, ok := m.items[leasePrefix+name]; ok && it.live(now) {
		if h, _, _ := parseLeaseValue(string(it.value)); h != holder {
			return Lease{}, ErrHeld
		}
	}
	m.tokens[name]++
	l := Lease{Name: name, Holder: holder, Token: m.tokens[name], Expires: expiry(now, ttl)}
	m.items[leasePrefix+name] = item{value: []byte(leaseValue(holder, l.Token)), expires: l.Expires}
	return l, nil
}

// Renew implements Store.
func (m *Memory) Renew(_ context.Context, l Lease, ttl time.Duration) (Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	it, ok := m.items[leasePrefix+l.Name]
	if !ok || !it.live(now) || string(it.value) != leaseValue(l.Holder, l.Token) {
		return l, ErrLost
	}
	l.Expires = expiry(now, ttl)
	it.expires = l.Expires
	m.items[leasePrefix+l.Name] = it
	return l, nil
}

// Release implements Store.
func (m *Memory) Release(_ context.Context, l Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if it, ok := m.items[leasePrefix+l.Name]; ok && string(it.value) == leaseValue(l.Holder, l.Token) {
		delete(m.items, leasePrefix+l.Name)
	}
	return nil
}

// Leases implements Store.
func (m *Memory) Leases(ctx context.Context) ([]Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var out []Lease
	for k, it := range m.items {
		if !strings.HasPrefix(k, leasePrefix) || !it.live(now) {
			continue
		}
		if h, t, ok := parseLeaseValue(string(it.value)); ok {
			out = append(out, Lease{Name: strings.TrimPrefix(k, leasePrefix), Holder: h, Token: t, Expires: it.expires})
		}
	}
	return out, nil
}

// Shared implements Store: memory is this process's own.
func (m *Memory) Shared() bool { return false }

// Ping implements Store.
func (m *Memory) Ping(context.Context) error { return nil }

// Close implements Store.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
