package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/authproxy/authproxy/credentials"
)

// Validation of [[client]] and [[registration]]: who may use which
// upstream, and the registrations authproxy keeps itself.

// Bounds of [[registration]] expires, in seconds: RFC 3261 §10.2.1.1
// suggests 3600; a day is more than any trunk asks for.
const (
	defaultRegistrationExpires = 3600
	maxRegistrationExpires     = 86400
)

func (v *validator) buildRegistrations(rs []fileRegistration, idx upstreamIndex) []Registration {
	var out []Registration
	seen := map[string]int{}
	for i, r := range rs {
		key := fmt.Sprintf("registration[%d]", i)
		o := Registration{Upstream: r.Upstream, AOR: r.AOR, ContactUser: r.ContactUser, Target: r.Target,
			Expires: defaultRegistrationExpires * time.Second}
		if _, ok := idx.byName[r.Upstream]; !ok {
			v.add(key+".upstream", strconv.Quote(r.Upstream), "must name a configured [[upstream]]", ErrInvalid, nil)
		}
		user, ok := sipUser(r.AOR)
		if !ok {
			v.add(key+".aor", strconv.Quote(r.AOR), `must be a SIP URI "sip:user@domain"`, ErrInvalid, nil)
		}
		cu := r.ContactUser
		if cu == "" {
			cu = user
		}
		if strings.ContainsAny(r.ContactUser, "@:;<> \t") || hasControl(r.ContactUser) {
			v.add(key+".contact_user", strconv.Quote(r.ContactUser), "must be a plain SIP user part", ErrInvalid, nil)
		}
		switch {
		case r.Expires == 0:
		case r.Expires < 1 || r.Expires > maxRegistrationExpires:
			v.add(key+".expires", strconv.Itoa(r.Expires), fmt.Sprintf("must be between 1 and %d seconds", maxRegistrationExpires), ErrInvalid, nil)
		default:
			o.Expires = time.Duration(r.Expires) * time.Second
		}
		if r.Target != "" {
			if strings.HasPrefix(strings.ToLower(r.Target), "sip:") {
				if _, ok := sipUser(r.Target); !ok && !strings.Contains(r.Target[4:], ".") {
					v.add(key+".target", strconv.Quote(r.Target), `must be a SIP URI or "host:port"`, ErrInvalid, nil)
				}
			} else if _, _, rule := parseAddress(r.Target, 5060); rule != "" {
				v.add(key+".target", strconv.Quote(r.Target), `must be a SIP URI or "host:port": `+rule, ErrInvalid, nil)
			}
		}
		k := r.Upstream + "\x00" + r.AOR + "\x00" + cu
		if j, dup := seen[k]; dup {
			v.add(key+".aor", strconv.Quote(r.AOR), fmt.Sprintf("duplicates registration[%d] (same upstream, aor and contact_user)", j), ErrDuplicate, nil)
		} else {
			seen[k] = i
		}
		out = append(out, o)
	}
	return out
}

// sipUser returns the user of a "sip:user@host..." URI, and whether it
// has that shape.
func sipUser(u string) (string, bool) {
	rest, ok := strings.CutPrefix(u, "sip:")
	if !ok {
		return "", false
	}
	user, host, ok := strings.Cut(rest, "@")
	if !ok || user == "" || host == "" || strings.ContainsAny(user, " <>") || hasControl(u) {
		return "", false
	}
	return user, true
}

func (v *validator) buildClients(cs []fileClient, ups []Upstream, groups []Group) []Client {
	if len(cs) == 0 {
		v.add("client", "", "at least one [[client]] group is required: authproxy admits no one by default", ErrRequired, nil)
		return nil
	}
	names := map[string]int{}
	out := make([]Client, 0, len(cs))
	for i, c := range cs {
		key := fmt.Sprintf("client[%d]", i)
		g := Client{Name: c.Name, Upstreams: c.Upstreams, Trusted: c.Trusted, Realm: c.Realm}
		if c.Name == "" {
			v.add(key+".name", "", "is required", ErrRequired, nil)
		} else if j, dup := names[c.Name]; dup {
			v.add(key+".name", strconv.Quote(c.Name), fmt.Sprintf("duplicates client[%d].name", j), ErrDuplicate, nil)
		} else {
			names[c.Name] = i
		}
		for j, n := range c.Networks {
			p, err := netip.ParsePrefix(n)
			if err != nil {
				if a, aerr := netip.ParseAddr(n); aerr == nil {
					p, err = a.Prefix(a.BitLen())
				}
			}
			if err != nil {
				v.add(fmt.Sprintf("%s.networks[%d]", key, j), strconv.Quote(n), "must be a CIDR prefix such as 10.0.0.0/8 or an address", ErrInvalid, nil)
				continue
			}
			g.Networks = append(g.Networks, p.Masked())
		}
		if len(c.Upstreams) == 0 {
			v.add(key+".upstreams", "", `is required: the upstream names this group may use, or ["*"]`, ErrRequired, nil)
		}
		for j, u := range c.Upstreams {
			if u == "*" {
				continue
			}
			found := false
			for _, up := range ups {
				found = found || up.Name == u
			}
			if !found {
				rule := "names no configured upstream"
				for _, g := range groups {
					if g.Name == u {
						rule = "is a [[group]]'s name: list the group's upstreams (" + strings.Join(g.Upstreams, ", ") + ") instead"
					}
				}
				v.add(fmt.Sprintf("%s.upstreams[%d]", key, j), strconv.Quote(u), rule, ErrInvalid, nil)
			}
		}
		if len(c.User) > 0 {
			g.Users = map[string]credentials.Secret{}
		}
		for j, u := range c.User {
			ukey := fmt.Sprintf("%s.user[%d]", key, j)
			if u.Username == "" {
				v.add(ukey+".username", "", "is required", ErrRequired, nil)
				continue
			}
			if _, dup := g.Users[u.Username]; dup {
				v.add(ukey+".username", strconv.Quote(u.Username), "duplicates another user of this group", ErrDuplicate, nil)
				continue
			}
			var e credentials.Entry
			v.loadSecret(ukey, fileCredential{Username: u.Username, Password: u.Password, PasswordEnv: u.PasswordEnv, PasswordFile: u.PasswordFile}, &e)
			g.Users[u.Username] = e.Password
		}
		if len(g.Networks) == 0 && len(g.Users) == 0 {
			v.add(key+".networks", "", "is required unless the group has users: an empty group would admit everyone", ErrRequired, nil)
		}
		out = append(out, g)
	}
	return out
}
