package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/proxy"
)

// regSource is a Source that keeps trunk registrations.
type regSource struct {
	fakeSource
	regs []proxy.RegistrationState
}

func (r *regSource) Registrations() []proxy.RegistrationState { return r.regs }

func TestTrunkRegistrationsGauge(t *testing.T) {
	m := New("v9")
	m.Attach(&regSource{regs: []proxy.RegistrationState{
		{AOR: "sip:a@x", State: proxy.RegStateRegistered},
		{AOR: "sip:b@x", State: proxy.RegStateFailing},
		{AOR: "sip:c@x", State: proxy.RegStateRegistered},
	}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if !strings.Contains(string(body), "authproxy_trunk_registrations 2\n") {
		t.Fatalf("/metrics lacks authproxy_trunk_registrations 2:\n%s", body)
	}
}
