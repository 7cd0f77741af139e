package fakepbx

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// selfSigned returns a certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fakepbx"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// Over TLS the fake challenges, verifies and records as over TCP, with the
// plaintext as Raw.
func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	pbx := Start(t, Config{Strict: true, Accounts: map[string]string{"alice": "pw"}, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if pbx.TLSAddr() == "" || pbx.TLSAddr() == pbx.Addr() {
		t.Fatalf("TLSAddr %q", pbx.TLSAddr())
	}
	ua, err := sipgo.NewUA(sipgo.WithUserAgenTLSConfig(&tls.Config{RootCAs: pool}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	c, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	call := newCall(pbx, sip.MESSAGE, "TLS")
	call.dst = pbx.TLSAddr()
	code, ch := challenge(t, c, call)
	call.cseq++
	req := call.request(t)
	req.AppendHeader(answer(t, code, ch, req, "alice", "pw", 1))
	wantStatus(t, do(t, c, req), 200)
	reqs := pbx.Requests()
	if len(reqs) != 2 || reqs[1].Transport != "TLS" || !reqs[1].Authenticated || !strings.HasPrefix(reqs[1].Raw, "MESSAGE ") {
		t.Errorf("recorded %+v", reqs)
	}
}
