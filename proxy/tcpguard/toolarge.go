package tcpguard

import (
	"github.com/emiago/sipgo/sip"
)

// StatusMessageTooLarge is RFC 3261 §21.5.14's 513: "the server was
// unwilling to process the request since its message length exceeded its
// capabilities".
const StatusMessageTooLarge = 513

// TooLargeResponse builds the 513 answering the request whose start line
// and headers are head (as Framer.Kept returns them: what was read before
// the request turned out too large), received from src ("host:port", for
// rport, RFC 3581 §4). It returns nil when no response can be built: head
// is a response or an ACK (never answered, RFC 3261 §17.1.1.1), or lacks
// one of the headers a response copies (Via, From, To, Call-ID, CSeq: RFC
// 3261 §8.2.6.2), or does not parse.
func TooLargeResponse(head []byte, src string) []byte {
	msg := make([]byte, 0, len(head)+len("Content-Length: 0\r\n\r\n"))
	msg = append(msg, head...)
	msg = append(msg, "Content-Length: 0\r\n\r\n"...)
	m, err := sip.ParseMessage(msg)
	if err != nil {
		return nil
	}
	req, ok := m.(*sip.Request)
	if !ok || req.IsAck() || req.Via() == nil || req.From() == nil || req.To() == nil ||
		req.CallID() == nil || req.CSeq() == nil {
		return nil
	}
	req.SetSource(src)
	// NewResponseFromRequest adds the To tag of RFC 3261 §8.2.6.2.
	res := sip.NewResponseFromRequest(req, StatusMessageTooLarge, "Message Too Large", nil)
	return []byte(res.String())
}
