package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/state"
)

// A trunk registration's state goes to the store so that a restarted
// instance resumes its refresh schedule (same Call-ID, From tag and a
// higher CSeq, no REGISTER before the refresh is due) and, in a cluster,
// the instance that takes it over continues it. In a shared store each
// registration has a lease: only its holder registers; the others stand
// by and try to take the lease as it expires.

// storedTrunk is a trunk registration's state in the store.
type storedTrunk struct {
	CallID string `json:"call_id"`
	Tag    string `json:"tag"`
	// CSeq is at least the highest CSeq its holder may have sent.
	CSeq    uint32    `json:"cseq"`
	Contact string    `json:"contact,omitempty"`
	Expires time.Time `json:"expires"`
	Next    time.Time `json:"next"`
	Holder  string    `json:"holder"`
	Token   uint64    `json:"token,omitempty"`
}

// cseqReserve is how many CSeq numbers a trunk registration writes to the
// store ahead of those it sends: one attempt sends at most
// (max423+1) × (MaxChallenges+1) REGISTERs, far fewer than this, so an
// instance resuming after a crash never reuses a number.
const cseqReserve = 64

// trunkStateGrace keeps a trunk's state this long past its expiry.
const trunkStateGrace = time.Hour

func (tr *trunkReg) storeKey() string { return keyTrunk + tr.config().key() }

// save writes the registration's state.
func (tr *trunkReg) save() {
	tr.mu.Lock()
	st := storedTrunk{CallID: tr.callID, Tag: tr.tag, CSeq: max(tr.cseq, tr.reserved), Contact: tr.state.Contact,
		Expires: tr.state.Expires, Next: tr.state.NextAttempt, Holder: tr.p.store.id, Token: tr.token}
	tr.mu.Unlock()
	ttl := trunkStateGrace
	if d := time.Until(st.Expires); d > 0 {
		ttl += d
	}
	tr.mu.Lock()
	tr.known = &st
	tr.mu.Unlock()
	tr.p.store.putJSON(tr.storeKey(), st, ttl)
}

// peek reads the holder's state from the store while standing by, so
// that a store that comes back empty (a Redis without persistence) still
// leaves this instance knowing which contact to replace.
func (tr *trunkReg) peek() {
	v, err := tr.p.store.get(tr.storeKey())
	if err != nil {
		return
	}
	var st storedTrunk
	if json.Unmarshal(v, &st) == nil && st.CallID != "" {
		tr.mu.Lock()
		tr.known = &st
		tr.mu.Unlock()
	}
}

// reserveCSeq writes seq+cseqReserve to the store before seq is sent.
func (tr *trunkReg) reserveCSeq(seq uint32) {
	tr.mu.Lock()
	tr.reserved = seq + cseqReserve
	tr.mu.Unlock()
	tr.save()
}

// restore takes over the state in the store, when there is one: the
// Call-ID and tag, a CSeq above any used, and either the refresh time
// (our own contact: nothing to send before it) or the other holder's
// contact, replaced by the next REGISTER.
func (tr *trunkReg) restore() {
	var st storedTrunk
	v, err := tr.p.store.get(tr.storeKey())
	if err != nil || json.Unmarshal(v, &st) != nil || st.CallID == "" {
		// Nothing in the store: what this instance last knew, if anything.
		tr.mu.Lock()
		known := tr.known
		tr.mu.Unlock()
		if known == nil {
			return
		}
		st = *known
	}
	now := time.Now()
	own := tr.ownContact()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if st.CallID == tr.callID {
		st.CSeq = max(st.CSeq, tr.cseq) // numbers this instance used itself
	}
	tr.callID, tr.tag = st.CallID, st.Tag
	tr.cseq, tr.reserved = st.CSeq, st.CSeq
	tr.resumeAt, tr.replace = time.Time{}, ""
	live := now.Before(st.Expires)
	switch {
	case live && st.Contact != "" && st.Contact != own:
		tr.replace = st.Contact
	case live && st.Contact == own && now.Before(st.Next):
		tr.resumeAt = st.Next
		tr.state.State, tr.state.Contact = RegStateRegistered, st.Contact
		tr.state.Expires, tr.state.NextAttempt = st.Expires, st.Next
	}
}

// ownContact is the Contact this instance would register, as a string
// ("" when it cannot tell yet).
func (tr *trunkReg) ownContact() string {
	cfg := tr.config()
	for _, u := range tr.p.rt.Load().upstreams {
		if u.Name == cfg.Upstream {
			if c, err := tr.contact(u, cfg); err == nil {
				return c.String()
			}
		}
	}
	return ""
}

// oldContact parses the contact to replace, unless it is ours.
func oldContact(replace string, ours sip.Uri) (sip.Uri, bool) {
	var u sip.Uri
	if replace == "" || sip.ParseUri(replace, &u) != nil || contactKey(u) == contactKey(ours) {
		return u, false
	}
	return u, true
}

// leaseName is the registration's lease in the store.
func (tr *trunkReg) leaseName() string { return leaseTrunk + tr.config().key() }

// run keeps the registration up until ctx ends. Without a shared store
// this instance is its only holder; with one, the holder of its lease.
func (tr *trunkReg) run(ctx context.Context) {
	if !tr.p.store.shared {
		tr.restore()
		tr.serve(ctx, ctx)
		return
	}
	for ctx.Err() == nil {
		l, ok := tr.acquire(ctx)
		if !ok {
			break
		}
		hold, lost := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			tr.keepLease(hold, lost, l)
		}()
		tr.restore()
		tr.update(func(s *RegistrationState) { s.Holder, s.State = tr.p.store.id, RegStateRegistering })
		tr.serve(ctx, hold)
		lost()
		<-done
	}
	tr.update(func(s *RegistrationState) {
		s.State, s.Expires, s.NextAttempt = RegStateStopped, time.Time{}, time.Time{}
	})
}

// acquire waits until this instance holds the lease, standing by while
// another does; false when ctx ended first.
func (tr *trunkReg) acquire(ctx context.Context) (state.Lease, bool) {
	s := tr.p.store
	every := s.leaseTTL / 3
	logged := ""
	for {
		if s.healthy() {
			c, cancel := context.WithTimeout(ctx, storeOpTimeout)
			l, err := s.st.Acquire(c, tr.leaseName(), s.id, s.leaseTTL)
			cancel()
			if err == nil {
				tr.mu.Lock()
				tr.token = l.Token
				tr.mu.Unlock()
				s.log.Info("trunk registration lease taken", "registration", tr.config().AOR, "token", l.Token)
				return l, true
			}
			holder := ""
			if errors.Is(err, state.ErrHeld) {
				holder = tr.holder(ctx)
				tr.peek()
			} else if ctx.Err() == nil {
				s.failed(err)
			}
			if holder != logged {
				logged = holder
				s.log.Info("trunk registration held by another instance", "registration", tr.config().AOR, "holder", holder)
			}
			tr.update(func(st *RegistrationState) {
				st.State, st.Holder, st.Expires, st.NextAttempt = RegStateStandby, holder, time.Time{}, time.Time{}
			})
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return state.Lease{}, false
		case <-t.C:
		}
	}
}

// holder names the instance holding the lease ("" when unknown).
func (tr *trunkReg) holder(ctx context.Context) string {
	c, cancel := context.WithTimeout(ctx, storeOpTimeout)
	defer cancel()
	ls, err := tr.p.store.st.Leases(c)
	if err != nil {
		return ""
	}
	for _, l := range ls {
		if l.Name == tr.leaseName() {
			return l.Holder
		}
	}
	return ""
}

// keepLease renews the lease every third of its lifetime until hold ends
// (then releases it), and ends hold when the lease is lost: taken over,
// or not renewed before it expired (the store unreachable that long), so
// that this instance stops registering before another one may start.
func (tr *trunkReg) keepLease(hold context.Context, lost context.CancelFunc, l state.Lease) {
	s := tr.p.store
	log := s.log.With("registration", tr.config().AOR)
	t := time.NewTicker(s.leaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-hold.Done():
			c, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
			_ = s.st.Release(c, l)
			cancel()
			return
		case <-t.C:
		}
		// The local expiry counts from before the request: it never
		// outlasts the store's.
		start := time.Now()
		c, cancel := context.WithTimeout(hold, storeOpTimeout)
		nl, err := s.st.Renew(c, l, s.leaseTTL)
		cancel()
		switch {
		case err == nil:
			nl.Expires = start.Add(s.leaseTTL)
			l = nl
		case errors.Is(err, state.ErrLost):
			log.Warn("trunk registration lease lost; standing by")
			lost()
			return
		case hold.Err() != nil:
		default:
			s.failed(err)
			if !time.Now().Before(l.Expires) {
				log.Warn("trunk registration lease expired while the state store was unreachable; standing by")
				lost()
				return
			}
		}
	}
}

// names maps each running registration's lease name to "upstream aor".
func (m *regManager) names() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for _, tr := range m.running {
		cfg := tr.config()
		out[tr.leaseName()] = cfg.Upstream + " " + cfg.AOR
	}
	return out
}

// republishTrunks writes the running registrations' state back.
func (m *regManager) republish() {
	m.mu.Lock()
	trs := make([]*trunkReg, 0, len(m.running))
	for _, tr := range m.running {
		trs = append(trs, tr)
	}
	m.mu.Unlock()
	for _, tr := range trs {
		if st := tr.snapshot(); st.State != RegStateStandby && st.State != RegStateStopped {
			tr.save()
		}
	}
}

// republishState writes the local state back to a store that returned.
func (p *Proxy) republishState(context.Context) {
	p.republishBindings()
	p.republishOffsets()
	p.regs.republish()
}

// member describes this instance for the cluster's member list.
func (p *Proxy) member() Member {
	m := Member{ID: p.store.id, Started: p.started}
	p.mu.Lock()
	for _, l := range p.listeners {
		m.Advertise = append(m.Advertise, fmt.Sprintf("%s:%s:%d", strings.ToLower(l.transport), l.advertise, l.port))
	}
	p.mu.Unlock()
	return m
}

// instanceName is the configured instance name, else the host name and
// process ID.
func instanceName(configured string) string {
	if configured != "" {
		return configured
	}
	h, err := os.Hostname()
	if err != nil {
		h = "authproxy"
	}
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}
