package proxy

import (
	"crypto/tls"
	"errors"
	"strings"
)

// upstreamTLS is the client TLS configuration sipgo would dial with. It
// never should: authproxy makes its TLS connections to upstream targets
// itself (tlsconn.go), verified for each upstream's name, and sends every
// request to a TLS target over one of those. A connection sipgo dials on
// its own (one authproxy made was closed meanwhile) is refused, so that a
// credential never goes over a connection whose certificate was not
// checked for its upstream's name.
func (p *Proxy) upstreamTLS() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // refused in VerifyConnection below
		VerifyConnection: func(tls.ConnectionState) error {
			return errors.New("tls: upstream connections are made by authproxy's connector; refusing one it did not make")
		},
	}
}

// scopedToTLS reports whether a credential's server scope ("host" or
// "host:port") names a TLS upstream.
func (rt *routing) scopedToTLS(server string) bool {
	if server == "" {
		return false
	}
	host, port, err := splitHostPort(server)
	if err != nil {
		return false
	}
	hostOnly := !strings.Contains(strings.TrimPrefix(server, "["), "]:") && strings.Count(server, ":") != 1
	for _, u := range rt.upstreams {
		if u.transport == "TLS" && u.host == host && (hostOnly || u.port == port) {
			return true
		}
	}
	return false
}
