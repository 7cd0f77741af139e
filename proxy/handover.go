package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
)

// handover is the net.Listener a connector gives sipgo's TCP or TLS
// transport: the connections authproxy dialed itself come out of its
// Accept, so that sipgo serves them as its own.
type handover struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	addr      net.Addr
}

func newHandover(addr net.Addr) handover {
	return handover{conns: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

// Accept hands the next connection over to sipgo (net.Listener).
func (h *handover) Accept() (net.Conn, error) {
	select {
	case conn := <-h.conns:
		return conn, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// Close stops Accept (net.Listener); connections handed over stay sipgo's.
func (h *handover) Close() error {
	h.closeOnce.Do(func() { close(h.done) })
	return nil
}

// Addr is the address the connector was given (net.Listener).
func (h *handover) Addr() net.Addr { return h.addr }

// give hands conn to sipgo's Accept; conn is closed when ctx ends or the
// listener closed first.
func (h *handover) give(ctx context.Context, conn net.Conn) error {
	select {
	case h.conns <- conn:
		return nil
	case <-ctx.Done():
		_ = conn.Close()
		return ctx.Err()
	case <-h.done:
		_ = conn.Close()
		return errors.New("shutting down")
	}
}
