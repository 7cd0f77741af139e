package bench

import (
	"os"
	"testing"

	"github.com/authproxy/authproxy/internal/peers"
)

func TestMain(m *testing.M) {
	code := m.Run()
	peers.RemoveAuthproxyBuild()
	os.Exit(code)
}
