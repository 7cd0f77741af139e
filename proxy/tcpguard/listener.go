package tcpguard

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// Backoff after a failed accept, as net/http's Server.Serve: the first
// retry after 5 ms, each next one after twice as long, at most 1 s. Out of
// file descriptors, a listener that retried at once would spin a core; one
// that gave up would never serve again.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	// acceptLogEvery is the least time between two "accept failed" lines:
	// at the longest backoff that is one line for five failures.
	acceptLogEvery = 5 * time.Second
)

// Listener is a net.Listener whose Accept retries failures, refuses
// sources and enforces the caps, and returns connections that enforce the
// deadlines and the maximum message size. Accept is meant to be called
// from one goroutine (a server's accept loop).
type Listener struct {
	inner net.Listener
	g     *Guard
	tls   *tls.Config // nil: plain TCP
	name  string      // "tcp 127.0.0.1:5060", for logs

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	retry     acceptRetry
}

// acceptRetry is the state of a run of failed accepts (accept goroutine
// only) and the clock it is timed by.
type acceptRetry struct {
	now  func() time.Time
	wait func(d time.Duration, done <-chan struct{}) bool // false: done closed first

	delay      time.Duration // of the last retry; 0 after a success
	failures   int           // since the last accept that succeeded
	failedAt   time.Time     // first failure of that run
	announced  bool          // a line about that run was logged
	unlogged   int           // failures since the last line logged
	lastLogged time.Time     // of the last "failed" line
}

// Listen wraps ln. With tlsConf set, connections are TLS servers with that
// configuration, handshaken on their first Read under the handshake
// deadline; the caps and the refusal apply before the handshake.
func (g *Guard) Listen(ln net.Listener, tlsConf *tls.Config) *Listener {
	transport := "tcp"
	if tlsConf != nil {
		transport = "tls"
	}
	return &Listener{inner: ln, g: g, tls: tlsConf, name: transport + " " + ln.Addr().String(),
		done: make(chan struct{}), retry: acceptRetry{now: time.Now, wait: sleep}}
}

// sleep waits d or until done is closed; it reports whether d passed.
func sleep(d time.Duration, done <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// Addr returns the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close closes the inner listener; an Accept waiting out a backoff returns
// at once.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.inner.Close()
}

// Accept returns the next admitted connection. It returns an error only
// when the listener is closed (wrapping net.ErrClosed) or fails for good
// (an error accept cannot recover from by waiting).
func (l *Listener) Accept() (net.Conn, error) {
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			if !retryable(err) {
				return nil, err
			}
			if !l.retry.wait(l.failed(err), l.done) {
				return nil, fmt.Errorf("accept: %w", net.ErrClosed)
			}
			continue
		}
		l.recovered()
		if c := l.admit(raw); c != nil {
			return c, nil
		}
	}
}

// admit wraps raw when its source is admitted, else closes it and
// returns nil.
func (l *Listener) admit(raw net.Conn) net.Conn {
	src := remoteIP(raw)
	peer, why := l.g.admit(src)
	if peer == Refused {
		// No answer at all: a refused source learns nothing, and costs no
		// read, no handshake and no goroutine. Counted before the close,
		// so that the count is there once the peer sees it closed.
		l.g.refused(why, src, l.name)
		_ = raw.Close()
		return nil
	}
	l.g.counts[cAccepted].Add(1)
	return newConn(l.g, raw, src, peer, l.tls)
}

// remoteIP is the source address of c, unmapped.
func remoteIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// retryable reports whether an accept error may go away by itself: the
// process or system out of file descriptors or memory, or a connection
// that failed before it was accepted (accept(2)).
func retryable(err error) bool {
	for _, e := range []syscall.Errno{
		syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN,
		syscall.ETIMEDOUT, syscall.EPROTO, syscall.EPERM,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// failed counts a failed accept, logs it (at most once per
// acceptLogEvery) and returns how long to wait before the next one.
func (l *Listener) failed(err error) time.Duration {
	r := &l.retry
	l.g.counts[cAcceptErrors].Add(1)
	r.delay = min(max(2*r.delay, acceptBackoffMin), acceptBackoffMax)
	now := r.now()
	if r.failures == 0 {
		r.failedAt, r.announced = now, false
	}
	r.failures++
	r.unlogged++
	if r.lastLogged.IsZero() || now.Sub(r.lastLogged) >= acceptLogEvery {
		l.g.log.Warn("accepting a connection failed; retrying", "listener", l.name, "error", err,
			"retry_in", r.delay, "failures", r.unlogged)
		r.lastLogged, r.unlogged, r.announced = now, 0, true
	}
	return r.delay
}

// recovered ends a run of failed accepts. It says so when the run was
// logged, so that accepts failing and succeeding in turn log no more than
// failures alone would.
func (l *Listener) recovered() {
	r := &l.retry
	r.delay = 0
	if r.failures == 0 {
		return
	}
	if r.announced {
		l.g.log.Info("accepting connections again", "listener", l.name, "failures", r.failures,
			"after", r.now().Sub(r.failedAt).Round(time.Millisecond))
	}
	r.failures = 0
}
