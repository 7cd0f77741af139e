package fakepbx

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// Binding is one contact registered with the fake (its registrar side): the
// latest authenticated REGISTER of the AOR's user that bound it, with the
// Path it came through (RFC 3327), in the order the registrar uses it as a
// Route set.
type Binding struct {
	User    string // To user of the REGISTER
	Contact sip.Uri
	Path    []sip.Uri
	Expires int
}

// Bindings returns the live bindings of user, derived from the
// authenticated REGISTERs received (the fake answers every one with its
// Contacts, so the latest REGISTER of a contact decides; expires 0 and
// "Contact: *" remove; one refused with 423 changes nothing), each with
// the expiry granted (capped at MaxExpires). Expiry by time is not
// tracked.
func (s *Server) Bindings(user string) []Binding {
	var out []Binding
	for _, r := range s.Requests() {
		if r.Method != "REGISTER" || !r.Authenticated {
			continue
		}
		msg, err := sip.ParseMessage([]byte(r.Raw))
		if err != nil {
			continue
		}
		req, ok := msg.(*sip.Request)
		if !ok || req.To() == nil || req.To().Address.User != user {
			continue
		}
		out = s.applyRegister(out, req)
	}
	return out
}

// applyRegister returns the bindings of req's AOR after req: its Contacts
// replace theirs, with the expiry granted; 0 and "Contact: *" remove; a
// REGISTER refused with 423 changes nothing.
func (s *Server) applyRegister(bindings []Binding, req *sip.Request) []Binding {
	d := s.decideExpires(req)
	if d.tooBrief != 0 {
		return bindings
	}
	user := req.To().Address.User
	var path []sip.Uri
	for _, h := range req.GetHeaders("Path") {
		for _, v := range strings.Split(h.Value(), ",") {
			v = strings.Trim(strings.TrimSpace(v), "<>")
			var u sip.Uri
			if sip.ParseUri(v, &u) == nil {
				path = append(path, u)
			}
		}
	}
	out := slices.Clone(bindings)
	for i, h := range req.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok {
			continue
		}
		if c.Address.Wildcard {
			out = nil
			continue
		}
		out = slices.DeleteFunc(out, func(b Binding) bool { return b.Contact.String() == c.Address.String() })
		if exp := d.granted[i]; exp > 0 {
			out = append(out, Binding{User: user, Contact: *c.Address.Clone(), Path: path, Expires: exp})
		}
	}
	return out
}

// OutgoingCall is the result of CallUser.
type OutgoingCall struct {
	CallID string
	Status int           // final status of the INVITE (0: none)
	Final  *sip.Response // the final response
	Sent   *sip.Request  // the INVITE as sent
}

// CallUser calls the first live binding of user as a UAC, the way a PBX
// calls a registered phone: Request-URI the bound Contact, Route the Path
// it registered through, sent to the first Path hop (or the contact) from
// the fake's own UDP socket (over TCP when the hop says transport=tcp). A
// 2xx is ACKed through the dialog's route set and the dialog becomes one of
// the UA's (Calls, HangUp, and the remote side's BYE are handled as for
// calls it answered). It waits at most 10s for the final response. The test
// fails when user has no binding.
func (s *Server) CallUser(t testing.TB, user string) OutgoingCall {
	t.Helper()
	bs := s.Bindings(user)
	if len(bs) == 0 {
		t.Fatalf("fakepbx %s: no binding for %q", s.name, user)
		return OutgoingCall{}
	}
	b := bs[len(bs)-1]
	callID := fmt.Sprintf("fakepbx-%s-%d", randomHex(8), time.Now().UnixNano())
	localTag := randomHex(tagLength / 2)
	c := &callState{}
	c.CallID, c.LocalTag = callID, localTag
	c.LocalCSeq = uint32(100 + rand.IntN(900))
	c.sdpSession = rand.IntN(1 << 30)
	c.State = StateEarly
	c.target = *b.Contact.Clone()
	c.routes = b.Path
	c.local = sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: "fakepbx", Host: s.cfg.Host, Port: s.port}}
	c.remote = sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: s.cfg.Host}}
	c.transport = "UDP"

	s.mu.Lock()
	req, err := s.inDialogRequest(c, sip.INVITE, c.LocalCSeq)
	s.mu.Unlock()
	if err != nil {
		t.Fatalf("fakepbx %s: INVITE to %s: %v", s.name, user, err)
		return OutgoingCall{}
	}
	// Not in a dialog yet: no To tag.
	req.To().Params.Remove("tag")
	c.transport = req.Transport()
	ct := sip.ContentTypeHeader(sdpContentType)
	req.AppendHeader(&ct)
	req.SetBody(s.sdp(c))

	ctx, cancel := context.WithTimeout(s.ctx, inDialogDeadline)
	defer cancel()
	tx, err := s.client.TransactionRequest(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		t.Fatalf("fakepbx %s: sending INVITE to %s: %v", s.name, user, err)
		return OutgoingCall{}
	}
	out := OutgoingCall{CallID: callID, Sent: req}
wait:
	for {
		select {
		case res := <-tx.Responses():
			if !res.IsProvisional() {
				out.Final = res
				break wait
			}
		case <-tx.Done():
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	if out.Final == nil {
		tx.Terminate()
		return out
	}
	out.Status = out.Final.StatusCode
	if !out.Final.IsSuccess() {
		return out
	}

	// Confirmed: the UAC's route set is the 2xx's Record-Route reversed
	// (RFC 3261 §12.1.2), the remote target its Contact.
	s.mu.Lock()
	c.RemoteTag, _ = out.Final.To().Params.Get("tag")
	c.routes = nil
	rr := out.Final.GetHeaders("Record-Route")
	for i := len(rr) - 1; i >= 0; i-- {
		if h, ok := rr[i].(*sip.RecordRouteHeader); ok {
			c.routes = append(c.routes, *h.Address.Clone())
		}
	}
	if h := out.Final.Contact(); h != nil {
		c.target = *h.Address.Clone()
	}
	c.State, c.FinalCode, c.InviteCSeq = StateConfirmed, out.Status, c.LocalCSeq
	c.refreshStrings()
	ack, err := s.inDialogRequest(c, sip.ACK, c.LocalCSeq)
	s.calls = append(s.calls, c)
	s.callIndex[callKey(c.CallID, c.LocalTag)] = c
	s.bumpLocked()
	s.mu.Unlock()
	s.raws.openDialog(c.CallID, c.RemoteTag, c.LocalTag, 0)
	if err != nil {
		t.Errorf("fakepbx %s: ACK: %v", s.name, err)
		return out
	}
	if err := s.client.WriteRequest(ack, sipgo.ClientRequestAddVia); err != nil {
		t.Errorf("fakepbx %s: sending ACK to %s: %v", s.name, user, err)
	}
	tx.OnRetransmission(func(res *sip.Response) {
		if res.IsSuccess() {
			_ = s.client.WriteRequest(ack.Clone(), func(*sipgo.Client, *sip.Request) error { return nil })
		}
	})
	return out
}

// SendTo sends an out-of-dialog request (MESSAGE, OPTIONS, NOTIFY) to a
// binding the way CallUser sends its INVITE, and returns the final
// response (nil without one within 10s).
func (s *Server) SendTo(t testing.TB, b Binding, method sip.RequestMethod) *sip.Response {
	t.Helper()
	c := &callState{}
	c.CallID, c.LocalTag = fmt.Sprintf("fakepbx-%s", randomHex(12)), randomHex(tagLength/2)
	c.target, c.routes = *b.Contact.Clone(), b.Path
	c.local = sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: "fakepbx", Host: s.cfg.Host, Port: s.port}}
	c.remote = sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: b.User, Host: s.cfg.Host}}
	s.mu.Lock()
	req, err := s.inDialogRequest(c, method, 1)
	s.mu.Unlock()
	if err != nil {
		t.Fatalf("fakepbx %s: %s to %s: %v", s.name, method, b.User, err)
		return nil
	}
	req.To().Params.Remove("tag")
	if method == sip.MESSAGE {
		ct := sip.ContentTypeHeader("text/plain")
		req.AppendHeader(&ct)
		req.SetBody([]byte("hello from " + s.name))
	}
	ctx, cancel := context.WithTimeout(s.ctx, inDialogDeadline)
	defer cancel()
	tx, err := s.client.TransactionRequest(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		t.Fatalf("fakepbx %s: sending %s to %s: %v", s.name, method, b.User, err)
		return nil
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if !res.IsProvisional() {
				return res
			}
		case <-tx.Done():
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}
