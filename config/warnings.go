package config

import (
	"fmt"
	"log/slog"
	"strings"
)

// Warnings lists what in a valid configuration is legal but most likely
// not what was meant, one sentence each naming the key: authproxy -check
// prints them and the start logs them. They are not errors, because each
// has a use (a trace switched on by a later reload of log.level, an
// upstream kept for the next reload).
func (c *Config) Warnings() []string {
	var out []string
	if c.Log.SIPTrace && c.Log.Level > slog.LevelDebug {
		out = append(out, fmt.Sprintf("log.sip_trace = true: SIP messages are logged at debug level, and log.level is %q: "+
			"nothing is traced until log.level is \"debug\"", strings.ToLower(c.Log.Level.String())))
	}
	used := map[string]bool{}
	for _, g := range c.Clients {
		for _, u := range g.Upstreams {
			used[u] = true
		}
	}
	for _, r := range c.Registrations {
		used[r.Upstream] = true
	}
	if used["*"] {
		return out
	}
	for i, u := range c.Upstreams {
		if !used[u.Name] {
			out = append(out, fmt.Sprintf("upstream[%d] %q: no [[client]] group lists it in upstreams and no [[registration]] names it: "+
				"nothing is forwarded to it", i, u.Name))
		}
	}
	return out
}
