package testutil

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
)

// HTTPGet returns the status code and body of GET url.
func HTTPGet(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return res.StatusCode, string(b)
}

// PortOf is the port of a "host:port".
func PortOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// Excerpt returns up to 50 bytes around s[i], for a failure message.
func Excerpt(s string, i int) string {
	return s[max(0, i-25):min(len(s), i+25)]
}
