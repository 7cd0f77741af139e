package proxy

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// The Contact of a trunk registration and the lifetime the registrar
// grants it.

// contact is the Contact authproxy registers: it names the listener
// facing the upstream's first target, of its transport (with "auto", the
// one NAPTR chose) and address family.
func (tr *trunkReg) contact(up *upstream, cfg Registration) (sip.Uri, error) {
	tp, dst := up.transport, netip.Addr{}
	if ts, ok := tr.p.targets.cached(up); ok {
		if tp == "" {
			tp = ts[0].Transport
		}
		dst = ts[0].Addr.Addr()
	}
	l := tr.p.listenerFor(tp, dst)
	if l == nil && len(tr.p.listeners) > 0 {
		l = tr.p.listeners[0]
	}
	if l == nil {
		return sip.Uri{}, errors.New("no listener")
	}
	contact := tr.p.ownURI(l, cfg.contactUser())
	contact.UriParams = sip.NewParams()
	if l.transport != "UDP" {
		contact.UriParams.Add("transport", strings.ToLower(l.transport))
	}
	return contact, nil
}

// grantedFor reads the lifetime the registrar granted our contact: its
// Contact's expires, else the Expires header, else what we asked for.
func grantedFor(res *sip.Response, contact sip.Uri, asked int) time.Duration {
	secs := asked
	if h := res.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Value())); err == nil {
			secs = n
		}
	}
	want := contactKey(contact)
	for _, h := range res.GetHeaders("Contact") {
		if c, ok := h.(*sip.ContactHeader); ok && contactKey(c.Address) == want {
			if v, ok := c.Params.Get("expires"); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					secs = n
				}
			}
		}
	}
	return time.Duration(secs) * time.Second
}
