package peers

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// KamailioMode selects the script StartKamailio generates.
type KamailioMode int

const (
	// KamailioPBX, the zero value, is the instrumented PBX of the interop
	// tests (kamailio.cfg.tmpl): a stateful registrar/UAS that challenges
	// like Asterisk, logs every auth decision (Events) and, with RelayTo or
	// Registrar, relays INVITE dialogs. It listens on UDP and TCP.
	KamailioPBX KamailioMode = iota
	// KamailioLoadTrunk is the upstream of the load tests
	// (kamailio_trunk.cfg.tmpl): a lean PBX trunk that challenges every
	// request outside a dialog (407, qop=auth, MD5) and answers 200 once
	// the credentials are valid, statelessly, so that Kamailio's own
	// transaction memory does not cap the rate. INVITEs are Record-Routed
	// and relayed to RelayTo (required); requests in a dialog follow the
	// route set unchallenged. It listens on UDP only and logs nothing per
	// request. Options: Host, Port, Realm, Users, RelayTo, Children,
	// SharedMemoryMB, PrivateMemoryMB.
	KamailioLoadTrunk
	// KamailioUACProxy is the credential-injecting proxy authproxy is, run
	// by Kamailio as the load tests' reference
	// (kamailio_uacproxy.cfg.tmpl): it relays every request to the
	// upstream at RelayTo (required) and answers its 401/407 with the one
	// user of Users in Realm (uac_auth in a failure_route); the dialog
	// module's track_cseq_updates shifts the CSeq of later in-dialog
	// requests by the numbers uac_auth added. It listens on UDP only and
	// logs nothing per request. Options as KamailioLoadTrunk.
	KamailioUACProxy
)

func (m KamailioMode) String() string {
	switch m {
	case KamailioPBX:
		return "pbx"
	case KamailioLoadTrunk:
		return "load-trunk"
	case KamailioUACProxy:
		return "uac-proxy"
	}
	return fmt.Sprintf("mode-%d", int(m))
}

// checkMode refuses an unknown mode and, for the lean scripts, options
// they do not render and a missing RelayTo or user.
func checkMode(cfg KamailioConfig) error {
	switch cfg.Mode {
	case KamailioPBX:
		return nil
	case KamailioLoadTrunk, KamailioUACProxy:
	default:
		return fmt.Errorf("unknown mode %d", int(cfg.Mode))
	}
	var set []string
	for name, on := range map[string]bool{
		"Algorithm":      cfg.Algorithm != "" && !strings.EqualFold(cfg.Algorithm, "MD5"),
		"QOP":            cfg.QOP != "" && cfg.QOP != "auth",
		"StaleOnce":      cfg.StaleOnce,
		"StrictURI":      cfg.StrictURI,
		"NonceExpire":    cfg.NonceExpire != 0,
		"NonceCount":     cfg.NonceCount,
		"RelayTransport": cfg.RelayTransport != "" && !strings.EqualFold(cfg.RelayTransport, "udp"),
		"ChallengeBYE":   cfg.ChallengeBYE,
		"Registrar":      cfg.Registrar,
		"Advertise":      cfg.Advertise != "",
		"InviteStatus":   cfg.InviteStatus != 0,
		"Secret":         cfg.Secret != "",
	} {
		if on {
			set = append(set, name)
		}
	}
	if len(set) > 0 {
		slices.Sort(set)
		return fmt.Errorf("mode %s does not take %s", cfg.Mode, strings.Join(set, ", "))
	}
	if cfg.RelayTo == "" {
		return fmt.Errorf("mode %s needs RelayTo", cfg.Mode)
	}
	if len(cfg.Users) == 0 {
		return fmt.Errorf("mode %s needs a user", cfg.Mode)
	}
	if cfg.Mode == KamailioUACProxy {
		return checkUACCredential(cfg)
	}
	return nil
}

// checkUACCredential checks the uac module's "username:realm:password"
// credential, which its parser splits at ':' and ends at white space: one
// user, no ':' in the username or realm, no white space anywhere.
func checkUACCredential(cfg KamailioConfig) error {
	if len(cfg.Users) != 1 {
		return errors.New("mode uac-proxy answers with exactly one user")
	}
	for u, p := range cfg.Users {
		if strings.Contains(u+cfg.Realm, ":") {
			return errors.New("mode uac-proxy: no ':' in the username or realm")
		}
		if strings.ContainsFunc(u+cfg.Realm+p, unicode.IsSpace) {
			return errors.New("mode uac-proxy: no white space in the username, realm or password")
		}
	}
	return nil
}
