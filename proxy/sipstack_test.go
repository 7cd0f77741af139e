package proxy

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestTuneSIPStack checks the sipgo settings TuneSIPStack (run by
// TestMain) leaves: the timers that keep ended transactions for their
// retransmissions bounded by T4, and UDP writes allowed far above 1,300
// bytes.
func TestTuneSIPStack(t *testing.T) {
	timers := []struct {
		name string
		d    time.Duration
	}{
		{"Timer D (INVITE client, non-2xx final)", sip.Timer_D},
		{"Timer J (non-INVITE server)", sip.Timer_J},
		{"Timer K (non-INVITE client)", sip.Timer_K},
		{"Timer L (INVITE server, 2xx)", sip.Timer_L},
		{"Timer M (INVITE client, 2xx)", sip.Timer_M},
	}
	for _, tt := range timers {
		if tt.d > sip.T4 {
			t.Errorf("%s = %v, want at most T4 (%v)", tt.name, tt.d, sip.T4)
		}
	}
	if sip.UDPMTUSize < 9000 {
		t.Errorf("sip.UDPMTUSize = %d, want at least 9000", sip.UDPMTUSize)
	}
}
