package proxy

import (
	"time"

	"github.com/emiago/sipgo/sip"
)

// In-dialog requests on the fast lane. A client's BYE (and its INFO,
// MESSAGE, OPTIONS and NOTIFY) inside a dialog authproxy knows goes on as
// the out-of-dialog requests do: no sipgo server or client transaction,
// its challenge answered on the lane (fastlane_challenge.go). What the
// usual path does for it is done by the same code: route finds the dialog
// (its upstream and target, RFC 3261 §12.2.1.1: in-dialog requests never
// re-resolve and never fail over), admit lets the dialog's client in,
// forwardEdits shifts the CSeq by what authproxy added in the dialog's
// CSeq space (cseq.go) and removes authproxy's own Route entries (§16.4),
// in the parsed copy or in the datagram's bytes (appendForward), and
// relay and relayRaw end the dialog at a BYE's final 2xx, 408 or 481
// (byeAnswered, §15.1.1), keeping it for the caller's late ACK (ack.go:
// with the INVITE's CSeq and credentials, whatever the BYE's challenge
// added to the offset).

// takesInDialog reports whether the lane takes req, a request with To tag
// toTag (in a dialog, §12.2): a method that neither creates, refreshes nor
// re-targets a dialog, and whose forwarding needs nothing of the INVITE's
// transaction (takesInDialogMethod), sent by the client of a dialog
// authproxy holds toward its upstream. A request the upstream sends into
// a dialog (toward the client, route's toClient), and one whose dialog is
// unknown, stay sipgo's.
func (l *fastLane) takesInDialog(req *sip.Request, fromTag, toTag string) bool {
	if !takesInDialogMethod(req.Method) {
		return false
	}
	// A dialog its BYE ended is still taken: the BYE's retransmissions
	// are then answered from the socket's answered store, not sent
	// upstream as a new request by sipgo.
	return l.p.dialogs.sentByClient(callID(req), fromTag, toTag, time.Now())
}

// takesInDialogMethod reports whether in-dialog requests of method m may
// take the fast lane: BYE, INFO (RFC 6086), MESSAGE (RFC 3428), OPTIONS
// and NOTIFY (RFC 6665), which neither refresh the dialog's target nor
// create one. Not INVITE, UPDATE (RFC 3311: target refreshes), PRACK (its
// RAck names the INVITE's CSeq, shifted by buildForward, RFC 3262 §7.2),
// SUBSCRIBE or REFER (create or refresh subscriptions), ACK or CANCEL
// (no transaction of their own to answer).
func takesInDialogMethod(m sip.RequestMethod) bool {
	switch m {
	case sip.BYE, sip.INFO, sip.MESSAGE, sip.OPTIONS, sip.NOTIFY:
		return true
	}
	return false
}

// outlivesClient reports whether e's request is followed to its final
// response after its client's connection closed: a BYE in a dialog
// authproxy holds. The usual path does so: sipgo's server transaction for
// a request over TCP or TLS does not end when its connection closes (no
// timer runs in its Trying and Proceeding states, RFC 3261 §17.2.2, and
// the transaction layer is not asked to end it on close), so relayLoop
// answers the BYE's challenges, and its final response, or Timer F's 408,
// ends the dialog (byeAnswered) before failing to reach the client. The
// lane matches it: abandoned, the BYE would leave the upstream's call up
// when a challenge to it went unanswered, and authproxy's dialog held
// until it idles out, while the caller, its BYE sent, considers the
// dialog over (§15.1.1) and sends nothing more in it. Its responses are
// written nowhere (the stream's writes fail), as on the usual path. Other
// requests end nothing authproxy keeps: the sweeper abandons them.
func (e *laneEntry) outlivesClient() bool {
	return e.f.req.Method == sip.BYE && e.f.dlg != nil
}
