package main

import (
	"net"
	"slices"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/internal/metrics"
)

// knownLabels returns the label values cfg names before any traffic, for
// metrics.Prime: the upstreams, the realms of the credentials scoped to
// each (a credential without a server scope counts for every upstream),
// and the upstreams with preemptive authorization on.
func knownLabels(cfg *config.Config) metrics.Known {
	k := metrics.Known{Realms: map[string][]string{}}
	for _, u := range cfg.Upstreams {
		k.Upstreams = append(k.Upstreams, u.Name)
		if u.Preemptive != "off" {
			k.Preemptive = append(k.Preemptive, u.Name)
		}
		for _, c := range cfg.Credentials {
			if c.Realm == "" || !scopedTo(c.Server, u.Address) || slices.Contains(k.Realms[u.Name], c.Realm) {
				continue
			}
			k.Realms[u.Name] = append(k.Realms[u.Name], c.Realm)
		}
	}
	return k
}

// scopedTo reports whether a credential's server scope (config resolves
// an upstream name to its address; "" is every server) covers an upstream
// at address: the same address, or its host when the scope has no port.
func scopedTo(server, address string) bool {
	if server == "" || server == address {
		return true
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	return server == host || server == "["+host+"]"
}
