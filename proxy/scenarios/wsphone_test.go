package scenarios

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/google/uuid"
)

// wsPhone is a browser softphone as JsSIP behaves on the wire: one
// WebSocket to authproxy (subprotocol sip), Via and Contact host
// "<random>.invalid" (RFC 7118 §5.2), every request and response over
// that connection. It keeps every message it receives.
type wsPhone struct {
	t    *testing.T
	conn net.Conn
	user string
	host string // the .invalid host of its Via and Contact
	tag  string
	via  string // Via transport: "WS", or "WSS" over TLS, as JsSIP writes it

	mu       sync.Mutex
	received []sip.Message
	changed  chan struct{}
	closed   chan struct{}
}

// wsTLS is the client TLS configuration of wss:// dials (nil: none).
var wsTLS struct {
	sync.Mutex
	conf *tls.Config
}

// dialWS opens a WebSocket to url with the given Origin ("" for none) and
// subprotocols, and returns the connection or the handshake error.
func dialWS(url, origin string, protocols []string) (net.Conn, error) {
	hdr := http.Header{}
	if origin != "" {
		hdr.Set("Origin", origin)
	}
	wsTLS.Lock()
	conf := wsTLS.conf
	wsTLS.Unlock()
	d := ws.Dialer{Protocols: protocols, Header: ws.HandshakeHeaderHTTP(hdr), Timeout: 5 * time.Second, TLSConfig: conf}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, _, err := d.Dial(ctx, url)
	return c, err
}

func startWSPhone(t *testing.T, user, url string) *wsPhone {
	t.Helper()
	c, err := dialWS(url, "https://app.example.com", []string{"sip"})
	if err != nil {
		t.Fatalf("websocket to %s: %v", url, err)
	}
	ph := &wsPhone{t: t, conn: c, user: user, host: strings.ReplaceAll(uuid.NewString()[:13], "-", "") + ".invalid",
		tag: uuid.NewString()[:8], via: "WS", changed: make(chan struct{}), closed: make(chan struct{})}
	if strings.HasPrefix(url, "wss:") {
		ph.via = "WSS"
	}
	go ph.read()
	t.Cleanup(func() { _ = c.Close(); <-ph.closed })
	return ph
}

func (ph *wsPhone) read() {
	defer close(ph.closed)
	for {
		data, _, err := wsutil.ReadServerData(ph.conn)
		if err != nil {
			return
		}
		msg, err := sip.ParseMessage(data)
		if err != nil {
			continue
		}
		ph.mu.Lock()
		ph.received = append(ph.received, msg)
		close(ph.changed)
		ph.changed = make(chan struct{})
		ph.mu.Unlock()
	}
}

// send writes msg as one text frame.
func (ph *wsPhone) send(msg sip.Message) {
	ph.t.Helper()
	if err := wsutil.WriteClientMessage(ph.conn, ws.OpText, []byte(msg.String())); err != nil {
		ph.t.Fatalf("websocket write: %v", err)
	}
}

// wait returns the first message received for which match is true,
// waiting up to 10 s.
func (ph *wsPhone) wait(what string, match func(sip.Message) bool) sip.Message {
	ph.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		ph.mu.Lock()
		for _, m := range ph.received {
			if match(m) {
				ph.mu.Unlock()
				return m
			}
		}
		ch := ph.changed
		ph.mu.Unlock()
		select {
		case <-ch:
		case <-ph.closed:
			ph.t.Fatalf("ws phone %s: connection closed waiting for %s", ph.user, what)
		case <-deadline:
			ph.t.Fatalf("ws phone %s: no %s", ph.user, what)
		}
	}
}

// responses returns the responses received for callID and method.
func (ph *wsPhone) responses(callID string, m sip.RequestMethod) []*sip.Response {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	var out []*sip.Response
	for _, msg := range ph.received {
		if r, ok := msg.(*sip.Response); ok && r.CallID().Value() == callID && r.CSeq().MethodName == m {
			out = append(out, r)
		}
	}
	return out
}

// final sends req and waits for its final response (by Via branch).
func (ph *wsPhone) final(req *sip.Request) *sip.Response {
	ph.t.Helper()
	branch, _ := req.Via().Params.Get("branch")
	ph.send(req)
	m := ph.wait(fmt.Sprintf("final response to %s", req.Method), func(m sip.Message) bool {
		r, ok := m.(*sip.Response)
		if !ok || r.IsProvisional() || r.Via() == nil {
			return false
		}
		b, _ := r.Via().Params.Get("branch")
		return b == branch
	})
	return m.(*sip.Response)
}

// request is a request of the phone's in a new transaction: Via WS with
// its .invalid host, From its AOR at domain.
func (ph *wsPhone) request(m sip.RequestMethod, ruri sip.Uri, callID, fromTag string, cseq uint32, domain string) *sip.Request {
	req := sip.NewRequest(m, ruri)
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: ph.via, Host: ph.host, Params: sip.NewParams()}
	via.Params.Add("branch", sip.GenerateBranch())
	req.AppendHeader(via)
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: ph.user, Host: domain}, Params: sip.NewParams()}
	from.Params.Add("tag", fromTag)
	req.AppendHeader(from)
	req.AppendHeader(&sip.ToHeader{Address: ruri, Params: sip.NewParams()})
	cid := sip.CallIDHeader(callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: m})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	return req
}

// contact is the phone's Contact, as JsSIP writes it.
func (ph *wsPhone) contact() *sip.ContactHeader {
	u := sip.Uri{Scheme: "sip", User: ph.user + "x", Host: ph.host, UriParams: sip.NewParams()}
	u.UriParams.Add("transport", "ws")
	return &sip.ContactHeader{Address: u, Params: sip.NewParams()}
}

// register binds the phone's Contact at domain for expires seconds,
// answering authproxy's own challenge with password when one comes.
func (ph *wsPhone) register(domain, callID string, cseq uint32, expires int, password string) *sip.Response {
	ph.t.Helper()
	build := func(seq uint32) *sip.Request {
		r := ph.request(sip.REGISTER, sip.Uri{Scheme: "sip", Host: domain}, callID, "reg"+ph.tag, seq, domain)
		r.To().Address = sip.Uri{Scheme: "sip", User: ph.user, Host: domain}
		r.AppendHeader(ph.contact())
		r.AppendHeader(sip.NewHeader("Expires", fmt.Sprint(expires)))
		r.AppendHeader(sip.NewHeader("Supported", "path, outbound"))
		return r
	}
	req := build(cseq)
	res := ph.final(req)
	if res.StatusCode == 407 && password != "" {
		again := build(cseq + 1)
		again.AppendHeader(sip.NewHeader("Proxy-Authorization", answerLocal(ph.t, res, again, ph.user, password)))
		res = ph.final(again)
	}
	return res
}

// respond answers req with code, as the phone (its To tag, its Contact,
// an SDP answer on a 2xx to an INVITE).
func (ph *wsPhone) respond(req *sip.Request, code int, reason string) *sip.Response {
	ph.t.Helper()
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	if _, ok := req.To().Params.Get("tag"); !ok && code > 100 {
		// sipgo made up a To tag; the phone's own is the dialog's.
		res.To().Params.Remove("tag")
		res.To().Params.Add("tag", ph.tag)
	}
	if code >= 200 && code < 300 && req.Method == sip.INVITE {
		res.AppendHeader(ph.contact())
		ct := sip.ContentTypeHeader("application/sdp")
		res.AppendHeader(&ct)
		res.SetBody([]byte("v=0\r\no=- 1 1 IN IP4 203.0.113.9\r\ns=-\r\nc=IN IP4 203.0.113.9\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"))
	}
	ph.send(res)
	return res
}
