package scenarios

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"

	"github.com/authproxy/authproxy/internal/fakepbx"
	"github.com/authproxy/authproxy/internal/siptest"
	"github.com/authproxy/authproxy/proxy"
)

// TestRecordRouteWhereDialogsStart: authproxy Record-Routes the requests
// that may create a dialog (SUBSCRIBE and REFER here; INVITE in TestCall),
// so that every later request of the dialog comes back through it, and
// only those: a MESSAGE or OPTIONS creates none.
func TestRecordRouteWhereDialogsStart(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	for _, tc := range []struct {
		method  sip.RequestMethod
		headers []sip.Header
		routed  bool
	}{
		{sip.SUBSCRIBE, nil, true},
		{sip.REFER, []sip.Header{sip.NewHeader("Refer-To", "<sip:1003@pbx-a.example.com>")}, true},
		{sip.MESSAGE, nil, false},
		{sip.OPTIONS, nil, false},
	} {
		t.Run(tc.method.String(), func(t *testing.T) {
			callID := uuid.NewString()
			res := h.final(t, "udp", siptest.Request{Method: tc.method, RequestURI: "sip:1002@pbx-a.example.com",
				FromUser: "1001", CallID: callID, Headers: tc.headers})
			if !res.IsSuccess() {
				t.Fatalf("%s: %d", tc.method, res.StatusCode)
			}
			var seen int
			for _, r := range h.A.Requests() {
				if r.CallID != callID || !r.Authenticated {
					continue
				}
				seen++
				rr := strings.Contains(r.Raw, "Record-Route: <sip:127.0.0.1:")
				if rr != tc.routed {
					t.Errorf("%s reached the upstream with our Record-Route = %v, want %v:\n%s", tc.method, rr, tc.routed, r.Raw)
				}
			}
			if seen != 1 {
				t.Fatalf("pbx-a got %d authenticated %s, want 1", seen, tc.method)
			}
		})
	}
}

// TestTryingGeneratedLocally: an INVITE whose upstream has not answered
// yet gets a 100 Trying from authproxy itself (RFC 3261 §16.2: the
// upstream here never answers, so any 100 is authproxy's), then 408.
func TestTryingGeneratedLocally(t *testing.T) {
	h := startHarness(t, harnessOptions{A: fakepbx.Config{Silent: true}, UpstreamTimeout: 1500 * time.Millisecond})
	rs := h.do(t, "tcp", siptest.Request{Method: sip.INVITE, RequestURI: "sip:1002@pbx-a.example.com", FromUser: "1001",
		Headers: []sip.Header{&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "1001", Host: "127.0.0.1", Port: 5999}}}}.Build(t))
	if len(rs) < 2 || rs[0].StatusCode != 100 || rs[len(rs)-1].StatusCode != 408 {
		var codes []int
		for _, r := range rs {
			codes = append(codes, r.StatusCode)
		}
		t.Fatalf("client got %v, want 100 Trying, then 408", codes)
	}
}

// TestRoutingOrder: a request goes to the upstream its next Route names
// (after authproxy's own Route entries), else the one its Request-URI host
// names (an upstream's host or one of its domains), else the default
// upstream.
func TestRoutingOrder(t *testing.T) {
	h := startHarness(t, harnessOptions{Mutate: func(cfg *proxy.Config, _ *harness) {
		cfg.Upstreams[1].Default = true
	}})
	lr := sip.HeaderParams{{K: "lr", V: ""}}
	routeTo := func(addr string) *sip.RouteHeader {
		host, port := siptest.SplitAddr(t, addr)
		return &sip.RouteHeader{Address: sip.Uri{Scheme: "sip", Host: host, Port: port, UriParams: lr}}
	}
	for _, tc := range []struct {
		name   string
		ruri   string
		routes []string
		want   *fakepbx.Server
	}{
		{"request-uri domain", "sip:1002@pbx-a.example.com", nil, h.A},
		{"request-uri host", "sip:1002@" + h.A.Addr(), nil, h.A},
		{"route over request-uri", "sip:1002@pbx-b.example.com", []string{h.A.Addr()}, h.A},
		{"route after our own", "sip:1002@pbx-b.example.com", []string{h.Addr["udp"], h.A.Addr()}, h.A},
		{"default", "sip:1002@unknown.example.net", nil, h.B},
	} {
		t.Run(tc.name, func(t *testing.T) {
			callID := uuid.NewString()
			var hdrs []sip.Header
			for _, r := range tc.routes {
				hdrs = append(hdrs, routeTo(r))
			}
			if res := h.final(t, "udp", siptest.Request{Method: sip.MESSAGE, RequestURI: tc.ruri, FromUser: "1001", CallID: callID, Headers: hdrs}); res.StatusCode != 200 {
				t.Fatalf("status %d", res.StatusCode)
			}
			for _, pbx := range []*fakepbx.Server{h.A, h.B} {
				got := slices.ContainsFunc(pbx.Requests(), func(r fakepbx.Request) bool { return r.CallID == callID })
				if got != (pbx == tc.want) {
					t.Errorf("%s received the request: %v", pbx.Addr(), got)
				}
			}
		})
	}
}
