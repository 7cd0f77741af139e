package peers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ProcessConfig describes a daemon for StartProcess.
type ProcessConfig struct {
	// Name labels the process in messages, e.g. "kamailio 127.0.0.2:5060".
	Name string
	// Path is the executable; Args excludes the program name.
	Path string
	Args []string
	// Dir is the working directory; empty means the test's current one.
	Dir string
	// Env is the environment; nil inherits the test's.
	Env []string
	// StopGrace bounds how long Stop waits after SIGTERM before it sends
	// SIGKILL. Zero means 5s.
	StopGrace time.Duration
	// Stdin gives the process a pipe as its standard input, written with
	// WriteStdin (e.g. commands to a softphone's console); false means
	// /dev/null. The pipe stays open until the process has stopped.
	Stdin bool
}

// Process is a daemon started by StartProcess. Its stdout and stderr are
// captured together, line by line, and kept in memory.
type Process struct {
	name  string
	cmd   *exec.Cmd
	out   *lineBuffer
	grace time.Duration

	done    chan struct{} // closed when the leader has exited and been reaped
	waitErr error         // set before done is closed

	stdinMu sync.Mutex
	stdin   *os.File // write end of the stdin pipe (ProcessConfig.Stdin), nil once closed

	stopOnce sync.Once
}

// outputTail bounds how much output a failed test prints per process.
const outputTail = 64 << 10

// StartProcess starts cfg in a process group of its own and returns at
// once; use WaitLine or a protocol probe to wait for readiness. Cleanup stops
// the whole group (see Stop) and, when the test failed, logs the tail of the
// output.
func StartProcess(t testing.TB, cfg ProcessConfig) *Process {
	t.Helper()
	p, err := startProcess(cfg)
	if err != nil {
		t.Fatalf("peers: start %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() {
		start := time.Now()
		err := p.Stop()
		if d := time.Since(start); d > time.Second {
			t.Logf("peers: %s took %v to stop", p.name, d.Round(time.Millisecond))
		}
		if err != nil && !isSignalExit(err) {
			t.Logf("peers: %s exited: %v", p.name, err)
		}
		if t.Failed() {
			out := p.Output()
			if len(out) > outputTail {
				out = "[...]" + out[len(out)-outputTail:]
			}
			t.Logf("peers: %s output:\n%s", p.name, out)
		}
	})
	return p
}

func startProcess(cfg ProcessConfig) (*Process, error) {
	if cfg.Name == "" {
		cfg.Name = cfg.Path
	}
	p := &Process{
		name:  cfg.Name,
		out:   newLineBuffer(),
		grace: cfg.StopGrace,
		done:  make(chan struct{}),
	}
	if p.grace <= 0 {
		p.grace = 5 * time.Second
	}
	cmd := exec.Command(cfg.Path, cfg.Args...)
	cmd.Dir = cfg.Dir
	cmd.Env = cfg.Env
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A group of its own, so Stop reaches the daemon's children (Kamailio
		// forks one worker per listener and child slot) and nothing else.
		Setpgid: true,
		// If the test binary dies without running cleanups, take the leader
		// with it.
		Pdeathsig: syscall.SIGKILL,
	}
	// Children that inherited the output pipe must not keep Wait blocked.
	cmd.WaitDelay = 2 * time.Second
	var stdinR *os.File
	if cfg.Stdin {
		// An *os.File, so exec hands the process the pipe itself and runs no
		// copying goroutine that Wait would wait for.
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		stdinR, p.stdin = r, w
		cmd.Stdin = r
	}
	err := cmd.Start()
	if stdinR != nil {
		stdinR.Close() // the child has its copy
	}
	if err != nil {
		p.closeStdin()
		return nil, err
	}
	p.cmd = cmd
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
		p.closeStdin()
	}()
	return p, nil
}

// WriteStdin writes s to the process's standard input (ProcessConfig.Stdin).
func (p *Process) WriteStdin(s string) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return fmt.Errorf("%s: no stdin pipe (not configured, or the process has exited)", p.name)
	}
	_, err := p.stdin.WriteString(s)
	return err
}

func (p *Process) closeStdin() {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
}

// Pid returns the leader's process id, which is also the group id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns the exit error once Done is closed, nil before.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.waitErr
	default:
		return nil
	}
}

// Output returns everything the process wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// ErrExited is returned by WaitLine when the process exits first.
var ErrExited = errors.New("process exited")

// WaitLine blocks until a complete output line satisfies match and returns
// it. It fails when ctx ends or the process exits first.
func (p *Process) WaitLine(ctx context.Context, match func(line string) bool) (string, error) {
	off := 0
	for {
		lines, next, changed := p.out.linesFrom(off)
		off = next
		for _, l := range lines {
			if match(l) {
				return l, nil
			}
		}
		select {
		case <-changed:
		case <-p.done:
			// Drain what was written before the exit.
			lines, _, _ := p.out.linesFrom(off)
			for _, l := range lines {
				if match(l) {
					return l, nil
				}
			}
			return "", fmt.Errorf("%s: %w: %v", p.name, ErrExited, p.waitErr)
		case <-ctx.Done():
			return "", fmt.Errorf("%s: %w", p.name, context.Cause(ctx))
		}
	}
}

// Stop sends SIGTERM to the leader, waits up to the grace period (then
// sends SIGKILL to the whole group and waits again), and finally sends
// SIGKILL to the group so no child outlives it. It is idempotent and returns
// the leader's exit error.
//
// SIGTERM goes to the leader only: Kamailio's main process stops its
// children itself, and a SIGTERM delivered to every process at once can
// leave the main process waiting for a lock a dying child held.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() {
		pgid := p.cmd.Process.Pid
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(p.grace):
				p.out.Write([]byte("peers: no exit after SIGTERM; sending SIGKILL\n"))
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				select {
				case <-p.done:
				case <-time.After(p.grace):
				}
			}
		}
		// Children that outlived the leader are still in its group; the
		// group id cannot be reused while any of them exists.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	})
	select {
	case <-p.done:
		return p.waitErr
	default:
		return fmt.Errorf("%s: still running after SIGKILL", p.name)
	}
}

// Kill sends SIGKILL to the whole process group at once (a crash, not a
// shutdown) and waits until the leader has exited. Stop, afterwards,
// returns the same exit error.
func (p *Process) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("%s: kill: %w", p.name, err)
	}
	<-p.done
	return nil
}

// isSignalExit reports whether err is the exit of a process killed by a
// signal we sent, which is how every daemon here is supposed to end.
func isSignalExit(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && (ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGKILL)
}

// lineBuffer is an io.Writer that keeps all output and wakes waiters on every
// write.
type lineBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newLineBuffer() *lineBuffer {
	return &lineBuffer{changed: make(chan struct{})}
}

func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return n, err
}

func (b *lineBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// linesFrom returns the complete lines starting at byte offset off, the
// offset just past them, and a channel closed by the next write.
func (b *lineBuffer) linesFrom(off int) (lines []string, next int, changed <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data := b.buf.Bytes()[off:]
	end := bytes.LastIndexByte(data, '\n')
	if end < 0 {
		return nil, off, b.changed
	}
	for l := range strings.SplitSeq(string(data[:end]), "\n") {
		lines = append(lines, strings.TrimSuffix(l, "\r"))
	}
	return lines, off + end + 1, b.changed
}
