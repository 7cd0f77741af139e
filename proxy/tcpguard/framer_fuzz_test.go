package tcpguard

import (
	"errors"
	"io"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// sipgoEnds returns where sipgo's stream parser ends each message of
// input, given all at once, and whether it stopped only for want of more
// bytes (rather than on an error).
func sipgoEnds(input []byte) (ends []int, partial bool) {
	p := sip.NewParser()
	p.MaxMessageLength = 1 << 30
	s := p.NewSIPStream()
	_, _ = s.Write(input)
	off := 0
	for s.Buffer().Len() > 0 {
		_, n, err := s.ParseNext()
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return ends, true
		}
		if err != nil {
			return ends, false
		}
		off += n
		ends = append(ends, off)
	}
	return ends, true
}

// FuzzFramer holds the framer's invariants on untrusted input: Next never
// consumes more than it is given nor stalls (frameChunks checks), never
// panics, lets through only bytes of the input in order, and finds the
// message boundaries sipgo's stream parser finds, whatever the read sizes:
// where both end a message they end it at the same byte, the framer ends
// no message sipgo still waits on, and sipgo ends none the framer still
// waits on (the framer may give up earlier, on input sipgo would also
// reject or that no real client sends, which only closes the connection).
func FuzzFramer(f *testing.F) {
	for _, s := range []string{
		options, message, response, options + message + response,
		"\r\n\r\n" + options + "\r\n" + message,
		sipMsg("hello", "MESSAGE sip:a@h SIP/2.0", "Content-Length:", "  5 "),
		sipMsg("hello", "MESSAGE sip:a@h SIP/2.0", "Content-Length: 9", "content-length :5"),
		sipMsg("hi", "MESSAGE sip:a@h SIP/2.0", " l: 2"),
		sipMsg("\r\n\r\nab", "MESSAGE sip:a@h SIP/2.0", "Content-Length: 6") + options,
		sipMsg("", "OPTIONS sip:h SIP/2.0", "X-A: b\nContent-Length: 0"),
		"OPTIONS sip:h SIP/2.0\rX",
	} {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, input []byte, chunk uint8) {
		var fr Framer
		steps, out := frameChunks(t, &fr, input, int(chunk))
		if len(out) > len(input) {
			t.Fatalf("let through %d bytes of %d", len(out), len(input))
		}
		var ends []int
		stopped := false // the framer gave up (too large or malformed)
		for _, s := range steps {
			switch s.ev {
			case End:
				ends = append(ends, s.at)
			case TooLarge, Malformed:
				stopped = true
			}
		}
		want, partial := sipgoEnds(input)
		for i := range min(len(ends), len(want)) {
			if ends[i] != want[i] {
				t.Fatalf("message %d ends at %d, sipgo ends it at %d\ninput %q", i, ends[i], want[i], input)
			}
		}
		if len(ends) > len(want) && partial {
			t.Fatalf("framer ends message %d at %d, sipgo waits for more\ninput %q", len(want), ends[len(want)], input)
		}
		if len(want) > len(ends) && !stopped {
			t.Fatalf("sipgo ends message %d at %d, the framer waits for more\ninput %q", len(ends), want[len(ends)], input)
		}
	})
}
