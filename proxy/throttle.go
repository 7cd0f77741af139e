package proxy

import (
	"sync"
	"time"
)

// logThrottle lets one log line per kind through per interval and counts
// the ones it holds back, so that a flood of bad input (malformed
// datagrams, spoofed responses, a peer's parse errors) costs a few lines a
// minute instead of one line per datagram: the log is no amplifier.
type logThrottle struct {
	interval time.Duration

	mu    sync.Mutex
	kinds map[string]*throttled
}

// throttled is one kind of line: when it was last let through and how
// many were held back since.
type throttled struct {
	last       time.Time
	suppressed int
}

// throttleKinds bounds the kinds remembered; kinds are constant strings
// in practice (log messages, reasons), so this is never reached, but a
// bound costs nothing.
const throttleKinds = 256

func newLogThrottle(interval time.Duration) *logThrottle {
	return &logThrottle{interval: interval, kinds: map[string]*throttled{}}
}

// allow reports whether a line of kind may be logged at now and, if so,
// how many lines of that kind were held back since the last one.
func (t *logThrottle) allow(kind string, now time.Time) (ok bool, suppressed int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := t.kinds[kind]
	if k == nil {
		if len(t.kinds) >= throttleKinds {
			clear(t.kinds)
		}
		k = &throttled{}
		t.kinds[kind] = k
	} else if now.Sub(k.last) < t.interval {
		k.suppressed++
		return false, 0
	}
	suppressed, k.suppressed, k.last = k.suppressed, 0, now
	return true, suppressed
}
