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

// TestRegistrationUp: one authproxy_registration_up series per
// [[registration]], 1 only while registered; two registrations of one AOR
// with one upstream (different contact users) get distinct series.
func TestRegistrationUp(t *testing.T) {
	m := New("v9")
	m.Attach(&regSource{regs: []proxy.RegistrationState{
		{Upstream: "carrier", AOR: "sip:a@x", State: proxy.RegStateRegistered},
		{Upstream: "carrier", AOR: "sip:b@x", State: proxy.RegStateFailing},
		{Upstream: "pbx-a", AOR: "sip:c@x", State: proxy.RegStateRegistering},
		{Upstream: "pbx-a", AOR: "sip:c@x", State: proxy.RegStateRegistered},
	}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`authproxy_registration_up{registration="sip:a@x",upstream="carrier"} 1`,
		`authproxy_registration_up{registration="sip:b@x",upstream="carrier"} 0`,
		`authproxy_registration_up{registration="sip:c@x",upstream="pbx-a"} 0`,
		`authproxy_registration_up{registration="sip:c@x #2",upstream="pbx-a"} 1`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(string(body), "authproxy_trunk_registrations") {
		t.Error("the aggregate authproxy_trunk_registrations is still exported")
	}
}
