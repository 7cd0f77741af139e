package fakepbx

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/authproxy/authproxy/internal/testutil"
)

// Over TLS the fake challenges, verifies and records as over TCP, with the
// plaintext as Raw.
func TestTLS(t *testing.T) {
	serverTLS, clientTLS := testutil.SelfSignedTLS(t)
	pbx := Start(t, Config{Strict: true, Accounts: map[string]string{"alice": "pw"}, TLS: serverTLS})
	if pbx.TLSAddr() == "" || pbx.TLSAddr() == pbx.Addr() {
		t.Fatalf("TLSAddr %q", pbx.TLSAddr())
	}
	ua, err := sipgo.NewUA(sipgo.WithUserAgenTLSConfig(&tls.Config{RootCAs: clientTLS.RootCAs}))
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
