package e2e

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

// phone is a SIP user agent on loopback that calls through authproxy and
// holds no password: the client side of the call tests. It answers every
// request it receives (callee BYE, re-INVITE, NOTIFY) with 200 and keeps
// them for assertions.
type phone struct {
	t         *testing.T
	user      string
	transport string // "UDP" / "TCP"
	addr      string // where it listens
	proxy     string // authproxy's address for transport
	client    *sipgo.Client
	// tag is the To tag the phone answers a new INVITE with, known in
	// advance so that tests can address the dialog.
	tag string

	mu       sync.Mutex
	received []*sip.Request
	changed  chan struct{}
}

func startPhone(t *testing.T, user, transport, proxyAddr string) *phone {
	t.Helper()
	return startPhoneAt(t, "127.0.0.1", user, transport, proxyAddr)
}

// startPhoneAt is startPhone listening on host ("::1" for IPv6).
func startPhoneAt(t *testing.T, host, user, transport, proxyAddr string) *phone {
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
	ph := &phone{t: t, user: user, transport: transport, proxy: proxyAddr, tag: sip.GenerateTagN(8), changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	var closer func()
	var serve func() error // started once the handlers are in place
	done := make(chan struct{})
	if transport == "UDP" {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		ph.addr = pc.LocalAddr().String()
		closer = func() { _ = pc.Close() }
		serve = func() error { return srv.ServeUDP(pc) }
	} else {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		ph.addr = ln.Addr().String()
		closer = func() { _ = ln.Close() }
		serve = func() error { return srv.ServeTCP(ln) }
	}
	bound, port := splitAddr(t, ph.addr)
	ph.client, err = sipgo.NewClient(ua, sipgo.WithClientHostname(bound), sipgo.WithClientPort(port))
	if err != nil {
		t.Fatal(err)
	}
	answer := func(req *sip.Request, tx sip.ServerTransaction) {
		ph.mu.Lock()
		ph.received = append(ph.received, req)
		close(ph.changed)
		ph.changed = make(chan struct{})
		ph.mu.Unlock()
		// Like a real UA, the phone only takes requests for its Contact
		// (RFC 3261 §12.2.1.1 and §10: in a dialog its remote target, out
		// of one the contact it registered): authproxy must deliver to the
		// URI the phone gave, whatever it rewrote on the way.
		wrongTarget := !sameTarget(req.Recipient, ph.contact().Address) || ph.routeLeft(req)
		if req.Method == sip.ACK {
			if wrongTarget {
				t.Errorf("phone %s: ACK for %s (Route %v), not its Contact %s", user, req.Recipient.String(), req.GetHeaders("Route"), ph.contact().Address.String())
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
				res.To().Params.Add("tag", ph.tag)
			}
			res.AppendHeader(ph.contact())
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
func (ph *phone) routeLeft(req *sip.Request) bool {
	for _, h := range req.GetHeaders("Route") {
		r, ok := h.(*sip.RouteHeader)
		if !ok || !sameTarget(sip.Uri{User: ph.user, Host: r.Address.Host, Port: r.Address.Port}, ph.contact().Address) {
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

func splitAddr(t *testing.T, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return h, n
}

func (ph *phone) contact() *sip.ContactHeader {
	host, port := splitAddr(ph.t, ph.addr)
	u := sip.Uri{Scheme: "sip", User: ph.user, Host: host, Port: port, UriParams: sip.NewParams()}
	if ph.transport == "TCP" {
		u.UriParams.Add("transport", "tcp")
	}
	return &sip.ContactHeader{Address: u}
}

// waitReceived waits until the phone has received a request of method m
// and returns it.
func (ph *phone) waitReceived(m sip.RequestMethod, timeout time.Duration) *sip.Request {
	ph.t.Helper()
	deadline := time.After(timeout)
	for {
		ph.mu.Lock()
		for _, r := range ph.received {
			if r.Method == m {
				ph.mu.Unlock()
				return r
			}
		}
		ch := ph.changed
		ph.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			ph.t.Fatalf("phone %s: no %s within %s", ph.user, m, timeout)
		}
	}
}

// call is one call placed by a phone.
type call struct {
	ph        *phone
	callID    string
	fromTag   string
	toTag     string
	cseq      uint32
	ruri      sip.Uri
	invite    *sip.Request
	tx        sip.ClientTransaction
	responses []*sip.Response
	target    sip.Uri           // the callee's Contact
	routes    []sip.RouteHeader // route set (Record-Route reversed)

	mu    sync.Mutex
	forks []*sip.Response // 2xx from other forks (and 2xx retransmissions)
}

// extra2xx returns the 2xx responses sipgo handed to the retransmission
// hook: retransmissions and 2xx of other forks.
func (c *call) extra2xx() []*sip.Response {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*sip.Response(nil), c.forks...)
}

// dial sends an INVITE to ruri through authproxy and returns at once.
func (ph *phone) dial(ruri string, sdp []byte, extra ...sip.Header) *call {
	ph.t.Helper()
	c := &call{ph: ph, callID: uuid.NewString(), fromTag: sip.GenerateTagN(8), cseq: 1}
	if err := sip.ParseUri(ruri, &c.ruri); err != nil {
		ph.t.Fatal(err)
	}
	req := c.newRequest(sip.INVITE, c.ruri, nil)
	req.AppendHeader(ph.contact())
	for _, h := range extra {
		req.AppendHeader(h)
	}
	if sdp != nil {
		ct := sip.ContentTypeHeader("application/sdp")
		req.AppendHeader(&ct)
	}
	req.SetBody(sdp)
	c.invite = req
	c.tx = ph.send(req)
	c.tx.OnRetransmission(func(res *sip.Response) {
		c.mu.Lock()
		c.forks = append(c.forks, res)
		c.mu.Unlock()
	})
	return c
}

// newRequest builds a request of the call; in-dialog when toTag is known.
func (c *call) newRequest(m sip.RequestMethod, target sip.Uri, routes []sip.RouteHeader) *sip.Request {
	req := sip.NewRequest(m, target)
	for i := range routes {
		r := routes[i]
		req.AppendHeader(&r)
	}
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: c.ph.user, Host: c.ruri.Host}, Params: sip.NewParams()}
	from.Params.Add("tag", c.fromTag)
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: c.ruri.User, Host: c.ruri.Host}, Params: sip.NewParams()}
	if c.toTag != "" {
		to.Params.Add("tag", c.toTag)
	}
	callID := sip.CallIDHeader(c.callID)
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&callID)
	seq := c.cseq
	if m == sip.ACK {
		seq = c.invite.CSeq().SeqNo
	}
	req.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: m})
	req.AppendHeader(&mf)
	req.SetBody(nil)
	return req
}

func (ph *phone) send(req *sip.Request) sip.ClientTransaction {
	ph.t.Helper()
	req.SetDestination(ph.proxy)
	req.SetTransport(ph.transport)
	// No Laddr: sipgo opens (and then reuses) one socket toward the proxy,
	// which reads what the proxy sends back to it, in-dialog requests too.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tx, err := ph.client.TransactionRequest(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		ph.t.Fatalf("send %s: %v", req.Method, err)
	}
	return tx
}

// waitFinal collects responses until the final one and returns it. A 2xx
// sets the dialog's To tag, remote target and route set.
func (c *call) waitFinal(timeout time.Duration) *sip.Response {
	c.ph.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case res := <-c.tx.Responses():
			c.responses = append(c.responses, res)
			if res.IsProvisional() {
				if req := res.GetHeader("Require"); req != nil && strings.Contains(req.Value(), "100rel") {
					c.prack(res)
				}
				continue
			}
			if res.IsSuccess() {
				c.learnDialog(res)
			}
			return res
		case <-c.tx.Done():
			c.ph.t.Fatalf("INVITE transaction ended without final response: %v", c.tx.Err())
		case <-deadline:
			c.ph.t.Fatalf("no final response to INVITE within %s", timeout)
		}
	}
}

func (c *call) learnDialog(res *sip.Response) {
	c.toTag, _ = res.To().Params.Get("tag")
	if ct := res.Contact(); ct != nil {
		c.target = ct.Address
	}
	c.routes = nil
	rr := res.GetHeaders("Record-Route")
	for i := len(rr) - 1; i >= 0; i-- {
		c.routes = append(c.routes, sip.RouteHeader{Address: rr[i].(*sip.RecordRouteHeader).Address})
	}
}

// waitProvisional waits for a provisional response other than 100.
func (c *call) waitProvisional(timeout time.Duration) *sip.Response {
	c.ph.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case res := <-c.tx.Responses():
			c.responses = append(c.responses, res)
			if res.IsProvisional() && res.StatusCode != 100 {
				return res
			}
			if !res.IsProvisional() {
				c.ph.t.Fatalf("final %d while waiting for a provisional response", res.StatusCode)
			}
		case <-deadline:
			c.ph.t.Fatalf("no provisional response within %s", timeout)
		}
	}
}

// prack acknowledges a reliable provisional response (RFC 3262) in the
// early dialog it establishes.
func (c *call) prack(res *sip.Response) {
	c.ph.t.Helper()
	c.learnDialog(res)
	rseq := res.GetHeader("RSeq")
	if rseq == nil {
		c.ph.t.Fatal("reliable provisional response without RSeq")
	}
	c.cseq++
	req := c.newRequest(sip.PRACK, c.target, c.routes)
	req.AppendHeader(sip.NewHeader("RAck", strings.TrimSpace(rseq.Value())+" "+strconv.Itoa(int(c.invite.CSeq().SeqNo))+" INVITE"))
	tx := c.ph.send(req)
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

// ack sends the ACK for the 2xx.
func (c *call) ack() {
	c.ph.t.Helper()
	c.ackFork(nil)
}

// ackFork sends the ACK for the 2xx res of another fork (nil: the dialog's
// own 2xx).
func (c *call) ackFork(res *sip.Response) {
	c.ph.t.Helper()
	d := c
	if res != nil {
		d = &call{ph: c.ph, callID: c.callID, fromTag: c.fromTag, cseq: c.cseq, ruri: c.ruri, invite: c.invite}
		d.learnDialog(res)
	}
	req := d.newRequest(sip.ACK, d.target, d.routes)
	req.SetDestination(c.ph.proxy)
	req.SetTransport(c.ph.transport)
	if err := c.ph.client.WriteRequest(req, sipgo.ClientRequestAddVia); err != nil {
		c.ph.t.Fatalf("ACK: %v", err)
	}
}

// fork returns the call as seen in the dialog of another fork's 2xx.
func (c *call) fork(res *sip.Response) *call {
	d := &call{ph: c.ph, callID: c.callID, fromTag: c.fromTag, cseq: c.cseq, ruri: c.ruri, invite: c.invite}
	d.learnDialog(res)
	return d
}

// request sends an in-dialog request and returns its final response.
func (c *call) request(m sip.RequestMethod, body []byte, extra ...sip.Header) *sip.Response {
	c.ph.t.Helper()
	c.cseq++
	req := c.newRequest(m, c.target, c.routes)
	for _, h := range extra {
		req.AppendHeader(h)
	}
	if m == sip.INVITE {
		req.AppendHeader(c.ph.contact())
	}
	if body != nil {
		ct := sip.ContentTypeHeader("application/sdp")
		req.AppendHeader(&ct)
		req.SetBody(body)
	}
	tx := c.ph.send(req)
	defer tx.Terminate()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case res := <-tx.Responses():
			if res.IsProvisional() {
				continue
			}
			if res.CSeq().SeqNo != c.cseq {
				c.ph.t.Fatalf("%s response CSeq %d, sent %d", m, res.CSeq().SeqNo, c.cseq)
			}
			if m == sip.INVITE && res.IsSuccess() {
				inv := c.invite
				c.invite = req
				c.ack()
				c.invite = inv
			}
			return res
		case <-tx.Done():
			c.ph.t.Fatalf("%s ended without final response: %v", m, tx.Err())
		case <-deadline:
			c.ph.t.Fatalf("no final response to %s", m)
		}
	}
}

// cancel sends a CANCEL for the pending INVITE and returns its response.
func (c *call) cancel() *sip.Response {
	c.ph.t.Helper()
	inv := c.invite
	req := sip.NewRequest(sip.CANCEL, inv.Recipient)
	req.AppendHeader(inv.Via().Clone())
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(sip.HeaderClone(inv.From()))
	req.AppendHeader(sip.HeaderClone(inv.To()))
	req.AppendHeader(sip.HeaderClone(inv.CallID()))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL})
	req.SetBody(nil)
	req.SetDestination(c.ph.proxy)
	req.SetTransport(c.ph.transport)
	req.Laddr = inv.Laddr
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tx, err := c.ph.client.TransactionRequest(ctx, req, func(*sipgo.Client, *sip.Request) error { return nil })
	if err != nil {
		c.ph.t.Fatalf("CANCEL: %v", err)
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if !res.IsProvisional() {
				return res
			}
		case <-tx.Done():
			c.ph.t.Fatalf("CANCEL ended without final response: %v", tx.Err())
		}
	}
}

var testSDP = []byte("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")

// barrier sends an out-of-dialog MESSAGE through authproxy, on the
// phone's own socket or connection, and waits for its final response.
// authproxy reads what the phone sent before the MESSAGE first, so what
// those earlier messages make it forward without a challenge round trip
// has reached the upstream by the time the MESSAGE's answer is back: a
// check that something was not forwarded runs after the barrier instead
// of after a sleep.
func (ph *phone) barrier(ruri sip.Uri) {
	ph.t.Helper()
	m := &call{ph: ph, callID: "barrier-" + uuid.NewString(), fromTag: sip.GenerateTagN(8), cseq: 1, ruri: ruri}
	m.tx = ph.send(m.newRequest(sip.MESSAGE, ruri, nil))
	if res := m.waitFinal(10 * time.Second); res.StatusCode != 200 {
		ph.t.Fatalf("barrier MESSAGE: %d, want 200", res.StatusCode)
	}
}
