package main

import (
	"fmt"
	"log/slog"
	"net"
	"strings"

	"golang.org/x/sys/unix"
)

// notifier reports the service's state to systemd, as sd_notify(3) does:
// one datagram of newline-separated assignments to the AF_UNIX socket
// $NOTIFY_SOCKET names (a path, or an abstract address when it starts
// with "@"). The unit is Type=notify: systemd considers authproxy started
// at READY=1, reloading from RELOADING=1 to the next READY=1, and
// stopping from STOPPING=1 (systemd.service(5), sd_notify(3)). A nil
// notifier (no $NOTIFY_SOCKET: not run by systemd) sends nothing.
type notifier struct {
	addr *net.UnixAddr
	log  *slog.Logger
}

// newNotifier returns a notifier for socket, or nil when socket is "" or
// not an AF_UNIX address (systemd also allows vsock, which authproxy does
// not speak; it logs that and carries on unsupervised).
func newNotifier(socket string, log *slog.Logger) *notifier {
	if socket == "" {
		return nil
	}
	if !strings.HasPrefix(socket, "/") && !strings.HasPrefix(socket, "@") {
		log.Warn("NOTIFY_SOCKET is not a unix socket path; not reporting readiness to systemd", "notify_socket", socket)
		return nil
	}
	// Go's net package maps a leading "@" to Linux's abstract namespace.
	return &notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}, log: log}
}

// send sends one notification; a failure is logged, never fatal (systemd
// then times the start out, which says more than a refused start would).
func (n *notifier) send(state string) {
	if n == nil {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err == nil {
		_, err = conn.Write([]byte(state))
		_ = conn.Close()
	}
	if err != nil {
		n.log.Warn("cannot notify systemd", "notify_socket", n.addr.Name, "error", err)
	}
}

// ready reports that the proxy serves (after start, or after a reload).
func (n *notifier) ready(status string) { n.send("READY=1\nSTATUS=" + status) }

// reloading reports a reload starting. MONOTONIC_USEC, the
// CLOCK_MONOTONIC time of the request in microseconds, is required with
// RELOADING=1 by Type=notify-reload and recommended for Type=notify.
func (n *notifier) reloading() {
	if n == nil {
		return
	}
	n.send(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=reloading", monotonicUsec()))
}

// stopping reports that the graceful stop has begun.
func (n *notifier) stopping() { n.send("STOPPING=1\nSTATUS=draining") }

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock systemd
// compares MONOTONIC_USEC with.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
