package proxy

import (
	"context"
	"log/slog"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Relaying responses to the request's sender (RFC 3261 §16.7), answering
// it locally, and the log line that ends each request.

// relay sends a response back to the request's sender: our Via removed
// (§16.7 step 3), the sender's own CSeq number restored, dialog state
// updated. It returns the error sending it (already logged).
func (f *forwarding) relay(res *sip.Response) error {
	f.preemptiveDone(res.StatusCode)
	f.prepareRelay(res)
	if res.StatusCode == sip.StatusServiceUnavailable && !f.toClient {
		// RFC 3261 §16.7 step 6: a 503 from the next hop says that hop is
		// unavailable, not authproxy; relayed as is, the client would
		// take authproxy for unavailable (and fail over away from it).
		res.StatusCode, res.Reason = sip.StatusInternalServerError, "Server Internal Error"
	}
	if res.IsSuccess() {
		if f.req.Method == sip.REGISTER && !f.toClient {
			f.registered(res)
			f.p.saveRegisterOffset(f.key, f.cseqTTL(res))
		}
		if _, toTag := tags(f.req); toTag == "" && f.req.Method != sip.INVITE && createsDialog(f.req.Method) {
			// A subscription (or REFER's implicit one): the NOTIFYs the
			// upstream sends into it must find their way to the client.
			f.recordDialog(res, nil, 0)
		}
		f.p.cseq.touch(f.key, time.Now(), f.cseqTTL(res))
	}
	f.byeAnswered(res.StatusCode)
	err := f.tx.Respond(res)
	f.relayed(res.StatusCode, err)
	return err
}

// relayed notes a response sent on to the sender (err from sending it).
func (f *forwarding) relayed(status int, err error) {
	if err != nil {
		f.log.Warn("cannot send response", logStatus, status, "error", err)
	}
	if status >= 200 {
		f.replied = true
		f.status = status
		if !f.sentAt.IsZero() {
			f.hopTime = time.Since(f.sentAt)
		}
		if f.outcome == "" {
			f.outcome = "relayed"
		}
	}
}

// relayRaw relays a response to a fast lane request as the bytes the
// upstream sent (scanned by scanResponse): what relay does for the
// requests the lane takes (no REGISTER, nothing creating a dialog, never
// toward a client; a BYE's final response ending its dialog), on bytes
// instead of a parsed message.
func (f *forwarding) relayRaw(tx laneTx, data []byte, r *scannedResponse) {
	f.preemptiveDone(r.status)
	if r.status >= 200 && r.status < 300 {
		f.p.cseq.touch(f.key, time.Now(), f.cseqTTL(nil))
	}
	f.byeAnswered(r.status)
	buf := datagramBufs.Get().(*[]byte)
	*buf = r.relayBytes((*buf)[:0], data, f.req.CSeq().SeqNo)
	err := tx.RespondRaw(*buf, r.status >= 200)
	datagramBufs.Put(buf)
	f.relayed(r.status, err)
}

// prepareRelay rewrites a response for the sender of f.req. It reads only
// what does not change during the forwarding, so it is also safe from
// sipgo's retransmission callback.
func (f *forwarding) prepareRelay(res *sip.Response) {
	// §16.7 step 3: the topmost Via is ours — sipgo matched the response
	// to our client transaction by its branch.
	removeFirst(res, "Via")
	if cs := res.CSeq(); cs != nil {
		cs.SeqNo = f.req.CSeq().SeqNo
	}
	if f.req.Transport() == "UDP" {
		res.SetDestination(f.req.Source())
	}
}

// byeAnswered ends the dialog of a BYE answered with a final status, in
// either direction: a 2xx ends it, and so do a 408 (also authproxy's own,
// when the BYE got no answer) and a 481, after which the UAC must consider
// the dialog terminated (RFC 3261 §15.1.1). Other failures leave it: the
// UAC may send the BYE again.
func (f *forwarding) byeAnswered(status int) {
	if f.req.Method != sip.BYE || f.dlg == nil {
		return
	}
	if status/100 != 2 && status != sip.StatusRequestTimeout && status != sip.StatusCallTransactionDoesNotExists {
		return
	}
	f.p.dialogs.end(f.dlg.key, time.Now())
	f.p.cseq.remove(cseqKey{callID: f.dlg.key.callID, fromTag: f.dlg.key.callerTag})
}

// unreachable answers the sender 503 when its request could not be sent
// on: a transport error counts as a 503 from the next hop (RFC 3261 §16.9),
// and no other target was left to try.
func (f *forwarding) unreachable() {
	f.respondLocal(sip.StatusServiceUnavailable, "Service Unavailable", "unreachable")
}

// respondLocal answers the client ourselves.
func (f *forwarding) respondLocal(code int, reason, outcome string, hdrs ...sip.Header) {
	f.byeAnswered(code)
	res := sip.NewResponseFromRequest(f.req, code, reason, nil)
	res.SipVersion = "SIP/2.0" // the only version authproxy speaks, whatever the request's (§21.5.6)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	if f.req.Method == sip.INVITE {
		// Before the answer leaves: on a reliable transport the client's
		// ACK for it may arrive as soon as it is sent.
		f.status = code
		f.rememberNon2xxFinal()
	}
	if err := f.tx.Respond(res); err != nil {
		f.log.Warn("cannot send response to client", logStatus, code, "error", err)
	}
	f.replied = true
	f.status = code
	f.outcome = outcome
}

func (f *forwarding) logDone() {
	upName := ""
	if f.up != nil {
		upName = f.up.Name
	} else if f.dlg != nil {
		upName = f.dlg.up.Name
	}
	f.p.cfg.Observer.RequestDone(f.req.Method.String(), upName, f.status, f.outcome, time.Since(f.start), f.hopTime)
	realms := f.realms
	if realms == nil {
		realms = []string{} // [] in JSON, as on lines that answered some
	}
	lvl := slog.LevelInfo
	if f.status >= 500 || !f.replied {
		lvl = slog.LevelWarn
	}
	if !f.log.Enabled(context.Background(), lvl) {
		return
	}
	f.log.Log(context.Background(), lvl, "request",
		logStatus, f.status,
		logOutcome, f.outcome,
		logChallenges, f.rounds,
		logRealms, realms,
		logDuration, time.Since(f.start).Round(time.Microsecond).String(),
	)
}
