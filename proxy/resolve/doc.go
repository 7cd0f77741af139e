// Package resolve finds where SIP requests for an upstream's address go:
// RFC 3263 server location (NAPTR → SRV → A/AAAA) with a TTL cache that is
// refreshed in the background, so that the request path reads the last
// known targets and never waits on a DNS server.
//
// The proxy hands sipgo only the IP:port targets found here: sipgo's own
// resolution (one A record, SRV only as a fallback, no NAPTR, no cache, no
// failover) is never used.
//
// # Resolution
//
// A Query is a host, an optional port and an optional transport, as a SIP
// URI gives them. RFC 3263 §4.1 picks the transport: an explicit one is
// kept; an IP address, or a name with a port, is UDP; otherwise the NAPTR
// records of the name decide (flag "s", services SIP+D2U, SIP+D2T and
// SIPS+D2T, by order then preference; others are skipped), and without a
// usable one the SRV records of _sips._tcp, _sip._tcp and _sip._udp are
// tried in that order, then UDP. §4.2 finds the addresses: an IP literal is
// its own target (port 5060, or 5061 for TLS, unless given); a name with a
// port has A and AAAA only; a name without one has SRV records (RFC 2782:
// a target of "." means no service), each target expanded to its A and
// AAAA addresses (from the answer's additional section when present); a
// name without SRV records has its A/AAAA addresses on the default port.
// Result.Targets lists every address found, by SRV priority, so the proxy
// can fail over from one to the next (§4.3); Result.Order draws the order
// one request tries them in (RFC 2782's weighted draw within a priority).
//
// # Cache
//
// A request must not wait for DNS, and DNS must not decide the proxy's
// fate second by second, so every result is cached:
//
//   - For the smallest TTL of the records used, clamped to
//     [MinTTL, MaxTTL]: the floor because TTLs of 0 or a few seconds
//     (dnsmasq's local records, failover zones) would otherwise put DNS
//     back on the request path; the ceiling because a day-long TTL must
//     not hide a moved server for a day.
//   - Refreshed in the background: Run refreshes each watched query
//     (Watch: the configured upstreams) shortly before it expires, and
//     Lookup of an expired result returns it at once and starts a refresh.
//     Only a query never resolved before waits for DNS, bounded by the
//     caller's context; concurrent lookups of it share one resolution.
//   - Served stale: a failed refresh (timeout, SERVFAIL, NXDOMAIN) keeps
//     the last good targets, with Result.Err set, and is retried with
//     backoff from MinTTL up to MaxTTL. A passing DNS outage thus costs
//     nothing while the upstreams themselves still answer, which is the
//     behaviour RFC 8767 describes for recursive resolvers.
//
// Changed signals every change of a watched result, so the proxy can
// rebuild what it derives from the targets (e.g. which source addresses
// belong to which upstream). Changes are logged at Info, failures at Warn,
// each once per change of state.
package resolve
