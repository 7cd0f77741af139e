package peers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"
)

// AuthproxyConfig configures StartAuthproxy.
type AuthproxyConfig struct {
	// Config is the TOML configuration, written to a file the binary reads
	// with -config. One without [[client]] gets a group admitting loopback
	// sources to every upstream (authproxy admits no one without one).
	Config string
	// Bin is the authproxy executable; empty means BuildAuthproxy.
	Bin string
	// Env is added to the test's environment for authproxy alone (e.g.
	// "GOMAXPROCS=1"), after NO_COLOR=1.
	Env []string
	// Wrap is a command line the binary and its arguments are appended to
	// (e.g. prlimit and its options); nil runs the binary directly.
	Wrap []string
	// ReadySIP is a UDP "host:port" authproxy listens on. When set,
	// StartAuthproxy waits for an answer (any SIP response) to an OPTIONS
	// sent there instead of the "ready" log line, which a configuration
	// logging at warn or above does not print.
	ReadySIP string
	// ReadyAdmin is the admin listener's "host:port". When set (and ReadySIP
	// is not), StartAuthproxy waits for its /readyz to answer 200 instead of
	// the "ready" log line.
	ReadyAdmin string
}

// Authproxy is a running authproxy binary started by StartAuthproxy.
type Authproxy struct {
	proc       *Process
	configPath string
}

// authproxyReadyTimeout bounds the wait for readiness.
const authproxyReadyTimeout = 15 * time.Second

// authproxyStopGrace bounds the wait after SIGTERM before SIGKILL. It is
// longer than the shutdown_grace the tests configure.
const authproxyStopGrace = 10 * time.Second

// StartAuthproxy writes cfg.Config to a file under t.TempDir and runs
// `authproxy -config <file>`. It returns once authproxy is ready: by
// default once it has logged the JSON line {"msg":"ready"}, which it prints
// after every listener is bound (ReadySIP and ReadyAdmin choose another
// signal). Cleanup sends SIGTERM, waits (bounded), then SIGKILL, and fails
// the test if the race detector reported anything.
func StartAuthproxy(t testing.TB, cfg AuthproxyConfig) *Authproxy {
	t.Helper()
	conf := cfg.Config
	if !strings.Contains(conf, "[[client]]") {
		conf += "\n[[client]]\nname = \"loopback\"\nnetworks = [\"127.0.0.0/8\"]\nupstreams = [\"*\"]\n"
	}
	bin := cfg.Bin
	if bin == "" {
		bin = BuildAuthproxy(t)
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "authproxy.toml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatalf("peers: authproxy config: %v", err)
	}
	var a *Authproxy
	// Registered before StartProcess's cleanup, so it runs after the stop.
	t.Cleanup(func() {
		if a != nil && strings.Contains(a.Logs(), "WARNING: DATA RACE") {
			t.Errorf("authproxy: the race detector reported a data race (output above)")
		}
	})
	path, args := bin, []string{"-config", cfgPath}
	if len(cfg.Wrap) > 0 {
		path, args = cfg.Wrap[0], append(append(cfg.Wrap[1:len(cfg.Wrap):len(cfg.Wrap)], bin), args...)
	}
	proc := StartProcess(t, ProcessConfig{
		Name:      "authproxy",
		Path:      path,
		Args:      args,
		Dir:       dir,
		Env:       append(append(os.Environ(), "NO_COLOR=1"), cfg.Env...),
		StopGrace: authproxyStopGrace,
	})
	a = &Authproxy{proc: proc, configPath: cfgPath}

	ctx, cancel := context.WithTimeout(t.Context(), authproxyReadyTimeout)
	defer cancel()
	if err := a.waitReady(ctx, cfg); err != nil {
		t.Fatalf("peers: authproxy not ready: %v\n--- config ---\n%s\n--- output ---\n%s", err, conf, proc.Output())
	}
	return a
}

// waitReady waits for the readiness signal cfg chooses, or for authproxy
// to exit.
func (a *Authproxy) waitReady(ctx context.Context, cfg AuthproxyConfig) error {
	switch {
	case cfg.ReadySIP != "":
		return waitSIP(ctx, cfg.ReadySIP, a.proc)
	case cfg.ReadyAdmin != "":
		return waitReadyz(ctx, cfg.ReadyAdmin, a.proc)
	default:
		_, err := a.proc.WaitLine(ctx, isReadyLine)
		return err
	}
}

// isReadyLine reports whether line is authproxy's JSON log line with
// "msg":"ready".
func isReadyLine(line string) bool {
	if !strings.Contains(line, `"ready"`) {
		return false
	}
	var rec struct {
		Msg string `json:"msg"`
	}
	return json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "ready"
}

// waitReadyz polls http://admin/readyz every 50ms until it answers 200, p
// exits or ctx ends.
func waitReadyz(ctx context.Context, admin string, p *Process) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopOnExit(ctx, cancel, p)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/readyz", nil)
		if err != nil {
			return err
		}
		if res, err := http.DefaultClient.Do(req); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%s/readyz: %w", admin, context.Cause(ctx))
		}
	}
}

// stopOnExit cancels ctx with ErrExited when p exits first.
func stopOnExit(ctx context.Context, cancel context.CancelCauseFunc, p *Process) {
	go func() {
		select {
		case <-p.Done():
			cancel(fmt.Errorf("%w: %v", ErrExited, p.Err()))
		case <-ctx.Done():
		}
	}()
}

// Logs returns everything authproxy wrote to stdout and stderr so far.
func (a *Authproxy) Logs() string { return a.proc.Output() }

// ConfigPath returns the path of the configuration file.
func (a *Authproxy) ConfigPath() string { return a.configPath }

// Process returns the running process (its pid for CPU and memory
// figures, its output).
func (a *Authproxy) Process() *Process { return a.proc }

// Exited reports whether authproxy has stopped, with its exit error.
func (a *Authproxy) Exited() (bool, error) {
	select {
	case <-a.proc.Done():
		return true, a.proc.Err()
	default:
		return false, nil
	}
}

// Kill ends authproxy at once with SIGKILL, as a crash would, and waits
// for it to exit.
func (a *Authproxy) Kill() error { return a.proc.Kill() }

// Stop stops authproxy now instead of at cleanup.
func (a *Authproxy) Stop() error { return a.proc.Stop() }

// buildTimeout bounds `go build` of the binary (a cold -race build of sipgo
// and friends on two cores takes a while).
const buildTimeout = 5 * time.Minute

var authproxyBuild struct {
	once sync.Once
	dir  string // removed by RemoveAuthproxyBuild
	path string
	err  error
}

// BuildAuthproxy builds ./cmd/authproxy of this module once per test binary
// and returns its path. When the tests run with -race, so does the binary
// (load tests run without it). Call RemoveAuthproxyBuild from TestMain to
// delete it.
func BuildAuthproxy(t testing.TB) string {
	t.Helper()
	b := &authproxyBuild
	b.once.Do(func() {
		start := time.Now()
		b.path, b.err = buildAuthproxy()
		t.Logf("peers: go build ./cmd/authproxy (race=%v): %v", raceEnabled(), time.Since(start).Round(time.Millisecond))
	})
	if b.err != nil {
		t.Fatalf("peers: cannot build ./cmd/authproxy: %v", b.err)
	}
	return b.path
}

func buildAuthproxy() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir, err := os.MkdirTemp("", "authproxy-build-")
	if err != nil {
		return "", err
	}
	authproxyBuild.dir = dir
	out := filepath.Join(dir, "authproxy")
	args := []string{"build", "-o", out}
	env := os.Environ()
	if raceEnabled() {
		args = append(args, "-race")
	} else {
		// As the Dockerfile builds it: static, stripped. Its memory
		// figures are the shipped binary's (no C library mapped).
		args = append(args, "-trimpath", "-ldflags=-s -w")
		env = append(env, "CGO_ENABLED=0")
	}
	args = append(args, "./cmd/authproxy")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir, cmd.Env = root, env
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), root, err, msg)
	}
	return out, nil
}

// RemoveAuthproxyBuild deletes the binary BuildAuthproxy built, if any;
// TestMain calls it after the tests.
func RemoveAuthproxyBuild() {
	if authproxyBuild.dir != "" {
		os.RemoveAll(authproxyBuild.dir)
	}
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// moduleRoot walks up from the working directory (the package directory
// under go test) to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
