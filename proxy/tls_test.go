package proxy

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestSipgoOwnTLSDialRefused: the TLS configuration authproxy gives sipgo
// refuses every connection sipgo would make on its own, even to a server
// whose certificate any client would accept: upstream TLS connections are
// made and verified for the upstream's name by authproxy (tlsconn.go).
func TestSipgoOwnTLSDialRefused(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	p := &Proxy{}
	cfg := p.upstreamTLS()
	cfg.RootCAs = srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), cfg)
	if err == nil {
		conn.Close()
		t.Fatal("sipgo's own TLS dial succeeded")
	}
	if !strings.Contains(err.Error(), "refusing one it did not make") {
		t.Errorf("dial error %v, want the refusal", err)
	}
}
