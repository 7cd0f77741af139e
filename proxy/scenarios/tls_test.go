package scenarios

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/credentials"
	"github.com/authproxy/authproxy/internal/dnstest"
	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/internal/testutil"
	"github.com/authproxy/authproxy/proxy"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "authproxy test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue makes a server certificate for the names (DNS names or IPs).
func (ca *testCA) issue(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// startTLSUpstream is a strict fake PBX serving SIP over TLS with cert:
// realm "secure", SHA-256, 407 for anything but REGISTER, and one account,
// tls-user, whose answers it verifies like any fake PBX does.
func startTLSUpstream(t *testing.T, host string, cert tls.Certificate) *fakepbx.Server {
	t.Helper()
	return fakepbx.Start(t, fakepbx.Config{
		Name: "tls-" + host, Host: host, Strict: true, Realm: "secure", Algorithms: []string{"SHA-256"},
		ChallengeCode: fakepbx.DefaultChallengeCode, Accounts: map[string]string{"tls-user": "tls-pw"},
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
	})
}

// TestTLSUpstream: a TLS upstream verified against the test CA gets its
// credential; one with a certificate from another CA, or for another name,
// is refused (503) and never sees a credential.
func TestTLSUpstream(t *testing.T) {
	ca := newTestCA(t)
	good := startTLSUpstream(t, "127.0.0.5", ca.issue(t, "pbx-tls.test"))
	rogue := startTLSUpstream(t, "127.0.0.6", newTestCA(t).issue(t, "pbx-tls.test"))
	creds := func(a, b string) []credentials.Entry {
		return append(defaultCredentials(a, b),
			credentials.Entry{Username: "tls-user", Password: credentials.NewSecret("tls-pw"), Server: good.TLSAddr()},
			credentials.Entry{Username: "tls-user", Password: credentials.NewSecret("tls-pw"), Server: rogue.TLSAddr()},
		)
	}
	h := startHarness(t, harnessOptions{Credentials: creds, ExtraUpstreams: []proxy.Upstream{
		{Name: "tls-good", Address: good.TLSAddr(), Transport: "tls", RootCAs: ca.pool, ServerName: "pbx-tls.test", Domains: []string{"good.example.com"}},
		{Name: "tls-rogue", Address: rogue.TLSAddr(), Transport: "tls", RootCAs: ca.pool, ServerName: "pbx-tls.test", Domains: []string{"rogue.example.com"}},
	}})
	if res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1@good.example.com", FromUser: "1"}); res.StatusCode != 200 {
		t.Fatalf("verified TLS upstream: status %d", res.StatusCode)
	}
	if res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1@rogue.example.com", FromUser: "1"}); res.StatusCode != 503 {
		t.Fatalf("TLS upstream with a foreign certificate: status %d, want 503", res.StatusCode)
	}
	if rs := good.Requests(); len(rs) != 2 || !rs[1].Authenticated || rs[1].Transport != "TLS" || rs[1].AuthUsername != "tls-user" {
		t.Fatalf("the verified TLS upstream saw %v, want a challenge then tls-user's verified answer over TLS", summarize(rs))
	}
	if rs := rogue.Requests(); len(rs) != 0 {
		t.Fatalf("the rogue upstream received requests: %v", summarize(rs))
	}
}

// TestTLSCredentialNeverOverPlain: a credential scoped to a TLS upstream's
// host is not used for a plain upstream on the same host.
func TestTLSCredentialNeverOverPlain(t *testing.T) {
	ca := newTestCA(t)
	good := startTLSUpstream(t, "127.0.0.2", ca.issue(t, "127.0.0.2"))
	creds := func(a, b string) []credentials.Entry {
		return []credentials.Entry{{Username: "tls-user", Password: credentials.NewSecret("tls-pw"), Server: "127.0.0.2"}}
	}
	h := startHarness(t, harnessOptions{Credentials: creds, A: fakepbxAccounts("tls-user", "tls-pw"), ExtraUpstreams: []proxy.Upstream{
		{Name: "tls", Address: good.TLSAddr(), Transport: "tls", RootCAs: ca.pool, Domains: []string{"tls.example.com"}},
	}})
	if res := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1@tls.example.com", FromUser: "1"}); res.StatusCode != 200 {
		t.Fatalf("over TLS: status %d", res.StatusCode)
	}
	if res, want := h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1@pbx-a.example.com", FromUser: "1"}), asteriskProfile.challengeCode(sip.OPTIONS); res.StatusCode != want {
		t.Fatalf("plain upstream on the TLS upstream's host: status %d, want the challenge relayed (%d)", res.StatusCode, want)
	}
	assertOnlyUsernames(t, "pbx-a", h.A)
}

// TestTLSListener: a client reaches authproxy over TLS.
func TestTLSListener(t *testing.T) {
	ca := newTestCA(t)
	h := startHarness(t, harnessOptions{ListenTLS: &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "127.0.0.1")}}})
	ua, err := sipgo.NewUA(sipgo.WithUserAgenTLSConfig(&tls.Config{RootCAs: ca.pool}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ua.Close() })
	client, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	req := siptest.Request{Method: sip.MESSAGE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001"}.Build(t)
	req.SetDestination(h.Addr["tls"])
	req.SetTransport("TLS")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := client.Do(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("MESSAGE over TLS: status %d", res.StatusCode)
	}
}

// TestTLSUpstreamByName: a TLS upstream addressed by name is reached at
// the address the name resolves to, and its certificate is verified for
// the configured name: a certificate for that name passes; another
// upstream whose name resolves to the same address, for which the
// certificate is not valid, is refused (503) and never sees a credential,
// whether its connection is dialled first or the verified one already
// exists. Through SRV, the certificate must be valid for the configured
// domain, not for the SRV target.
func TestTLSUpstreamByName(t *testing.T) {
	ca := newTestCA(t)
	named := startTLSUpstream(t, "127.0.0.5", ca.issue(t, "pbx-tls.test"))
	srvTarget := startTLSUpstream(t, "127.0.0.6", ca.issue(t, "sip1.carrier.test"))
	srvGood := startTLSUpstream(t, "127.0.0.7", ca.issue(t, "carrier2.test"))
	z := dnstest.New(t)
	z.Set(aRecord("pbx-tls.test", "127.0.0.5"), aRecord("other.test", "127.0.0.5"), aRecord("sip1.carrier.test", "127.0.0.6"), aRecord("sip1.carrier2.test", "127.0.0.7"))
	z.Set(srv("_sips._tcp.carrier.test", 10, 10, testutil.PortOf(t, srvTarget.TLSAddr()), "sip1.carrier.test"))
	z.Set(srv("_sips._tcp.carrier2.test", 10, 10, testutil.PortOf(t, srvGood.TLSAddr()), "sip1.carrier2.test"))
	port := strconv.Itoa(testutil.PortOf(t, named.TLSAddr()))
	creds := func(a, b string) []credentials.Entry {
		return append(defaultCredentials(a, b),
			credentials.Entry{Username: "tls-user", Password: credentials.NewSecret("tls-pw"), Server: "pbx-tls.test"},
			credentials.Entry{Username: "tls-user", Password: credentials.NewSecret("tls-pw"), Server: "other.test"},
			credentials.Entry{Username: "tls-user", Password: credentials.NewSecret("tls-pw"), Server: "carrier.test"},
			credentials.Entry{Username: "tls-user", Password: credentials.NewSecret("tls-pw"), Server: "carrier2.test"},
		)
	}
	h := startHarness(t, harnessOptions{Credentials: creds, ExtraUpstreams: []proxy.Upstream{
		{Name: "named", Address: "pbx-tls.test:" + port, Transport: "tls", RootCAs: ca.pool, Domains: []string{"named.example.com"}},
		{Name: "other", Address: "other.test:" + port, Transport: "tls", RootCAs: ca.pool, Domains: []string{"other.example.com"}},
		{Name: "carrier", Address: "carrier.test", Transport: "tls", RootCAs: ca.pool, Domains: []string{"carrier.example.com"}},
		{Name: "carrier2", Address: "carrier2.test", Transport: "tls", RootCAs: ca.pool, Domains: []string{"carrier2.example.com"}},
	}, Mutate: func(cfg *proxy.Config, _ *harness) { cfg.DNS = dnsFor(z) }})
	options := func(domain string) int {
		return h.final(t, "udp", siptest.Request{Method: sip.OPTIONS, RequestURI: "sip:1@" + domain, FromUser: "1"}).StatusCode
	}
	if code := options("other.example.com"); code != 503 {
		t.Fatalf("upstream whose name the certificate lacks, dialled first: %d, want 503", code)
	}
	if code := options("named.example.com"); code != 200 {
		t.Fatalf("upstream by name: %d, want 200", code)
	}
	if code := options("other.example.com"); code != 503 {
		t.Fatalf("upstream whose name the certificate lacks, over the verified connection: %d, want 503", code)
	}
	if n := authenticated(named, "OPTIONS"); n != 1 || len(named.Requests()) != 2 {
		t.Fatalf("the upstream saw %v, want the named upstream's challenge and answer only", summarize(named.Requests()))
	}
	if code := options("carrier.example.com"); code != 503 {
		t.Fatalf("SRV target's certificate instead of the domain's: %d, want 503", code)
	}
	if code := options("carrier2.example.com"); code != 200 {
		t.Fatalf("SRV target with the domain's certificate: %d, want 200", code)
	}
}
