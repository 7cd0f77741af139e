// Package browser runs a JsSIP softphone (npm package jssip) in headless
// Chromium (Debian package chromium) for the interop tests of SIP over
// WebSocket: it bundles JsSIP for a page (npm package esbuild), serves that
// page on a loopback address, starts Chromium with fake media devices and
// drives the page through the DevTools protocol over a WebSocket. The
// same softphone script also runs in Node (node/phone.js, NodePhone) over
// the npm ws WebSocket with a stand-in RTCPeerConnection, for the
// signalling alone.
//
// The npm packages are installed into this directory's node_modules by
// scripts/install-peers (`npm ci` from package-lock.json); without them, or
// without chromium, Require skips the test (fails it when CI=true).
//
// Everything here is test support: functions take a testing.TB and stop
// what they started in t.Cleanup.
package browser

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/peers"
)

//go:embed page
var pageFS embed.FS

// InstallHint says how to get what Require needs.
const InstallHint = "apt-get install -y chromium nodejs npm && (cd internal/browser && npm ci)"

// dir is this package's directory, where node_modules lives.
func dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// chromiumBinaries are the names Debian and others install Chromium under.
var chromiumBinaries = []string{"chromium", "chromium-browser", "google-chrome"}

func chromium() string {
	for _, b := range chromiumBinaries {
		if p, err := exec.LookPath(b); err == nil {
			return p
		}
	}
	return ""
}

// Require stops the test unless Chromium and the npm packages are
// installed: a skip, or a failure when CI=true.
func Require(t testing.TB) {
	t.Helper()
	var missing []string
	if chromium() == "" {
		missing = append(missing, "chromium")
	}
	for _, p := range []string{"node_modules/jssip/package.json", "node_modules/.bin/esbuild"} {
		if _, err := os.Stat(filepath.Join(dir(), p)); err != nil {
			missing = append(missing, "npm "+strings.Split(p, "/")[1])
		}
	}
	if len(missing) == 0 {
		return
	}
	if peers.InCI() {
		t.Fatalf("browser: %s not installed but CI=true: %s", strings.Join(missing, ", "), InstallHint)
	}
	t.Skipf("browser: %s not installed; %s", strings.Join(missing, ", "), InstallHint)
}

var (
	bundleOnce sync.Once
	bundle     []byte
	bundleErr  error
)

// jssipBundle is JsSIP bundled for a page (JsSIP ships CommonJS only),
// built once per test binary.
func jssipBundle() ([]byte, error) {
	bundleOnce.Do(func() {
		tmp, err := os.MkdirTemp("", "jssip-bundle")
		if err != nil {
			bundleErr = err
			return
		}
		defer os.RemoveAll(tmp)
		entry := filepath.Join(tmp, "entry.js")
		if err := os.WriteFile(entry, []byte("window.JsSIP = require('jssip');\n"), 0o600); err != nil {
			bundleErr = err
			return
		}
		out := filepath.Join(tmp, "jssip.js")
		cmd := exec.Command(filepath.Join(dir(), "node_modules", ".bin", "esbuild"), entry, "--bundle", "--outfile="+out)
		cmd.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(dir(), "node_modules"))
		if b, err := cmd.CombinedOutput(); err != nil {
			bundleErr = fmt.Errorf("esbuild: %w: %s", err, b)
			return
		}
		bundle, bundleErr = os.ReadFile(out)
	})
	return bundle, bundleErr
}

// Page is the softphone page served on a loopback address.
type Page struct {
	// Origin is the page's origin, "http://127.0.0.1:port", which a "ws"
	// listener's origins must allow.
	Origin string
	// Served is everything the page server sent, for assertions that the
	// page holds no secret.
	served bytes.Buffer
	mu     sync.Mutex
}

// Served returns every byte the page server sent so far.
func (p *Page) Served() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.served.String()
}

// ServePage serves the softphone page (index.html, phone.js and the JsSIP
// bundle) on 127.0.0.1 until the test ends.
func ServePage(t testing.TB) *Page {
	t.Helper()
	js, err := jssipBundle()
	if err != nil {
		t.Fatalf("browser: bundling JsSIP: %v", err)
	}
	sub, err := fs.Sub(pageFS, "page")
	if err != nil {
		t.Fatal(err)
	}
	p := &Page{}
	mux := http.NewServeMux()
	send := func(w http.ResponseWriter, ctype string, body []byte) {
		p.mu.Lock()
		p.served.Write(body)
		p.mu.Unlock()
		w.Header().Set("Content-Type", ctype)
		_, _ = w.Write(body)
	}
	mux.HandleFunc("/jssip.js", func(w http.ResponseWriter, _ *http.Request) { send(w, "text/javascript", js) })
	for name, ctype := range map[string]string{"/": "text/html", "/phone.js": "text/javascript"} {
		file := strings.TrimPrefix(name, "/")
		if file == "" {
			file = "index.html"
		}
		body, err := fs.ReadFile(sub, file)
		if err != nil {
			t.Fatal(err)
		}
		mux.HandleFunc(name, func(w http.ResponseWriter, r *http.Request) {
			if name == "/" && r.URL.Path != "/" {
				http.NotFound(w, r)
				return
			}
			send(w, ctype, body)
		})
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	p.Origin = "http://" + ln.Addr().String()
	return p
}
