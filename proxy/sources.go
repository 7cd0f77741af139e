package proxy

import (
	"context"
	"net/netip"
	"slices"
)

// Who may send us requests as an upstream: a callee's BYE, a re-INVITE, a
// NOTIFY, an INVITE to a registered client or to a trunk registration. An
// upstream is recognised by the addresses its name currently resolves to
// (its IP when it is one) plus its AcceptFrom prefixes (carriers send from
// other addresses than they receive on). The index is rebuilt on reload
// and whenever a watched name resolves to other addresses, so that a
// lookup is one map read plus one per distinct AcceptFrom prefix length.

// sourceIndex maps request sources to the upstreams they belong to.
type sourceIndex struct {
	byAddr   map[netip.Addr][]*upstream
	byPrefix map[netip.Prefix][]*upstream
	lens     []int // the distinct prefix lengths of byPrefix, longest first
}

// buildSourceIndex indexes ups by the addresses t knows them at now and
// their AcceptFrom prefixes.
func buildSourceIndex(ups []*upstream, t *targets) *sourceIndex {
	ix := &sourceIndex{byAddr: map[netip.Addr][]*upstream{}, byPrefix: map[netip.Prefix][]*upstream{}}
	add := func(m map[netip.Addr][]*upstream, a netip.Addr, u *upstream) {
		if !slices.Contains(m[a], u) {
			m[a] = append(m[a], u)
		}
	}
	for _, u := range ups {
		ts, _ := t.cached(u)
		for _, tg := range ts {
			add(ix.byAddr, tg.Addr.Addr().Unmap(), u)
		}
		for _, p := range u.AcceptFrom {
			p = p.Masked()
			if !slices.Contains(ix.byPrefix[p], u) {
				ix.byPrefix[p] = append(ix.byPrefix[p], u)
			}
			if !slices.Contains(ix.lens, p.Bits()) {
				ix.lens = append(ix.lens, p.Bits())
			}
		}
	}
	slices.Sort(ix.lens)
	slices.Reverse(ix.lens)
	return ix
}

// lookup returns the upstreams src belongs to, those it is a resolved
// address of first, in configuration order; nil for none.
func (ix *sourceIndex) lookup(src netip.Addr) []*upstream {
	src = src.Unmap()
	out := ix.byAddr[src]
	for _, bits := range ix.lens {
		if bits > src.BitLen() {
			continue
		}
		p, err := src.Prefix(bits)
		if err != nil {
			continue
		}
		for _, u := range ix.byPrefix[p] {
			if !slices.Contains(out, u) {
				out = append(out[:len(out):len(out)], u) // never into byAddr's array
			}
		}
	}
	return out
}

// fromUpstream returns the upstreams a request from src comes from, nil
// when it comes from none.
func (rt *routing) fromUpstream(src netip.Addr) []*upstream {
	ix := rt.sources.Load()
	if ix == nil || !src.IsValid() {
		return nil
	}
	return ix.lookup(src)
}

// indexSources rebuilds rt's source index from what the resolver knows now.
func (p *Proxy) indexSources(rt *routing) {
	rt.sources.Store(buildSourceIndex(rt.upstreams, p.targets))
}

// followResolutions rebuilds the source index of the running configuration
// whenever a watched name resolves to other addresses, until ctx ends.
func (p *Proxy) followResolutions(ctx context.Context) {
	for {
		changed := p.targets.r.Changed() // before reading, so no change is missed
		p.indexSources(p.rt.Load())
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
