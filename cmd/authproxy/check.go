package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/proxy/resolve"
)

// resolutionWarnings resolves every upstream address that is a name, as
// the proxy will (RFC 3263: NAPTR, SRV, A/AAAA, through [dns]), and
// returns one warning per name that does not resolve now, naming the key,
// the value and why. They are warnings, not errors: DNS may be down or
// unreachable where and when the configuration is checked, and the
// running proxy keeps retrying.
func resolutionWarnings(ctx context.Context, cfg *config.Config) []string {
	r, err := resolve.New(resolve.Config{Servers: cfg.DNS.Servers, MinTTL: cfg.DNS.MinTTL, MaxTTL: cfg.DNS.MaxTTL, Timeout: cfg.DNS.Timeout})
	if err != nil {
		return []string{"dns: " + err.Error()}
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		r.Run(runCtx) // stops the resolutions still in flight when it returns
	}()
	defer func() {
		stop()
		<-ran
	}()
	// A name gets the time of one exchange per server, as a request would.
	lctx, cancel := context.WithTimeout(ctx, cfg.DNS.Timeout*time.Duration(max(1, len(cfg.DNS.Servers))))
	defer cancel()
	warnings := make([]string, len(cfg.Upstreams))
	var wg sync.WaitGroup
	for i, u := range cfg.Upstreams {
		q, ok := upstreamQuery(u)
		if !ok {
			continue
		}
		wg.Go(func() {
			res, err := r.Lookup(lctx, q)
			if err == nil && len(res.Targets) == 0 {
				err = resolve.ErrNoTargets
			}
			if err != nil {
				warnings[i] = fmt.Sprintf("upstream[%d].address = %q: does not resolve now: %v", i, u.Address, err)
			}
		})
	}
	wg.Wait()
	var out []string
	for _, w := range warnings {
		if w != "" {
			out = append(out, w)
		}
	}
	return out
}

// upstreamQuery is the resolver query for u's address; ok is false for an
// IP address, which needs no DNS.
func upstreamQuery(u config.Upstream) (resolve.Query, bool) {
	var q resolve.Query
	host, port, err := net.SplitHostPort(u.Address)
	if err != nil {
		host = u.Address // a domain without port: SRV
	} else {
		q.Port, _ = strconv.Atoi(port)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return resolve.Query{}, false
	}
	q.Host = host
	if u.Transport != "auto" {
		q.Transport = strings.ToUpper(u.Transport)
	}
	return q, true
}
