package proxy

import (
	"os"
	"testing"
)

// TestMain sets sipgo's process-wide settings as cmd/authproxy does.
func TestMain(m *testing.M) {
	TuneSIPStack()
	os.Exit(m.Run())
}
