package tcpguard

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// step is one event of a framed stream at its offset in the input.
type step struct {
	at int
	ev Event
}

func (s step) String() string { return fmt.Sprintf("%s@%d", s.ev, s.at) }

// frameChunks feeds input to a framer in chunks of size chunk (0: all at
// once) and returns the events other than More, with the offset of the
// byte after each, and the message bytes the framer let through.
func frameChunks(t testing.TB, f *Framer, input []byte, chunk int) ([]step, []byte) {
	t.Helper()
	var steps []step
	var out []byte
	off := 0
	for off < len(input) {
		end := len(input)
		if chunk > 0 {
			end = min(off+chunk, len(input))
		}
		data := input[off:end]
		zeroRun := 0
		for len(data) > 0 {
			n, msg, ev := f.Next(data)
			if n < 0 || n > len(data) {
				t.Fatalf("Next consumed %d of %d bytes", n, len(data))
			}
			if msg {
				out = append(out, data[:n]...)
			}
			off += n
			data = data[n:]
			if ev == TooLarge || ev == Malformed {
				return append(steps, step{off, ev}), out
			}
			if ev != More {
				steps = append(steps, step{off, ev})
			}
			if n == 0 {
				zeroRun++
				if zeroRun > 1 {
					t.Fatalf("Next made no progress twice at offset %d", off)
				}
			} else {
				zeroRun = 0
			}
		}
	}
	return steps, out
}

// sipMsg builds a message from lines joined with CRLF, an empty line, and
// body.
func sipMsg(body string, lines ...string) string {
	return strings.Join(lines, "\r\n") + "\r\n\r\n" + body
}

var (
	optionsHead = []string{
		"OPTIONS sip:pbx.example.com SIP/2.0",
		"Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK776asdhds",
		"From: <sip:1001@pbx.example.com>;tag=1928301774",
		"To: <sip:pbx.example.com>",
		"Call-ID: a84b4c76e66710",
		"CSeq: 63104 OPTIONS",
		"Max-Forwards: 70",
	}
	options = sipMsg("", append(slices.Clone(optionsHead), "Content-Length: 0")...)
	message = sipMsg("hello", "MESSAGE sip:1001@pbx.example.com SIP/2.0", "Via: SIP/2.0/TCP h;branch=z9hG4bK1",
		"From: <sip:a@h>;tag=1", "To: <sip:1001@h>", "Call-ID: c1", "CSeq: 1 MESSAGE", "Max-Forwards: 70",
		"Content-Type: text/plain", "l: 5")
	response = sipMsg("", "SIP/2.0 200 OK", "Via: SIP/2.0/TCP h;branch=z9hG4bK1", "From: <sip:a@h>;tag=1",
		"To: <sip:1001@h>;tag=2", "Call-ID: c1", "CSeq: 1 MESSAGE", "Content-Length: 0")
)

func TestFramer_Boundaries(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		max     int
		want    []step
		wantOut string // the message bytes let through; "" means input minus keep-alives as in want
	}{
		{name: "NoBody", input: options, want: []step{{len(options), End}}},
		{name: "CompactContentLength", input: message, want: []step{{len(message), End}}},
		{name: "Response", input: response, want: []step{{len(response), End}}},
		{
			name: "Pipelined", input: options + message + response,
			want: []step{{len(options), End}, {len(options + message), End}, {len(options + message + response), End}},
		},
		{
			name: "KeepAlivesBetween", input: "\r\n\r\n" + options + "\r\n" + message,
			want: []step{{2, KeepAlive}, {4, Ping}, {4 + len(options), End}, {6 + len(options), KeepAlive},
				{6 + len(options+message), End}},
			wantOut: options + message,
		},
		{
			name: "FoldedContentLength", input: sipMsg("hello", "MESSAGE sip:a@h SIP/2.0", "Content-Length:", "  5 "),
			want: []step{{len(sipMsg("hello", "MESSAGE sip:a@h SIP/2.0", "Content-Length:", "  5 ")), End}},
		},
		{
			name: "LastContentLengthCounts", input: sipMsg("hello", "MESSAGE sip:a@h SIP/2.0", "Content-Length: 9", "content-length :5"),
			want: []step{{len(sipMsg("hello", "MESSAGE sip:a@h SIP/2.0", "Content-Length: 9", "content-length :5")), End}},
		},
		{
			// A header line starting with a blank right after the start line
			// is a header of its own (sipgo folds only after a header).
			name: "BlankLedFirstHeader", input: sipMsg("hi", "MESSAGE sip:a@h SIP/2.0", " l: 2"),
			want: []step{{len(sipMsg("hi", "MESSAGE sip:a@h SIP/2.0", " l: 2")), End}},
		},
		{
			name: "BodyWithCRLFs", input: sipMsg("\r\n\r\nab", "MESSAGE sip:a@h SIP/2.0", "Content-Length: 6") + options,
			want: []step{{len(sipMsg("\r\n\r\nab", "MESSAGE sip:a@h SIP/2.0", "Content-Length: 6")), End},
				{len(sipMsg("\r\n\r\nab", "MESSAGE sip:a@h SIP/2.0", "Content-Length: 6") + options), End}},
		},
		{name: "ExactlyMaxSize", input: options, max: len(options), want: []step{{len(options), End}}},

		// The stream cannot go on.
		{name: "NoContentLength", input: sipMsg("", "OPTIONS sip:h SIP/2.0", "Via: x"), want: []step{{len(sipMsg("", "OPTIONS sip:h SIP/2.0", "Via: x")), Malformed}}},
		{
			// sipgo ends a line at CRLF only: "Content-Length" here is part
			// of X-A's value, and the block has none.
			name: "BareLFIsNoLineEnd", input: sipMsg("", "OPTIONS sip:h SIP/2.0", "X-A: b\nContent-Length: 0"),
			want: []step{{len(sipMsg("", "OPTIONS sip:h SIP/2.0", "X-A: b\nContent-Length: 0")), Malformed}},
		},
		{name: "BadContentLength", input: sipMsg("", "OPTIONS sip:h SIP/2.0", "Content-Length: 1x"), want: []step{{len("OPTIONS sip:h SIP/2.0\r\nContent-Length: 1x\r\n\r\n"), Malformed}}},
		{name: "CRWithoutLF", input: "OPTIONS sip:h SIP/2.0\rX", want: []step{{len("OPTIONS sip:h SIP/2.0\r"), Malformed}}, wantOut: "OPTIONS sip:h SIP/2.0\r"},
		{name: "StrayLFBetweenMessages", input: options + "\nOPTIONS", want: []step{{len(options), End}, {len(options), Malformed}}, wantOut: options},
		{name: "StrayCRBetweenMessages", input: "\r\r\n", want: []step{{1, Malformed}}, wantOut: "-"},
		{
			name: "HeadersTooLarge", input: options, max: 100,
			want: []step{{100, TooLarge}}, wantOut: options[:100],
		},
		{
			// The LF completing the header block is held back.
			name: "BodyTooLarge", input: message, max: len(message) - 1,
			want: []step{{len(message) - len("hello") - 1, TooLarge}}, wantOut: message[:len(message)-len("hello")-1],
		},
		{name: "OneByteTooLarge", input: options, max: len(options) - 1, want: []step{{len(options) - 1, TooLarge}}, wantOut: options[:len(options)-1]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantOut := tt.wantOut
			switch wantOut {
			case "":
				wantOut = tt.input
			case "-":
				wantOut = ""
			}
			for _, chunk := range []int{0, 1, 2, 7} {
				f := &Framer{MaxSize: tt.max}
				got, out := frameChunks(t, f, []byte(tt.input), chunk)
				if !slices.Equal(got, tt.want) {
					t.Errorf("chunk %d: events %v, want %v", chunk, got, tt.want)
				}
				if string(out) != wantOut {
					t.Errorf("chunk %d: let through %q, want %q", chunk, out, wantOut)
				}
			}
		})
	}
}

func TestFramer_InMessage(t *testing.T) {
	var f Framer
	if _, _, ev := f.Next([]byte("\r\n")); ev != KeepAlive || f.InMessage() {
		t.Fatalf("after a CRLF: event %v, in message %v; want keep-alive, idle", ev, f.InMessage())
	}
	if n, _, ev := f.Next([]byte("OPT")); n != 0 || ev != More || !f.InMessage() {
		t.Fatalf("at a start line: consumed %d, event %v, in message %v; want 0, more, in message", n, ev, f.InMessage())
	}
	if n, msg, _ := f.Next([]byte("OPT")); n != 3 || !msg {
		t.Fatalf("in a start line: consumed %d, message %v; want 3, true", n, msg)
	}
	f.Next([]byte(options[3:]))
	if f.InMessage() {
		t.Fatal("in message after its end")
	}
}

func TestFramer_Kept(t *testing.T) {
	input := sipMsg("", "INVITE sip:1001@h SIP/2.0", "v: SIP/2.0/TCP a;branch=z9hG4bK1", "Via: SIP/2.0/TCP b;branch=z9hG4bK2",
		"f: <sip:a@h>;tag=1", "t: <sip:1001@h>", "i: c1", "CSeq: 1 INVITE", "Contact: <sip:a@a>",
		"Subject: a", "Max-Forwards: 70", "X-Pad: "+strings.Repeat("p", 500))
	f := &Framer{MaxSize: 400}
	if _, ev := frameChunks(t, f, []byte(input), 0); ev == nil {
		t.Fatal("no events")
	}
	head, all := f.Kept()
	want := "INVITE sip:1001@h SIP/2.0\r\nv: SIP/2.0/TCP a;branch=z9hG4bK1\r\nVia: SIP/2.0/TCP b;branch=z9hG4bK2\r\n" +
		"f: <sip:a@h>;tag=1\r\nt: <sip:1001@h>\r\ni: c1\r\nCSeq: 1 INVITE\r\n"
	if string(head) != want || !all {
		t.Fatalf("kept %q (all %v), want %q", head, all, want)
	}
}

func TestFramer_KeptBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("INVITE sip:1001@h SIP/2.0\r\n")
	for b.Len() < maxKept+1000 {
		b.WriteString("Via: SIP/2.0/TCP a;branch=z9hG4bK1\r\n")
	}
	f := &Framer{}
	frameChunks(t, f, []byte(b.String()), 0)
	if head, all := f.Kept(); all || len(head) > maxKept {
		t.Fatalf("kept %d bytes, all %v; want at most %d, not all", len(head), all, maxKept)
	}
}

func TestFramer_LongHeaderNameIsMalformed(t *testing.T) {
	input := sipMsg("", "OPTIONS sip:h SIP/2.0", strings.Repeat(" ", maxHeaderProbe)+"Content-Length: 0")
	// The first header line may start with blanks (it is no continuation).
	got, _ := frameChunks(t, &Framer{}, []byte(input), 0)
	if len(got) != 1 || got[0].ev != Malformed {
		t.Fatalf("events %v, want one malformed", got)
	}
}

func TestFramer_LongHeaderValuesPass(t *testing.T) {
	input := sipMsg("", "OPTIONS sip:h SIP/2.0", "X-Pad: "+strings.Repeat("p", 10*maxHeaderProbe), "Content-Length: 0")
	got, _ := frameChunks(t, &Framer{}, []byte(input), 0)
	if !slices.Equal(got, []step{{len(input), End}}) {
		t.Fatalf("events %v, want the end at %d", got, len(input))
	}
}

func TestFramer_DeadRepeats(t *testing.T) {
	f := &Framer{MaxSize: 10}
	frameChunks(t, f, []byte(options), 0)
	if n, _, ev := f.Next([]byte(options)); n != 0 || ev != TooLarge {
		t.Fatalf("after too large: consumed %d, event %v; want 0, too-large", n, ev)
	}
}

func BenchmarkFramer(b *testing.B) {
	stream := bytes.Repeat([]byte(options+message), 50)
	b.ReportAllocs()
	b.SetBytes(int64(len(stream)))
	var f Framer
	for b.Loop() {
		data := stream
		for len(data) > 0 {
			n, _, _ := f.Next(data)
			data = data[n:]
		}
	}
}
