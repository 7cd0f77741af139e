package siptest

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"
)

// Phone is a SIP user agent on loopback that calls through authproxy and
// holds no password: the client side of the call tests. It answers every
// request it receives (callee BYE, re-INVITE, NOTIFY) with 200 and keeps
// them for assertions.
type Phone struct {
	T         *testing.T
	User      string
	Transport string // "UDP" / "TCP"
	Addr      string // where it listens
	Proxy     string // authproxy's address for transport
	Client    *sipgo.Client
	// Tag is the To Tag the phone answers a new INVITE with, known in
	// advance so that tests can address the dialog.
	Tag string

	Mu       sync.Mutex
	Received []*sip.Request
	Changed  chan struct{}
}

// StartPhone starts a phone for user on 127.0.0.1 that sends through
// authproxy at proxyAddr over transport; it stops when the test ends.
func StartPhone(t *testing.T, user, transport, proxyAddr string) *Phone {
	t.Helper()
	return StartPhoneAt(t, "127.0.0.1", user, transport, proxyAddr)
}

// StartPhoneAt is startPhone listening on host ("::1" for IPv6).
func StartPhoneAt(t *testing.T, host, user, transport, proxyAddr string) *Phone {
	t.Helper()
	transport = strings.ToUpper(transport)
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("e2e-phone-" + user))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	ph := &Phone{T: t, User: user, Transport: transport, Proxy: proxyAddr, Tag: sip.GenerateTagN(8), Changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	var closer func()
	var serve func() error // started once the handlers are in place
	done := make(chan struct{})
	if transport == "UDP" {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		ph.Addr = pc.LocalAddr().String()
		closer = func() { _ = pc.Close() }
		serve = func() error { return srv.ServeUDP(pc) }
	} else {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		ph.Addr = ln.Addr().String()
		closer = func() { _ = ln.Close() }
		serve = func() error { return srv.ServeTCP(ln) }
	}
	bound, port := SplitAddr(t, ph.Addr)
	ph.Client, err = sipgo.NewClient(ua, sipgo.WithClientHostname(bound), sipgo.WithClientPort(port))
	if err != nil {
		t.Fatal(err)
	}
	answer := func(req *sip.Request, tx sip.ServerTransaction) {
		ph.Mu.Lock()
		ph.Received = append(ph.Received, req)
		close(ph.Changed)
		ph.Changed = make(chan struct{})
		ph.Mu.Unlock()
		// Like a real UA, the phone only takes requests for its Contact
		// (RFC 3261 §12.2.1.1 and §10: in a dialog its remote target, out
		// of one the contact it registered): authproxy must deliver to the
		// URI the phone gave, whatever it rewrote on the way.
		wrongTarget := !sameTarget(req.Recipient, ph.Contact().Address) || ph.routeLeft(req)
		if req.Method == sip.ACK {
			if wrongTarget {
				t.Errorf("phone %s: ACK for %s (Route %v), not its Contact %s", user, req.Recipient.String(), req.GetHeaders("Route"), ph.Contact().Address.String())
			}
			return
		}
		if wrongTarget {
			_ = tx.Respond(sip.NewResponseFromRequest(req, 404, "Not Found (not this phone's Contact)", nil))
			return
		}
		res := sip.NewResponseFromRequest(req, 200, "OK", nil)
		if req.Method == sip.INVITE {
			if _, inDialog := req.To().Params.Get("tag"); !inDialog {
				// sipgo puts a random tag of its own; use the known one.
				res.To().Params.Remove("tag")
				res.To().Params.Add("tag", ph.Tag)
			}
			res.AppendHeader(ph.Contact())
		}
		_ = tx.Respond(res)
	}
	for _, m := range []sip.RequestMethod{sip.INVITE, sip.BYE, sip.NOTIFY, sip.INFO, sip.UPDATE, sip.OPTIONS, sip.MESSAGE, sip.ACK} {
		srv.OnRequest(m, answer)
	}
	// A datagram for an earlier test's socket on the same port may arrive
	// at once: the handlers must be in place before anything is read.
	go func() { defer close(done); _ = serve() }()
	t.Cleanup(func() {
		cancel()
		closer()
		_ = ua.Close()
		<-done
		_ = ctx
	})
	return ph
}

// routeLeft reports whether req reached the phone with a Route that does
// not name it: the hop before it should have followed (or removed) it
// (RFC 3261 §16.4, §16.12).
func (ph *Phone) routeLeft(req *sip.Request) bool {
	for _, h := range req.GetHeaders("Route") {
		r, ok := h.(*sip.RouteHeader)
		if !ok || !sameTarget(sip.Uri{User: ph.User, Host: r.Address.Host, Port: r.Address.Port}, ph.Contact().Address) {
			return true
		}
	}
	return false
}

// sameTarget compares a Request-URI with a Contact as a UA does (RFC 3261
// §19.1.4 for what matters here): user, host and port.
func sameTarget(ruri, contact sip.Uri) bool {
	port := func(u sip.Uri) int {
		if u.Port == 0 {
			return 5060
		}
		return u.Port
	}
	host := func(u sip.Uri) string { return strings.Trim(u.Host, "[]") } // an IPv6 host is bracketed as parsed
	return ruri.User == contact.User && strings.EqualFold(host(ruri), host(contact)) && port(ruri) == port(contact)
}

// SplitAddr splits a "host:port" into host and port number.
func SplitAddr(t *testing.T, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return h, n
}

// Contact is the phone's Contact header: where it listens.
func (ph *Phone) Contact() *sip.ContactHeader {
	host, port := SplitAddr(ph.T, ph.Addr)
	u := sip.Uri{Scheme: "sip", User: ph.User, Host: host, Port: port, UriParams: sip.NewParams()}
	if ph.Transport == "TCP" {
		u.UriParams.Add("transport", "tcp")
	}
	return &sip.ContactHeader{Address: u}
}

// WaitReceived waits until the phone has received a request of method m
// and returns it.
func (ph *Phone) WaitReceived(m sip.RequestMethod, timeout time.Duration) *sip.Request {
	ph.T.Helper()
	deadline := time.After(timeout)
	for {
		ph.Mu.Lock()
		for _, r := range ph.Received {
			if r.Method == m {
				ph.Mu.Unlock()
				return r
			}
		}
		ch := ph.Changed
		ph.Mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			ph.T.Fatalf("phone %s: no %s within %s", ph.User, m, timeout)
		}
	}
}

// Call is one Call placed by a phone.
type Call struct {
	Phone     *Phone
	CallID    string
	FromTag   string
	ToTag     string
	CSeq      uint32
	RURI      sip.Uri
	Invite    *sip.Request
	tx        sip.ClientTransaction
	Responses []*sip.Response
	target    sip.Uri           // the callee's Contact
	Routes    []sip.RouteHeader // route set (Record-Route reversed)

	mu    sync.Mutex
	forks []*sip.Response // 2xx from other forks (and 2xx retransmissions)
}

// Extra2xx returns the 2xx responses sipgo handed to the retransmission
// hook: retransmissions and 2xx of other forks.
func (c *Call) Extra2xx() []*sip.Response {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*sip.Response(nil), c.forks...)
}

// Dial sends an INVITE to ruri through authproxy and returns at once.
func (ph *Phone) Dial(ruri string, sdp []byte, extra ...sip.Header) *Call {
	ph.T.Helper()
	c := &Call{Phone: ph, CallID: uuid.NewString(), FromTag: sip.GenerateTagN(8), CSeq: 1}
	if err := sip.ParseUri(ruri, &c.RURI); err != nil {
		ph.T.Fatal(err)
	}
	req := c.newRequest(sip.INVITE, c.RURI, nil)
	req.AppendHeader(ph.Contact())
	for _, h := range extra {
		req.AppendHeader(h)
	}
	if sdp != nil {
		ct := sip.ContentTypeHeader("application/sdp")
		req.AppendHeader(&ct)
	}
	req.SetBody(sdp)
	c.Invite = req
	c.tx = ph.Send(req)
	c.tx.OnRetransmission(func(res *sip.Response) {
		c.mu.Lock()
		c.forks = append(c.forks, res)
		c.mu.Unlock()
	})
	return c
}

// newRequest builds a request of the call; in-dialog when toTag is known.
func (c *Call) newRequest(m sip.RequestMethod, target sip.Uri, routes []sip.RouteHeader) *sip.Request {
	req := sip.NewRequest(m, target)
	for i := range routes {
		r := routes[i]
		req.AppendHeader(&r)
	}
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: c.Phone.User, Host: c.RURI.Host}, Params: sip.NewParams()}
	from.Params.Add("tag", c.FromTag)
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: c.RURI.User, Host: c.RURI.Host}, Params: sip.NewParams()}
	if c.ToTag != "" {
		to.Params.Add("tag", c.ToTag)
	}
	callID := sip.CallIDHeader(c.CallID)
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&callID)
	seq := c.CSeq
	if m == sip.ACK {
		seq = c.Invite.CSeq().SeqNo
	}
	req.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: m})
	req.AppendHeader(&mf)
	req.SetBody(nil)
	return req
}

// Send sends req to authproxy in a client transaction.
func (ph *Phone) Send(req *sip.Request) sip.ClientTransaction {
	ph.T.Helper()
	req.SetDestination(ph.Proxy)
	req.SetTransport(ph.Transport)
	// No Laddr: sipgo opens (and then reuses) one socket toward the proxy,
	// which reads what the proxy sends back to it, in-dialog requests too.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tx, err := ph.Client.TransactionRequest(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		ph.T.Fatalf("send %s: %v", req.Method, err)
	}
	return tx
}

// WaitFinal collects responses until the final one and returns it. A 2xx
// sets the dialog's To tag, remote target and route set.
func (c *Call) WaitFinal(timeout time.Duration) *sip.Response {
	c.Phone.T.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case res := <-c.tx.Responses():
			c.Responses = append(c.Responses, res)
			if res.IsProvisional() {
				if req := res.GetHeader("Require"); req != nil && strings.Contains(req.Value(), "100rel") {
					c.Prack(res)
				}
				continue
			}
			if res.IsSuccess() {
				c.learnDialog(res)
			}
			return res
		case <-c.tx.Done():
			c.Phone.T.Fatalf("INVITE transaction ended without final response: %v", c.tx.Err())
		case <-deadline:
			c.Phone.T.Fatalf("no final response to INVITE within %s", timeout)
		}
	}
}

// learnDialog takes the dialog's remote tag, target and route set from a
// response that establishes it (RFC 3261 §12.1.2).
func (c *Call) learnDialog(res *sip.Response) {
	c.ToTag, _ = res.To().Params.Get("tag")
	if ct := res.Contact(); ct != nil {
		c.target = ct.Address
	}
	c.Routes = nil
	rr := res.GetHeaders("Record-Route")
	for i := len(rr) - 1; i >= 0; i-- {
		c.Routes = append(c.Routes, sip.RouteHeader{Address: rr[i].(*sip.RecordRouteHeader).Address})
	}
}

// WaitProvisional waits for a provisional response other than 100.
func (c *Call) WaitProvisional(timeout time.Duration) *sip.Response {
	c.Phone.T.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case res := <-c.tx.Responses():
			c.Responses = append(c.Responses, res)
			if res.IsProvisional() && res.StatusCode != 100 {
				return res
			}
			if !res.IsProvisional() {
				c.Phone.T.Fatalf("final %d while waiting for a provisional response", res.StatusCode)
			}
		case <-deadline:
			c.Phone.T.Fatalf("no provisional response within %s", timeout)
		}
	}
}

// Prack acknowledges a reliable provisional response (RFC 3262) in the
// early dialog it establishes.
func (c *Call) Prack(res *sip.Response) {
	c.Phone.T.Helper()
	c.learnDialog(res)
	rseq := res.GetHeader("RSeq")
	if rseq == nil {
		c.Phone.T.Fatal("reliable provisional response without RSeq")
	}
	c.CSeq++
	req := c.newRequest(sip.PRACK, c.target, c.Routes)
	req.AppendHeader(sip.NewHeader("RAck", strings.TrimSpace(rseq.Value())+" "+strconv.Itoa(int(c.Invite.CSeq().SeqNo))+" INVITE"))
	tx := c.Phone.Send(req)
	go func() {
		defer tx.Terminate()
		for {
			select {
			case res := <-tx.Responses():
				if !res.IsProvisional() {
					return
				}
			case <-tx.Done():
				return
			}
		}
	}()
}

// Ack sends the ACK for the 2xx.
func (c *Call) Ack() {
	c.Phone.T.Helper()
	c.AckFork(nil)
}

// AckFork sends the ACK for the 2xx res of another fork (nil: the dialog's
// own 2xx).
func (c *Call) AckFork(res *sip.Response) {
	c.Phone.T.Helper()
	d := c
	if res != nil {
		d = &Call{Phone: c.Phone, CallID: c.CallID, FromTag: c.FromTag, CSeq: c.CSeq, RURI: c.RURI, Invite: c.Invite}
		d.learnDialog(res)
	}
	req := d.newRequest(sip.ACK, d.target, d.Routes)
	req.SetDestination(c.Phone.Proxy)
	req.SetTransport(c.Phone.Transport)
	if err := c.Phone.Client.WriteRequest(req, sipgo.ClientRequestAddVia); err != nil {
		c.Phone.T.Fatalf("ACK: %v", err)
	}
}

// Fork returns the call as seen in the dialog of another Fork's 2xx.
func (c *Call) Fork(res *sip.Response) *Call {
	d := &Call{Phone: c.Phone, CallID: c.CallID, FromTag: c.FromTag, CSeq: c.CSeq, RURI: c.RURI, Invite: c.Invite}
	d.learnDialog(res)
	return d
}

// Request sends an in-dialog Request and returns its final response.
func (c *Call) Request(m sip.RequestMethod, body []byte, extra ...sip.Header) *sip.Response {
	c.Phone.T.Helper()
	c.CSeq++
	req := c.newRequest(m, c.target, c.Routes)
	for _, h := range extra {
		req.AppendHeader(h)
	}
	if m == sip.INVITE {
		req.AppendHeader(c.Phone.Contact())
	}
	if body != nil {
		ct := sip.ContentTypeHeader("application/sdp")
		req.AppendHeader(&ct)
		req.SetBody(body)
	}
	tx := c.Phone.Send(req)
	defer tx.Terminate()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case res := <-tx.Responses():
			if res.IsProvisional() {
				continue
			}
			if res.CSeq().SeqNo != c.CSeq {
				c.Phone.T.Fatalf("%s response CSeq %d, sent %d", m, res.CSeq().SeqNo, c.CSeq)
			}
			if m == sip.INVITE && res.IsSuccess() {
				inv := c.Invite
				c.Invite = req
				c.Ack()
				c.Invite = inv
			}
			return res
		case <-tx.Done():
			c.Phone.T.Fatalf("%s ended without final response: %v", m, tx.Err())
		case <-deadline:
			c.Phone.T.Fatalf("no final response to %s", m)
		}
	}
}

// Cancel sends a CANCEL for the pending INVITE and returns its response.
func (c *Call) Cancel() *sip.Response {
	c.Phone.T.Helper()
	inv := c.Invite
	req := sip.NewRequest(sip.CANCEL, inv.Recipient)
	req.AppendHeader(inv.Via().Clone())
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(sip.HeaderClone(inv.From()))
	req.AppendHeader(sip.HeaderClone(inv.To()))
	req.AppendHeader(sip.HeaderClone(inv.CallID()))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL})
	req.SetBody(nil)
	req.SetDestination(c.Phone.Proxy)
	req.SetTransport(c.Phone.Transport)
	req.Laddr = inv.Laddr
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tx, err := c.Phone.Client.TransactionRequest(ctx, req, func(*sipgo.Client, *sip.Request) error { return nil })
	if err != nil {
		c.Phone.T.Fatalf("CANCEL: %v", err)
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if !res.IsProvisional() {
				return res
			}
		case <-tx.Done():
			c.Phone.T.Fatalf("CANCEL ended without final response: %v", tx.Err())
		}
	}
}

// SDP is the offer the test calls carry: one PCMU audio stream.
var SDP = []byte("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")

// Barrier sends an out-of-dialog MESSAGE through authproxy, on the
// phone's own socket or connection, and waits for its final response.
// authproxy reads what the phone sent before the MESSAGE first, so what
// those earlier messages make it forward without a challenge round trip
// has reached the upstream by the time the MESSAGE's answer is back: a
// check that something was not forwarded runs after the Barrier instead
// of after a sleep.
func (ph *Phone) Barrier(ruri sip.Uri) {
	ph.T.Helper()
	m := &Call{Phone: ph, CallID: "barrier-" + uuid.NewString(), FromTag: sip.GenerateTagN(8), CSeq: 1, RURI: ruri}
	m.tx = ph.Send(m.newRequest(sip.MESSAGE, ruri, nil))
	if res := m.WaitFinal(10 * time.Second); res.StatusCode != 200 {
		ph.T.Fatalf("barrier MESSAGE: %d, want 200", res.StatusCode)
	}
}
