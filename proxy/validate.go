package proxy

import (
	"net/netip"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// MaxDatagramSize is the largest SIP request, in bytes, authproxy takes in
// one UDP datagram: what it can still send on over UDP (sip.UDPMTUSize-200, 8,800 bytes, see
// proxy.go's init) once it has added its Via, Record-Route and digest
// answers (about a kilobyte). A larger request is answered 513 Message Too
// Large (RFC 3261 §21.5.11) before it is handled at all, instead of failing
// when it is sent on.
const MaxDatagramSize = 7680

// statusUnsupportedURIScheme is RFC 3261 §21.4.17's 416 (sipgo names 416
// after HTTP's range error).
const statusUnsupportedURIScheme = 416

// datagramTooLarge is the one decision on a UDP request's size: n bytes is
// more than authproxy takes in a datagram. (Over TCP and TLS the limit is
// Config.TCP.MaxMessageSize, checked by tcpguard while framing the stream.)
func datagramTooLarge(n int) bool { return n > MaxDatagramSize }

// malformedRequest checks what RFC 3261 §16.3 step 1 (reasonable syntax)
// and §8.2 ask of a request before a proxy does anything with it, as far
// as sipgo's parser leaves it to authproxy: the SIP version, the
// Request-URI, the headers every request carries (§8.1.1), the CSeq method,
// headers that may appear once, and known headers the parser could not
// read (lenientHeaderParsers keeps those as text). It returns 0 for a
// request that may go on, else the status to answer and a reason phrase
// naming what is wrong.
func malformedRequest(req *sip.Request) (code int, reason string) {
	if req.SipVersion != "SIP/2.0" {
		// RFC 3261 §21.5.6, RFC 4475 §3.1.2.16.
		return sip.StatusVersionNotSupported, "Version Not Supported"
	}
	if !routableScheme(req.Recipient.Scheme) {
		// §16.3 step 2, RFC 4475 §3.3.2.
		return statusUnsupportedURIScheme, "Unsupported URI Scheme"
	}
	if hasControlChar(&req.Recipient) {
		return sip.StatusBadRequest, "Bad Request (control character in Request-URI)"
	}
	if len(req.Recipient.Headers) > 0 {
		// §19.1.1 Table 1: no headers in a Request-URI (RFC 4475 §3.1.2.11).
		return sip.StatusBadRequest, "Bad Request (headers in Request-URI)"
	}
	switch {
	case req.Via() == nil:
		return sip.StatusBadRequest, "Bad Request (missing Via)"
	case req.From() == nil:
		return sip.StatusBadRequest, "Bad Request (missing From)"
	case req.To() == nil:
		return sip.StatusBadRequest, "Bad Request (missing To)"
	case req.CallID() == nil:
		return sip.StatusBadRequest, "Bad Request (missing Call-ID)"
	case req.CSeq() == nil:
		return sip.StatusBadRequest, "Bad Request (missing CSeq)"
	case !strings.EqualFold(string(req.CSeq().MethodName), string(req.Method)):
		// sipgo upper-cases the request line's method (not CSeq's), so
		// case cannot tell them apart here.
		// §8.1.1.5, RFC 4475 §3.1.2.17.
		return sip.StatusBadRequest, "Bad Request (CSeq method differs from request method)"
	}
	return badHeader(req)
}

// badHeader finds a header that may appear only once but appears more
// often (§7.3.1, RFC 4475 §3.3.8, §3.3.9), or a known header kept as text
// because it did not parse (lenientHeaderParsers). It reads the headers in
// one pass without allocating: it runs for every request.
func badHeader(req *sip.Request) (code int, reason string) {
	var from, to, callID, cseq, maxForwards, length int
	for _, h := range req.Headers() {
		switch h.(type) {
		case *sip.FromHeader:
			from++
		case *sip.ToHeader:
			to++
		case *sip.CallIDHeader:
			callID++
		case *sip.CSeqHeader:
			cseq++
		case *sip.MaxForwardsHeader:
			maxForwards++
		case *sip.ContentLengthHeader:
			length++
		case *sip.ViaHeader, *sip.ContactHeader, *sip.RouteHeader, *sip.RecordRouteHeader,
			*sip.ContentTypeHeader, *sip.ReferToHeader, *sip.ReferredByHeader:
		default:
			// A text header: the fallback of lenientHeaderParsers carries
			// the canonical name of a header that has a type.
			if name := h.Name(); isLenientName(name) {
				return sip.StatusBadRequest, "Bad Request (malformed " + name + ")"
			}
		}
	}
	switch {
	case from > 1:
		return sip.StatusBadRequest, "Bad Request (more than one From)"
	case to > 1:
		return sip.StatusBadRequest, "Bad Request (more than one To)"
	case callID > 1:
		return sip.StatusBadRequest, "Bad Request (more than one Call-ID)"
	case cseq > 1:
		return sip.StatusBadRequest, "Bad Request (more than one CSeq)"
	case maxForwards > 1:
		return sip.StatusBadRequest, "Bad Request (more than one Max-Forwards)"
	case length > 1:
		return sip.StatusBadRequest, "Bad Request (more than one Content-Length)"
	}
	return 0, ""
}

// routableScheme reports whether a Request-URI of scheme can be
// forwarded: sip and sips route by host, tel goes to the default upstream.
func routableScheme(scheme string) bool {
	return strings.EqualFold(scheme, "sip") || strings.EqualFold(scheme, "sips") || strings.EqualFold(scheme, "tel")
}

// hasControlChar reports whether a part of u holds a control character
// (RFC 3261 §25.1: none may appear in a URI unescaped; a NUL in a
// Request-URI reaches the upstream's parser as a string terminator).
func hasControlChar(u *sip.Uri) bool {
	if controlIn(u.User) || controlIn(u.Password) || controlIn(u.Host) {
		return true
	}
	for _, kv := range u.UriParams {
		if controlIn(kv.K) || controlIn(kv.V) {
			return true
		}
	}
	for _, kv := range u.Headers {
		if controlIn(kv.K) || controlIn(kv.V) {
			return true
		}
	}
	return false
}

func controlIn(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// lenientHeaders are the headers sipgo's parser knows whose value, when it
// cannot read it, makes the parser refuse the whole message, so that the
// sender got no answer at all (RFC 4475 expects 400). Their parsers are
// wrapped (lenientHeaderParsers) to keep such a value as text, which
// badHeader then refuses with 400 and the header's name. The headers a
// response cannot be built without (Via, From, To, Call-ID, CSeq) and
// Content-Length, which frames the message on a stream, keep sipgo's
// strict parsers. Keys are the parser's (lower case, compact forms too);
// values the names used in reason phrases.
var lenientHeaders = map[string]string{
	"max-forwards": "Max-Forwards",
	"contact":      "Contact",
	"m":            "Contact",
	"route":        "Route",
	"record-route": "Record-Route",
	"content-type": "Content-Type",
	"c":            "Content-Type",
	"refer-to":     "Refer-To",
	"referred-by":  "Referred-By",
}

// isLenientName reports whether name is the canonical name of one of
// lenientHeaders (as their fallback spells it).
func isLenientName(name string) bool {
	switch name {
	case "Max-Forwards", "Contact", "Route", "Record-Route", "Content-Type", "Refer-To", "Referred-By":
		return true
	}
	return false
}

// lenientHeaderParsers returns sipgo's header parsers with those of
// lenientHeaders wrapped: a value they cannot read is kept as a text header
// of its canonical name instead of failing the message.
func lenientHeaderParsers() map[string]sip.HeaderParser {
	out := map[string]sip.HeaderParser{}
	for k, parse := range sip.DefaultHeadersParser() {
		name, lenient := lenientHeaders[k]
		if !lenient {
			out[k] = parse
			continue
		}
		out[k] = func(headerName []byte, text string) (sip.Header, error) {
			h, err := parse(headerName, text)
			if err == nil || isCommaSplit(err) {
				return h, err
			}
			return sip.NewHeader(name, text), nil
		}
	}
	return out
}

// isCommaSplit reports whether err is how sipgo's header parsers say "one
// value read, another follows after a comma" (an unexported type, known by
// its text): not a failure.
func isCommaSplit(err error) bool { return err.Error() == "comma detected" }

// refuseMalformed answers a request malformedRequest refused, with code and
// reason, or drops it unanswered when Limits.Drop applies to its source
// (silentTo). Nothing of it goes upstream.
func (f *forwarding) refuseMalformed(code int, reason string) {
	outcome := "bad-request"
	switch code {
	case sip.StatusVersionNotSupported:
		outcome = "version-not-supported"
	case statusUnsupportedURIScheme:
		outcome = "unsupported-uri-scheme"
	}
	f.p.cfg.Observer.Refused(outcome)
	f.log.Debug("request refused", "reason", reason, "source", f.req.Source())
	from, _ := netip.ParseAddrPort(f.req.Source())
	if f.req.Transport() == "UDP" && f.p.silentTo(from) {
		f.outcome = outcome
		return
	}
	f.respondLocal(code, reason, outcome)
}
