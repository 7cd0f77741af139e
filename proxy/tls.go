package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// upstreamTLS is the client TLS configuration sipgo dials "tls" upstreams
// with. sipgo has one configuration for every TLS connection, so the
// verification is done here, against the upstreams' own settings: the chain
// against an upstream's RootCAs (or the system roots) and the name against
// its ServerName (or its host). Go's own verification is replaced, never
// skipped: InsecureSkipVerify only hands the decision to VerifyConnection.
//
// Limitation (sipgo v1.7.3 exposes no per-connection hook): the handshake
// tells which upstream is dialled only through SNI, which TLS does not send
// for IP addresses. For an upstream addressed by hostname the certificate
// must be valid for that upstream; for one addressed by IP, valid for one
// of the configured TLS upstreams.
func (p *Proxy) upstreamTLS() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified in VerifyConnection below
		VerifyConnection:   p.verifyUpstreamTLS,
	}
}

func (p *Proxy) verifyUpstreamTLS(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: upstream sent no certificate")
	}
	sni := strings.ToLower(strings.Trim(cs.ServerName, "[]"))
	intermediates := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		intermediates.AddCert(c)
	}
	var errs []error
	for _, u := range p.rt.Load().upstreams {
		if (u.transport != "TLS" && u.transport != "") || (sni != "" && u.host != sni) {
			continue
		}
		name := u.ServerName
		if name == "" {
			name = u.host
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: u.RootCAs, DNSName: name, Intermediates: intermediates})
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("upstream %s: %w", u.Name, err))
	}
	if len(errs) == 0 {
		return fmt.Errorf("tls: %q is no configured tls upstream", cs.ServerName)
	}
	return fmt.Errorf("tls: certificate refused: %w", errors.Join(errs...))
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
