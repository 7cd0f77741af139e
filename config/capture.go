package config

import (
	"net"
	"strconv"
	"strings"
)

// Capture is the [capture] table: a HEPv3 copy of every SIP message
// authproxy reads or writes, sent to Homer (heplify-server), sngrep or
// another HEP receiver.
type Capture struct {
	// HEP is the receiver's normalised "host:port", sent to over UDP; ""
	// (the default) captures nothing. The file spells it
	// "udp:host:port", the port defaulting to 9060.
	HEP string
	// Redact replaces the digest response, cnonce and rspauth values of
	// Authorization, Proxy-Authorization and Authentication-Info headers
	// with "[redacted]" in what is sent (default true).
	Redact bool
	// AgentID is the capture agent id sent in every packet, 0..2^32-1
	// (default 0), telling one authproxy from another at the receiver.
	AgentID uint32
	// AuthKey is the receiver's password sent in every packet (HEPv3
	// chunk 14), "" for none (the default). It travels in clear text:
	// it tells deployments apart, it does not protect anything.
	AuthKey string
}

// Rules of [capture].
const (
	// hepScheme starts capture.hep: HEP receivers listen on UDP, and a
	// scheme leaves room for others without changing what the key means.
	hepScheme = "udp:"
	// defaultHEPPort is the port Homer's heplify-server and captagent use.
	defaultHEPPort = 9060
	// maxAuthKey bounds capture.auth_key: it is sent in every packet.
	maxAuthKey = 128
)

func (v *validator) buildCapture(c fileCapture) Capture {
	out := Capture{Redact: c.Redact, AuthKey: c.AuthKey}
	if c.AgentID < 0 || c.AgentID > 1<<32-1 {
		v.add("capture.agent_id", strconv.FormatInt(c.AgentID, 10), "must be between 0 and 4294967295", ErrInvalid, nil)
	} else {
		out.AgentID = uint32(c.AgentID)
	}
	if len(c.AuthKey) > maxAuthKey || hasControl(c.AuthKey) {
		v.add("capture.auth_key", redacted, "must be at most 128 bytes without control characters", ErrInvalid, nil)
	}
	if c.HEP == "" {
		return out
	}
	rest, ok := strings.CutPrefix(c.HEP, hepScheme)
	if !ok {
		v.add("capture.hep", strconv.Quote(c.HEP), `must be "udp:host:port" (HEP over UDP), or "" for no capture`, ErrInvalid, nil)
		return out
	}
	host, port, rule := parseAddress(rest, defaultHEPPort)
	if rule == "" && unspecified(host) {
		rule = "host must be the receiver's address, not empty or unspecified"
	}
	if rule != "" {
		v.add("capture.hep", strconv.Quote(c.HEP), rule, ErrInvalid, nil)
		return out
	}
	out.HEP = net.JoinHostPort(host, strconv.Itoa(port))
	return out
}
