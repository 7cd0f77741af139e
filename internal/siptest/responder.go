package siptest

import (
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// Responder is a minimal SIP upstream on UDP that answers every request
// 200 (INVITE 486), or nothing while silent; with HoldMessages, MESSAGEs
// only once released, and with IgnoreUnregister, no REGISTER with
// Expires: 0. It records what it received.
type Responder struct {
	pc      net.PacketConn
	Silent  atomic.Bool
	Options struct {
		Answered, Ignored atomic.Int64
	}
	HoldMessages     atomic.Bool
	IgnoreUnregister atomic.Bool
	held             chan struct{} // closed by ReleaseMessages
	releaseOnce      sync.Once
	Messages         chan struct{} // a MESSAGE arrived (non-blocking send)
	mu               sync.Mutex
	received         []string // "METHOD Call-ID" of every request, retransmissions included
	wg               sync.WaitGroup
	stop             chan struct{}
}

// StartResponder listens on an ephemeral UDP port of host until the test
// ends.
func StartResponder(t *testing.T, host string) *Responder {
	t.Helper()
	pc, err := net.ListenPacket("udp4", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	r := &Responder{pc: pc, Messages: make(chan struct{}, 16), held: make(chan struct{}), stop: make(chan struct{})}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(func() {
		close(r.stop)
		_ = pc.Close()
		r.wg.Wait()
	})
	return r
}

// Addr is the address r listens on.
func (r *Responder) Addr() string { return r.pc.LocalAddr().String() }

// ReleaseMessages answers the MESSAGEs held so far, and later ones at once.
func (r *Responder) ReleaseMessages() { r.releaseOnce.Do(func() { close(r.held) }) }

// Methods returns the distinct "METHOD Call-ID" pairs received, in order.
func (r *Responder) Methods() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.received {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// serve answers every request until the socket closes.
func (r *Responder) serve() {
	defer r.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := r.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		msg, err := sip.ParseMessage(append([]byte(nil), buf[:n]...))
		req, ok := msg.(*sip.Request)
		if err != nil || !ok || req.IsAck() {
			continue
		}
		cid := ""
		if h := req.CallID(); h != nil {
			cid = h.Value()
		}
		r.mu.Lock()
		r.received = append(r.received, string(req.Method)+" "+cid)
		r.mu.Unlock()
		if req.Method == sip.OPTIONS {
			if r.Silent.Load() {
				r.Options.Ignored.Add(1)
				continue
			}
			r.Options.Answered.Add(1)
		} else if r.Silent.Load() {
			continue
		}
		if req.Method == sip.REGISTER && r.IgnoreUnregister.Load() && isUnregister(req) {
			continue
		}
		code, reason, hold := 200, "OK", false
		switch req.Method {
		case sip.INVITE:
			code, reason = 486, "Busy Here"
		case sip.MESSAGE:
			hold = r.HoldMessages.Load()
			select {
			case r.Messages <- struct{}{}:
			default:
			}
		}
		res := sip.NewResponseFromRequest(req, code, reason, nil)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if hold {
				select {
				case <-r.held:
				case <-r.stop:
					return
				}
			}
			_, _ = r.pc.WriteTo([]byte(res.String()), from)
		}()
	}
}

// isUnregister reports whether a REGISTER asks for expiry 0.
func isUnregister(req *sip.Request) bool {
	if h := req.GetHeader("Expires"); h != nil && strings.TrimSpace(h.Value()) == "0" {
		return true
	}
	for _, h := range req.GetHeaders("Contact") {
		if c, ok := h.(*sip.ContactHeader); ok {
			if v, ok := c.Params.Get("expires"); ok && strings.TrimSpace(v) == "0" {
				return true
			}
		}
	}
	return false
}
