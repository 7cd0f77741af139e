package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Validation of [[listen]]: addresses, transports and TLS files.

func (v *validator) buildListen(ls []fileListen) []Listen {
	if len(ls) == 0 {
		v.add("listen", "", "at least one [[listen]] table is required", ErrRequired, nil)
		return nil
	}
	out := make([]Listen, 0, len(ls))
	seen := map[string]int{} // transport + " " + address → first index
	for i, l := range ls {
		key := fmt.Sprintf("listen[%d]", i)
		tr := v.transport(key, l.Transport)
		o := Listen{Transport: tr, Address: l.Address, Advertise: l.Advertise}
		if tr == "tls" {
			o.CertFile = v.existingFile(key+".cert_file", l.CertFile, "the listener's PEM certificate chain")
			if v.opts.skipSecrets && l.KeyFile != "" {
				o.KeyFile = l.KeyFile // a secret: left unread
			} else {
				o.KeyFile = v.existingFile(key+".key_file", l.KeyFile, "the listener's PEM private key")
			}
		} else {
			for _, f := range []struct{ k, v string }{{"cert_file", l.CertFile}, {"key_file", l.KeyFile}} {
				if f.v != "" {
					v.add(key+"."+f.k, strconv.Quote(f.v), `applies only to transport = "tls"`, ErrInvalid, nil)
				}
			}
		}
		if l.Address == "" {
			v.add(key+".address", "", `is required, as "host:port"`, ErrRequired, nil)
			out = append(out, o)
			continue
		}
		host, port, rule := parseAddress(l.Address, 0)
		if rule != "" {
			v.add(key+".address", strconv.Quote(l.Address), rule, ErrInvalid, nil)
			out = append(out, o)
			continue
		}
		o.Address = net.JoinHostPort(host, strconv.Itoa(port))
		switch {
		case l.Advertise != "":
			adv := lowerASCII(strings.TrimSuffix(strings.TrimPrefix(l.Advertise, "["), "]"))
			if !validHost(adv) || unspecified(adv) {
				v.add(key+".advertise", strconv.Quote(l.Advertise),
					"must be a hostname or IP address peers can reach (not 0.0.0.0 or ::)", ErrInvalid, nil)
			}
			o.Advertise = adv
		case unspecified(host):
			v.add(key+".advertise", `""`, fmt.Sprintf(
				"is required when the address host is unspecified (%q): Via and Record-Route need a host peers can reach",
				l.Address), ErrRequired, nil)
		default:
			o.Advertise = host
		}
		// Port 0 binds a fresh ephemeral port each time, so two such
		// listeners never collide.
		if port != 0 {
			k := tr + " " + o.Address
			if j, dup := seen[k]; dup {
				v.add(key, strconv.Quote(l.Address),
					fmt.Sprintf("duplicates listen[%d]: same transport and address", j), ErrDuplicate, nil)
			} else {
				seen[k] = i
			}
		}
		out = append(out, o)
	}
	return out
}

func (v *validator) transport(key, t string) string {
	switch lt := strings.ToLower(t); lt {
	case "":
		return "udp"
	case "udp", "tcp", "tls":
		return lt
	}
	v.add(key+".transport", strconv.Quote(t), `must be "udp", "tcp" or "tls"`, ErrInvalid, nil)
	return t
}
