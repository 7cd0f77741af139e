// Package siptest holds the SIP test clients and upstreams that the
// in-process scenarios (proxy/scenarios) and the binary's tests (e2e)
// share: a password-less client request, a minimal UDP upstream, and a
// client on one raw TCP connection.
package siptest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"
)

// Request is what a password-less client sends.
type Request struct {
	Method      sip.RequestMethod
	RequestURI  string
	FromUser    string
	ToUser      string
	CallID      string
	FromTag     string
	CSeq        uint32
	Body        []byte
	ContentType string
	Headers     []sip.Header
}

// Build makes the SIP request, filling in a Call-ID, From tag and CSeq
// where c leaves them empty.
func (c Request) Build(t *testing.T) *sip.Request {
	t.Helper()
	var ruri sip.Uri
	if err := sip.ParseUri(c.RequestURI, &ruri); err != nil {
		t.Fatalf("parse %q: %v", c.RequestURI, err)
	}
	req := sip.NewRequest(c.Method, ruri)
	if c.CallID == "" {
		c.CallID = uuid.NewString()
	}
	if c.FromTag == "" {
		c.FromTag = sip.GenerateTagN(8)
	}
	if c.CSeq == 0 {
		c.CSeq = 1
	}
	if c.ToUser == "" {
		c.ToUser = ruri.User
	}
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: c.FromUser, Host: ruri.Host}, Params: sip.NewParams()}
	from.Params.Add("tag", c.FromTag)
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: c.ToUser, Host: ruri.Host}, Params: sip.NewParams()}
	callID := sip.CallIDHeader(c.CallID)
	maxFwd := sip.MaxForwardsHeader(70)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&callID)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: c.CSeq, MethodName: c.Method})
	req.AppendHeader(&maxFwd)
	if c.Method == sip.REGISTER || c.Method == sip.SUBSCRIBE {
		req.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: c.FromUser, Host: "127.0.0.1", Port: 5999}})
	}
	if c.Method == sip.SUBSCRIBE {
		req.AppendHeader(sip.NewHeader("Event", "presence"))
	}
	for _, h := range c.Headers {
		req.AppendHeader(h)
	}
	if c.ContentType != "" {
		ct := sip.ContentTypeHeader(c.ContentType)
		req.AppendHeader(&ct)
	}
	req.SetBody(c.Body)
	return req
}

// Send sends req to addr over transport and returns the final
// response; safe to call from any goroutine (it reports, never fails the
// test).
func Send(client *sipgo.Client, addr, transport string, req *sip.Request) (*sip.Response, error) {
	req.SetDestination(addr)
	req.SetTransport(strings.ToUpper(transport))
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	tx, err := client.TransactionRequest(ctx, req, sipgo.ClientRequestAddVia)
	if err != nil {
		return nil, fmt.Errorf("send %s: %w", req.Method, err)
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if !res.IsProvisional() {
				return res, nil
			}
		case <-tx.Done():
			return nil, fmt.Errorf("%s: transaction ended without a final response: %v", req.Method, tx.Err())
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: no final response", req.Method)
		}
	}
}
