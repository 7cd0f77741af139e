package peers

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"
)

// KamailioConfig configures StartKamailio. The zero value of every field but
// Users is a usable default.
type KamailioConfig struct {
	// Mode selects the generated script: the instrumented PBX of the
	// interop tests (the zero value) or one of the lean scripts of the load
	// tests (KamailioLoadTrunk, KamailioUACProxy), which take only the
	// options their doc names.
	Mode KamailioMode
	// Host is the loopback IPv4 address to listen on, e.g. "127.0.0.2".
	// Empty means "127.0.0.1".
	Host string
	// Port is used for both UDP and TCP. Zero picks a free one (FreePort).
	Port int
	// Realm is the digest realm of every challenge. Empty means "asterisk",
	// Asterisk's default, which is the same on every PBX: exactly the case
	// where a proxy must pick credentials by server, not by realm.
	Realm string
	// Users maps auth usernames to plain-text passwords; they are written
	// into the generated script. Control characters are refused, and so are
	// '"', '\' and '|' in usernames (passwords may contain them).
	Users map[string]string
	// Algorithm is the digest algorithm of the challenges: "" or "MD5", or
	// "SHA-256". Kamailio 5.6's auth module knows no other (no -sess, no
	// SHA-512-256) and sends exactly one challenge header.
	Algorithm string
	// QOP is offered in the challenges: "" or "auth", "auth-int", or
	// "none" (no qop, RFC 2069 style responses). Kamailio 5.6 offers one
	// value only; its qop modparam rejects a list.
	//
	// Kamailio 5.6 cannot verify qop=auth-int responses: auth_check_response
	// hashes an uninitialised H(entity-body), so every auth-int answer is
	// rejected as a wrong password. It does accept a qop=auth answer to an
	// auth-int-only challenge.
	QOP string
	// StaleOnce answers the first valid credentials of each Call-ID with a
	// fresh challenge carrying stale=true, so a client must retry with the
	// new nonce and the same password. Later requests on that Call-ID are
	// accepted normally.
	StaleOnce bool
	// StrictURI rejects (as a wrong password would be) credentials whose
	// digest uri differs from the Request-URI, which RFC 3261 §22.4 requires
	// to be equal. Kamailio does not check this on its own.
	StrictURI bool
	// NonceExpire is the nonce lifetime (Kamailio's nonce_expire, whole
	// seconds). Credentials on an older nonce get a stale=true challenge.
	// Zero keeps Kamailio's default of 300s.
	NonceExpire time.Duration
	// NonceCount makes Kamailio check nonce counts (auth nonce_count): an
	// nc seen before for a nonce is refused as a replay (-6, logged
	// "fail"), out-of-order counts are accepted. This is how a PBX catches
	// a client reusing a nonce carelessly.
	NonceCount bool
	// Children is the number of UDP and of TCP worker processes. Zero
	// means 2.
	Children int
	// SharedMemoryMB is Kamailio's shared memory (-m), which holds every
	// transaction until its wait timer ends. Zero means 32, plenty for a
	// handful of requests; under load Kamailio answers 500 once it runs
	// out (tm: "out of mem"), so a load test needs a few hundred.
	SharedMemoryMB int
	// PrivateMemoryMB is each process's private memory (-M). Zero means 4.
	PrivateMemoryMB int

	// RelayTo switches on relay mode: Kamailio becomes a PBX trunk in front
	// of a UAS (e.g. a SIPp scenario started with StartSipp) at this
	// loopback "host:port". It challenges the initial INVITE with 407 like
	// everything else and, once the credentials are valid, Record-Routes it
	// and relays it statefully to RelayTo. Requests inside the dialog (To
	// tag) follow the route set (loose_route) without a challenge, as on
	// most PBX trunks; the ACK for a 2xx is relayed end to end, the ACK for
	// a non-2xx absorbed; a CANCEL goes after its INVITE's transaction.
	// Non-INVITE requests outside a dialog are answered as without RelayTo.
	// Every relayed INVITE, ACK, BYE and CANCEL is logged (see AuthEvent),
	// with the auth username its credentials carry, if any.
	RelayTo string
	// RelayTransport is the transport toward RelayTo: "" or "udp", or
	// "tcp".
	RelayTransport string
	// ChallengeBYE (relay mode only) also challenges a BYE that the caller's
	// side sends in a dialog, as some PBXs do; the callee's BYE (from the
	// RelayTo host) is relayed unchallenged.
	ChallengeBYE bool
	// Registrar switches on registrar mode: an INVITE outside a dialog is
	// challenged, then Record-Routed and relayed to the contact
	// lookup("location") finds for its Request-URI user, through the Path
	// that REGISTER stored (RFC 3327; registrar use_path). Requests inside
	// the dialog follow the route set as in relay mode. Excludes RelayTo.
	Registrar bool
	// Advertise is a loopback "host:port" Kamailio writes into its Via and
	// Record-Route headers instead of its own address, and accepts as its
	// own in Route headers (an alias): the address of a relay in front of
	// it (internal/lossyrelay), so that requests inside a dialog take the
	// relay too. Empty means Host:Port. UDP only.
	Advertise string
	// InviteStatus is the final status Kamailio answers an authenticated
	// INVITE with when it relays nothing (neither RelayTo nor Registrar):
	// 300..699; zero means 486 Busy Here. 503 plays a carrier that cannot
	// take calls (a proxy relaying a callee's 503 sends 500 instead, RFC
	// 3261 §16.7 step 6).
	InviteStatus int
	// Secret is the auth module's secret, from which nonces are computed.
	// Empty lets Kamailio draw one at each start; a fixed one keeps the
	// nonces it issued valid across a restart (as on a cluster of PBXs).
	Secret string
}

// Kamailio is a running Kamailio started by StartKamailio.
type Kamailio struct {
	cfg  KamailioConfig
	proc *Process
}

var (
	//go:embed kamailio.cfg.tmpl
	kamailioPBXTemplate string
	//go:embed kamailio_trunk.cfg.tmpl
	kamailioTrunkTemplate string
	//go:embed kamailio_uacproxy.cfg.tmpl
	kamailioUACProxyTemplate string
)

// kamailioTmpls holds the script template of each mode.
var kamailioTmpls = map[KamailioMode]*template.Template{
	KamailioPBX:       parseKamailioTemplate(kamailioPBXTemplate),
	KamailioLoadTrunk: parseKamailioTemplate(kamailioTrunkTemplate),
	KamailioUACProxy:  parseKamailioTemplate(kamailioUACProxyTemplate),
}

func parseKamailioTemplate(text string) *template.Template {
	return template.Must(template.New("kamailio.cfg").
		Funcs(template.FuncMap{"kstr": kamailioString}).
		Parse(text))
}

// kamailioString escapes s for a double-quoted Kamailio config string.
func kamailioString(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s)
}

// readyTimeout bounds how long StartKamailio waits for the first answer.
const readyTimeout = 10 * time.Second

// StartKamailio renders a kamailio.cfg for cfg into t.TempDir(), runs
// Kamailio in the foreground (no daemon, logging to stderr) and returns once
// it answers a SIP OPTIONS over UDP and accepts a TCP connection. Cleanup
// stops it. If Port is zero and the chosen port is taken before Kamailio
// binds it, StartKamailio tries again with another port.
func StartKamailio(t testing.TB, cfg KamailioConfig) *Kamailio {
	t.Helper()
	bin, err := LookPath("kamailio")
	if err != nil {
		t.Fatalf("peers: %v (call peers.Require first; %s)", err, InstallHint)
	}
	cfg, err = normalizeKamailio(cfg)
	if err != nil {
		t.Fatalf("peers: StartKamailio: %v", err)
	}
	pickPort := cfg.Port == 0
	for attempt := 1; ; attempt++ {
		if pickPort {
			cfg.Port = FreePort(t, cfg.Host)
		}
		k, err := startKamailio(t, bin, cfg)
		if err == nil {
			return k
		}
		if pickPort && attempt < 3 && errors.Is(err, errAddrInUse) {
			t.Logf("peers: kamailio port %d was taken, retrying: %v", cfg.Port, err)
			continue
		}
		t.Fatalf("peers: StartKamailio %s:%d: %v", cfg.Host, cfg.Port, err)
	}
}

var errAddrInUse = errors.New("address already in use")

func normalizeKamailio(cfg KamailioConfig) (KamailioConfig, error) {
	if err := checkMode(cfg); err != nil {
		return cfg, err
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if err := checkLoopback(cfg.Host); err != nil {
		return cfg, err
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return cfg, fmt.Errorf("port %d out of range", cfg.Port)
	}
	if cfg.Realm == "" {
		cfg.Realm = "asterisk"
	}
	switch strings.ToUpper(cfg.Algorithm) {
	case "", "MD5":
		cfg.Algorithm = "MD5"
	case "SHA-256":
		cfg.Algorithm = "SHA-256"
	default:
		return cfg, fmt.Errorf("algorithm %q: kamailio 5.6 challenges with MD5 or SHA-256 only", cfg.Algorithm)
	}
	switch cfg.QOP {
	case "":
		cfg.QOP = "auth"
	case "auth", "auth-int", "none":
	default:
		return cfg, fmt.Errorf("qop %q: want auth, auth-int or none", cfg.QOP)
	}
	if cfg.Children <= 0 {
		cfg.Children = 2
	}
	if cfg.SharedMemoryMB <= 0 {
		cfg.SharedMemoryMB = 32
	}
	if cfg.PrivateMemoryMB <= 0 {
		cfg.PrivateMemoryMB = 4
	}
	if cfg.RelayTo != "" {
		if err := checkLoopbackAddr(cfg.RelayTo); err != nil {
			return cfg, fmt.Errorf("relay target: %w", err)
		}
		switch strings.ToLower(cfg.RelayTransport) {
		case "", "udp":
			cfg.RelayTransport = "udp"
		case "tcp":
			cfg.RelayTransport = "tcp"
		default:
			return cfg, fmt.Errorf("relay transport %q: want udp or tcp", cfg.RelayTransport)
		}
	} else if cfg.RelayTransport != "" || cfg.ChallengeBYE {
		return cfg, errors.New("RelayTransport and ChallengeBYE need RelayTo")
	}
	switch {
	case cfg.InviteStatus == 0: // 486, filled in by renderKamailio
	case cfg.InviteStatus < 300 || cfg.InviteStatus > 699:
		return cfg, fmt.Errorf("invite status %d: want 300..699", cfg.InviteStatus)
	case cfg.RelayTo != "" || cfg.Registrar:
		return cfg, errors.New("InviteStatus needs neither RelayTo nor Registrar")
	}
	if cfg.Registrar && cfg.RelayTo != "" {
		return cfg, errors.New("Registrar and RelayTo exclude each other")
	}
	if cfg.Advertise != "" {
		if err := checkLoopbackAddr(cfg.Advertise); err != nil {
			return cfg, fmt.Errorf("advertise: %w", err)
		}
	}
	if strings.ContainsAny(cfg.Secret, "\"\\") || strings.ContainsFunc(cfg.Secret, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return cfg, errors.New("secret: no quote, backslash or control character")
	}
	check := func(what, s string) error {
		if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("%s %q contains a control character", what, s)
		}
		return nil
	}
	// Realm and usernames travel as digest quoted-strings, which Kamailio
	// does not unescape, and appear in the "|"-separated log lines.
	token := func(what, s string) error {
		if err := check(what, s); err != nil {
			return err
		}
		if strings.ContainsAny(s, `"\|`) {
			return fmt.Errorf("%s %q contains one of \" \\ |", what, s)
		}
		return nil
	}
	if err := token("realm", cfg.Realm); err != nil {
		return cfg, err
	}
	for u, p := range cfg.Users {
		if u == "" {
			return cfg, errors.New("empty username in Users")
		}
		if err := errors.Join(token("username", u), check("password of "+u, p)); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

type kamailioUser struct{ Name, Password string }

// kamailioData is what kamailio.cfg.tmpl sees.
type kamailioData struct {
	KamailioConfig
	Users          []kamailioUser // sorted by name, for a stable script
	QOPParam       string         // auth module "qop" modparam
	ChallengeFlags int            // www_challenge/proxy_challenge flags
	StaleFlags     int            // the same plus stale=true
	NonceExpire    int            // seconds, 0 = module default
	RelayHost      string         // host of RelayTo
	ListenHost     string         // Host, in brackets when IPv6
}

func renderKamailio(cfg KamailioConfig) ([]byte, error) {
	d := kamailioData{KamailioConfig: cfg, ListenHost: cfg.Host}
	if d.InviteStatus == 0 {
		d.InviteStatus = 486
	}
	if strings.Contains(cfg.Host, ":") {
		d.ListenHost = "[" + cfg.Host + "]"
	}
	for u, p := range cfg.Users {
		d.Users = append(d.Users, kamailioUser{u, p})
	}
	slices.SortFunc(d.Users, func(a, b kamailioUser) int { return strings.Compare(a.Name, b.Name) })
	switch cfg.QOP {
	case "auth":
		d.QOPParam, d.ChallengeFlags = "auth", 1
	case "auth-int":
		d.QOPParam, d.ChallengeFlags = "auth-int", 2
	case "none":
		d.QOPParam, d.ChallengeFlags = "", 0
	}
	d.StaleFlags = d.ChallengeFlags | 16
	if cfg.NonceExpire > 0 {
		d.NonceExpire = max(1, int(cfg.NonceExpire/time.Second))
	}
	if cfg.RelayTo != "" {
		d.RelayHost, _, _ = net.SplitHostPort(cfg.RelayTo)
	}
	var buf bytes.Buffer
	if err := kamailioTmpls[cfg.Mode].Execute(&buf, d); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func startKamailio(t testing.TB, bin string, cfg KamailioConfig) (*Kamailio, error) {
	t.Helper()
	script, err := renderKamailio(cfg)
	if err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	dir, err := os.MkdirTemp(t.TempDir(), "kamailio-")
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "kamailio.cfg")
	if err := os.WriteFile(cfgPath, script, 0o600); err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	proc := StartProcess(t, ProcessConfig{
		Name: "kamailio " + cfg.Mode.String() + " " + addr,
		Path: bin,
		Args: []string{
			"-DD",      // do not daemonize: the main process stays our child
			"-E",       // log to stderr
			"-a", "no", // no auto aliases (no DNS lookups of the host)
			"-f", cfgPath,
			"-P", filepath.Join(dir, "kamailio.pid"),
			"-Y", dir, // runtime dir (sockets, fifo) of our own
			"-w", dir,
			"-m", strconv.Itoa(cfg.SharedMemoryMB),
			"-M", strconv.Itoa(cfg.PrivateMemoryMB),
		},
		Dir: dir,
		// The script's exit_timeout=1 bounds the main process's own wait for
		// its children; this is the backstop.
		StopGrace: 3 * time.Second,
	})
	k := &Kamailio{cfg: cfg, proc: proc}

	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout)
	defer cancel()
	if cfg.Mode == KamailioPBX {
		err = k.waitReady(ctx)
	} else {
		// The lean scripts know no probe and listen on UDP only: any
		// answer (a 407) will do.
		err = waitSIP(ctx, addr, proc)
	}
	t.Logf("peers: kamailio %s ready after %v", addr, time.Since(start).Round(time.Millisecond))
	if err != nil {
		_ = proc.Stop()
		out := proc.Output()
		if strings.Contains(out, "Address already in use") {
			err = fmt.Errorf("%w: %v", errAddrInUse, err)
		}
		return nil, fmt.Errorf("not ready: %w\n--- kamailio output ---\n%s", err, out)
	}
	return k, nil
}

// waitReady waits for an answer to a probe over UDP, then for a TCP
// connection to be accepted. Kamailio binds every socket before it forks
// its workers, so UDP answering means TCP is bound too; the dial confirms.
func (k *Kamailio) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopOnExit(ctx, cancel, k.proc)
	if err := k.probe(ctx); err != nil {
		return err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", k.Addr())
	if err != nil {
		return fmt.Errorf("tcp: %w", err)
	}
	return c.Close()
}

// probe sends an OPTIONS with X-Peers-Probe and waits until Kamailio has
// answered it and its log line has been read back.
func (k *Kamailio) probe(ctx context.Context) error {
	token := NewToken(8)
	resp, err := UDPExchange(ctx, k.Addr(), true, func(local string) string {
		return probeRequest(k.Addr(), local, token)
	})
	if err != nil {
		return err
	}
	if code := StatusCode(resp); code != 200 {
		return fmt.Errorf("probe answered %d, want 200:\n%s", code, resp)
	}
	// The worker logged the probe before answering it, and pipes are FIFO:
	// once this line is read, so is everything logged before the probe.
	marker := "PEERS|probe|" + token
	_, err = k.proc.WaitLine(ctx, func(l string) bool { return strings.Contains(l, marker) })
	return err
}

// Kill ends Kamailio at once, as a crash would: SIGKILL to its process
// group (the main process and its workers, which share the sockets), and
// waits until the main process has exited. Start a new one with the same
// KamailioConfig (Config) to restart it.
func (k *Kamailio) Kill() error {
	return k.proc.Kill()
}

// Addr returns "host:port", the same for UDP and TCP.
func (k *Kamailio) Addr() string {
	return net.JoinHostPort(k.cfg.Host, strconv.Itoa(k.cfg.Port))
}

// Config returns the effective configuration, defaults filled in.
func (k *Kamailio) Config() KamailioConfig { return k.cfg }

// Process returns Kamailio's main process (the parent of its workers).
func (k *Kamailio) Process() *Process { return k.proc }

// Log returns Kamailio's stderr so far. Use Events for anything a test
// asserts on: it first makes sure every earlier request has been logged.
func (k *Kamailio) Log() string { return k.proc.Output() }

// AuthEvent is one authentication decision logged by the generated script
// or, in relay mode, one request relayed without one.
type AuthEvent struct {
	// Result is "ok", "challenge" (no credentials for the realm), "fail"
	// (wrong password, unknown username, reused nonce, digest uri mismatch),
	// "expired" (stale nonce, re-challenged with stale=true) or "stale"
	// (StaleOnce).
	//
	// Relay mode adds "relay", a request relayed with no authentication
	// check: one inside a dialog that followed the route set (the ACK for
	// a 2xx, a BYE from either side, a re-INVITE), or a CANCEL that matched
	// its INVITE's transaction; and "stray", a request dropped because it
	// matched nothing: a CANCEL without a transaction (answered 481), an ACK
	// that neither follows a route set nor matches a transaction, or a
	// request with a To tag but no route set for Kamailio (answered 404).
	// The ACK for a non-2xx final response, which tm absorbs hop by hop, is
	// not logged.
	Result string
	// Code is the return code of pv_www/proxy_authenticate: 1 ok, -2 bad
	// password or unknown user, -4 nonce expired, -5 no credentials, -6
	// nonce reused; and -10, made up by the script: digest uri is not the
	// Request-URI (StrictURI). 0 for "relay" and "stray".
	Code      int
	Method    string
	RURIUser  string // user part of the Request-URI
	Username  string // auth username from the credentials, "" if none
	Realm     string // realm from the credentials, "" if none
	Transport string // "udp" or "tcp"
	CSeq      int
	Source    string // IP address the request came from
	CallID    string
}

// syncTimeout bounds the log sync of Events.
const syncTimeout = 5 * time.Second

// Events returns every auth decision (and, in relay mode, every relayed or
// stray request) so far, in log order. It first sends a probe and waits for
// its log line, so every request answered before the call is included. If
// Kamailio has stopped it returns what was logged. The lean scripts of
// KamailioLoadTrunk and KamailioUACProxy log no events.
func (k *Kamailio) Events() []AuthEvent {
	if k.cfg.Mode != KamailioPBX {
		return nil
	}
	select {
	case <-k.proc.Done():
	default:
		ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
		_ = k.probe(ctx) // on failure, report what was read
		cancel()
	}
	return parseEvents(k.proc.Output())
}

func parseEvents(log string) []AuthEvent {
	var evs []AuthEvent
	for line := range strings.SplitSeq(log, "\n") {
		_, rest, ok := strings.Cut(line, "PEERS|")
		if !ok {
			continue
		}
		f := strings.SplitN(strings.TrimRight(rest, "\r"), "|", 10)
		if len(f) != 10 {
			continue // probes and anything unexpected
		}
		for i := range f {
			if f[i] == "<null>" {
				f[i] = ""
			}
		}
		code, _ := strconv.Atoi(f[1])
		cseq, _ := strconv.Atoi(f[7])
		evs = append(evs, AuthEvent{
			Result: f[0], Code: code, Method: f[2], RURIUser: f[3], Username: f[4],
			Realm: f[5], Transport: f[6], CSeq: cseq, Source: f[8], CallID: f[9],
		})
	}
	return evs
}

// AuthUsernames returns the distinct auth usernames whose credentials
// Kamailio accepted, sorted.
func (k *Kamailio) AuthUsernames() []string {
	return usernames(k.Events(), func(e AuthEvent) bool { return e.Result == "ok" })
}

// SeenUsernames returns the distinct auth usernames that reached Kamailio in
// any credentials, accepted or not, sorted. A test that server B never
// receives server A's account asserts on this.
func (k *Kamailio) SeenUsernames() []string {
	return usernames(k.Events(), func(AuthEvent) bool { return true })
}

func usernames(evs []AuthEvent, keep func(AuthEvent) bool) []string {
	var out []string
	for _, e := range evs {
		if e.Username != "" && keep(e) {
			out = append(out, e.Username)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
