package browser_test

import (
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/browser"
)

// TestPageLoads: the bundled JsSIP runs in headless Chromium and the
// page's softphone is ready to be driven.
func TestPageLoads(t *testing.T) {
	browser.Require(t)
	page := browser.ServePage(t)
	b := browser.Launch(t, page.Origin+"/")
	var version string
	b.Eval("JsSIP.version", &version)
	if version == "" {
		t.Fatal("JsSIP.version is empty")
	}
	b.WaitTrue(10*time.Second, "getUserMedia with the fake device", "navigator.mediaDevices.getUserMedia({audio: true}).then(s => s.getAudioTracks().length === 1)")
}
