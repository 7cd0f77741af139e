package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Addresses and names as the configuration spells them: host:port, host
// names, default ports.

// parseAddress parses "host:port", "[ipv6]:port" and, when defaultPort is
// not 0, also "host", "[ipv6]" and a bare IPv6 literal. The host is
// lowercased; an empty host is allowed only with an explicit port (":5060",
// a listener on every interface). rule is "" on success.
func parseAddress(s string, defaultPort int) (host string, port int, rule string) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		if defaultPort == 0 {
			return "", 0, `must be "host:port" (IPv6 as "[::1]:5060")`
		}
		h = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
		p = strconv.Itoa(defaultPort)
		if h == "" || !validHost(h) {
			return "", 0, `must be "host:port" or "host" (IPv6 as "[::1]:5060")`
		}
	}
	host = lowerASCII(h)
	if host != "" && !validHost(host) {
		return "", 0, fmt.Sprintf("host %q is not a hostname or IP address", h)
	}
	minPort := 1
	if defaultPort == 0 {
		minPort = 0 // a listener may ask for any free port
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < minPort || port > 65535 {
		return "", 0, fmt.Sprintf("port %q must be a number from %d to 65535", p, minPort)
	}
	return host, port, ""
}

// validHost accepts an IP address (IPv6 without brackets, zone allowed)
// or a DNS name of letters, digits, '-' and '_' labels.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := range len(label) {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// unspecified reports whether host binds every interface: empty, 0.0.0.0
// or ::.
func unspecified(host string) bool {
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsUnspecified()
}

// lowerASCII lowercases ASCII letters only, as the credential store does:
// hosts are ASCII, and Unicode folding could make two hosts equal.
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func hasControl(s string) bool {
	for i := range len(s) {
		if c := s[i]; c < ' ' || c == 0x7f {
			return true
		}
	}
	return false
}

// defaultPort is the RFC 3261 §19.1.2 default port of a transport.
func defaultPort(transport string) int {
	if transport == "tls" {
		return 5061
	}
	return defaultSIPPort
}
