package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, h http.Handler, method, path string) (int, http.Header, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, rec.Header(), string(b)
}

func TestEndpoints(t *testing.T) {
	var notReady error
	s := New(Config{
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "authproxy_up 1\n") }),
		Ready:   func() error { return notReady },
		Status: func() Status {
			return Status{Version: "v1", Upstreams: []Upstream{
				{Name: "pbx-a", Address: "127.0.0.2:5060", Transport: "udp", State: "up", LastStatus: 407},
				{Name: "carrier", Address: "carrier.example.net", Transport: "udp", State: "up", ResolveError: "lookup timed out",
					Targets: []Target{{Transport: "udp", Address: "192.0.2.1:5060", Name: "sip1.carrier.example.net", Priority: 10, Weight: 50, State: "down", LastFailure: "timeout"}}},
			}}
		},
	})
	h := s.Handler()

	if code, _, body := get(t, h, "GET", "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, _, body := get(t, h, "GET", "/metrics"); code != 200 || body != "authproxy_up 1\n" {
		t.Errorf("/metrics = %d %q", code, body)
	}
	if code, _, body := get(t, h, "GET", "/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz = %d %q", code, body)
	}
	notReady = errors.New("every upstream is down: pbx-a")
	if code, _, body := get(t, h, "GET", "/readyz"); code != 503 || !strings.Contains(body, "every upstream is down") {
		t.Errorf("/readyz not ready = %d %q", code, body)
	}

	code, hdr, body := get(t, h, "GET", "/status")
	if code != 200 || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("/status = %d %s", code, hdr.Get("Content-Type"))
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	if raw["ready"] != false || raw["not_ready_reason"] != "every upstream is down: pbx-a" {
		t.Errorf("/status readiness: %v %v", raw["ready"], raw["not_ready_reason"])
	}
	if regs, ok := raw["trunk_registrations"].([]any); !ok || len(regs) != 0 {
		t.Errorf("trunk_registrations = %#v, want []", raw["trunk_registrations"])
	}
	ups, _ := raw["upstreams"].([]any)
	if len(ups) != 2 || ups[0].(map[string]any)["state"] != "up" || ups[0].(map[string]any)["last_status"] != 407.0 {
		t.Errorf("upstreams = %v", raw["upstreams"])
	}
	if ts, ok := ups[0].(map[string]any)["targets"].([]any); !ok || len(ts) != 0 {
		t.Errorf("targets of an upstream without = %#v, want []", ups[0].(map[string]any)["targets"])
	}
	carrier := ups[1].(map[string]any)
	ts, _ := carrier["targets"].([]any)
	if carrier["resolve_error"] != "lookup timed out" || len(ts) != 1 {
		t.Fatalf("carrier = %v", carrier)
	}
	if tg := ts[0].(map[string]any); tg["address"] != "192.0.2.1:5060" || tg["name"] != "sip1.carrier.example.net" || tg["priority"] != 10.0 ||
		tg["state"] != "down" || tg["last_failure"] != "timeout" {
		t.Errorf("target = %v", tg)
	}

	if code, _, _ := get(t, h, "POST", "/healthz"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d, want 405", code)
	}
	if code, _, _ := get(t, h, "HEAD", "/readyz"); code != 503 {
		t.Errorf("HEAD /readyz = %d, want 503", code)
	}
	if code, _, _ := get(t, h, "GET", "/nope"); code != 404 {
		t.Errorf("/nope = %d, want 404", code)
	}
}

func TestNilHooks(t *testing.T) {
	h := New(Config{}).Handler()
	if code, _, _ := get(t, h, "GET", "/metrics"); code != 404 {
		t.Errorf("/metrics without a handler = %d, want 404", code)
	}
	if code, _, _ := get(t, h, "GET", "/readyz"); code != 200 {
		t.Errorf("/readyz without a hook = %d, want 200", code)
	}
	_, _, body := get(t, h, "GET", "/status")
	if !strings.Contains(body, `"upstreams": []`) || !strings.Contains(body, `"trunk_registrations": []`) {
		t.Errorf("/status without a hook:\n%s", body)
	}
}

// TestServeStops: Serve answers on the listener it is given and returns
// nil once its context ends, closing the listener.
func TestServeStops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(Config{}).Serve(ctx, ln) }()
	res, err := http.Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("/healthz = %d", res.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("listener still open after Serve returned")
	}
}

func TestPprofOnlyWhenEnabled(t *testing.T) {
	for _, on := range []bool{false, true} {
		h := New(Config{Pprof: on}).Handler()
		code, _, _ := get(t, h, "GET", "/debug/pprof/heap?debug=1")
		if want := map[bool]int{false: 404, true: 200}[on]; code != want {
			t.Errorf("Pprof %v: /debug/pprof/heap = %d, want %d", on, code, want)
		}
	}
}
