package proxy_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/internal/testutil"
)

// Each RFC 4475 torture message (testdata/rfc4475, see its README) sent to
// a running proxy over UDP from an admitted client gets what RFC 4475 asks
// of a proxy: the answer it names, silence for what cannot be answered (a
// response; bytes the parser refuses without the headers a response
// needs), or forwarding for what a proxy passes on unchanged (the
// registrar or UAS behind it decides). Nothing else reaches the upstream,
// and the listener serves a normal request afterwards. Each message's top
// Via gets rport, so that answers reach the test's socket, and its branch
// a prefix of the file's name, so that messages sharing a branch are not
// taken for retransmissions of each other.
func TestRFC4475TortureMessages(t *testing.T) {
	e := startHostile(t, hostileOptions{})
	const forwarded = "forwarded"
	want := map[string]string{
		"invalid/badaspec":   "400", // §3.1.2.14 spaces within addr-spec
		"invalid/badbranch":  forwarded,
		"invalid/baddate":    forwarded, // §3.1.2.12: a proxy need not read Date
		"invalid/baddn":      "400",     // §3.1.2.15 non-token display name
		"invalid/badinv01":   "400",     // §3.1.2.1 extraneous separators
		"invalid/badvers":    "505",     // §3.1.2.16 unknown protocol version
		"invalid/bcast":      "dropped:stray-response",
		"invalid/bext01":     "420", // §3.3.5 Proxy-Require
		"invalid/bigcode":    "dropped:unparsable",
		"invalid/clerr":      "400", // §3.1.2.2 Content-Length larger than the message
		"invalid/cparam01":   forwarded,
		"invalid/cparam02":   forwarded,
		"invalid/escruri":    "400", // §3.1.2.11 headers in the Request-URI
		"invalid/insuf":      "400", // §3.3.1 missing required headers
		"invalid/inv2543":    "400", // RFC 2543 syntax; sipgo keys its transaction by From tag, which it lacks
		"invalid/invut":      forwarded,
		"invalid/ltgtruri":   "400",     // §3.1.2.7
		"invalid/lwsruri":    "400",     // §3.1.2.8
		"invalid/lwsstart":   "400",     // §3.1.2.9
		"invalid/mcl01":      "400",     // §3.3.9 multiple Content-Length
		"invalid/mismatch01": "400",     // §3.1.2.17
		"invalid/mismatch02": "400",     // §3.1.2.18
		"invalid/multi01":    "400",     // §3.3.8
		"invalid/ncl":        "400",     // §3.1.2.3
		"invalid/novelsc":    "400",     // §3.3.3: a URI the parser cannot read
		"invalid/quotbal":    "400",     // §3.1.2.6
		"invalid/regaut01":   forwarded, // §3.3.7: the registrar's to refuse (the client's Authorization is removed)
		"invalid/regbadct":   forwarded,
		"invalid/regescrt":   forwarded, // §3.3.13
		"invalid/scalar02":   "400",     // §3.1.2.4
		"invalid/scalarlg":   "dropped:unparsable",
		"invalid/sdp01":      forwarded, // §3.3.14: the UAS answers 406
		"invalid/test":       "dropped:unparsable",
		"invalid/trws":       "400",     // §3.1.2.10
		"invalid/unkscm":     "416",     // §3.3.2
		"invalid/unksm2":     forwarded, // §3.3.4
		"invalid/zeromf":     "483",     // §3.3.11
		"valid/dblreq":       forwarded, // the REGISTER; the INVITE after it in the datagram is ignored
		"valid/esc01":        forwarded,
		"valid/esc02":        forwarded,
		"valid/escnull":      forwarded,
		"valid/intmeth":      forwarded,
		"valid/longreq":      forwarded,
		"valid/lwsdisp":      forwarded,
		"valid/mpart01":      "404", // its Route names a host that is no upstream
		"valid/noreason":     "dropped:stray-response",
		"valid/semiuri":      forwarded,
		"valid/transports":   forwarded,
		"valid/unreason":     "dropped:stray-response",
		"valid/wsinv":        "400", // RFC 2543 branch; sipgo finds no From tag to key it by
	}
	files, err := filepath.Glob("testdata/rfc4475/*/*.dat")
	if err != nil || len(files) != len(want) {
		t.Fatalf("%d torture files (%v), %d expectations", len(files), err, len(want))
	}
	var notForwarded []string
	for _, file := range files {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.ToSlash(file), "testdata/rfc4475/"), ".dat")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			data = tortureForTest(data, filepath.Base(name))
			callID := tortureCallID(data)
			outcome := want[name]
			if outcome != forwarded && callID != "" {
				notForwarded = append(notForwarded, callID)
			}
			client := newUDPPeer(t, "127.0.0.1")
			reason, dropped := strings.CutPrefix(outcome, "dropped:")
			before := e.obs.discards(reason)
			client.send(t, e.udp, data)
			switch {
			case outcome == forwarded:
				sent := e.upA.next(t, "", callID)
				if bytes.Contains(sent.data, []byte("NoOneKnowsThisScheme")) {
					t.Fatalf("the client's Authorization went upstream:\n%s", sent.data)
				}
			case dropped:
				testutil.Eventually(t, "the message dropped ("+reason+")", func() bool {
					return e.obs.discards(reason) > before || client.count("SIP/2.0 ") > 0
				})
				if client.count("SIP/2.0 ") > 0 {
					t.Fatalf("answered %q", firstLine(client.next(t, "SIP/2.0 ").data))
				}
			default:
				got := client.next(t, "SIP/2.0 ")
				for strings.HasPrefix(firstLine(got.data), "SIP/2.0 100 ") {
					got = client.next(t, "SIP/2.0 ")
				}
				if line := firstLine(got.data); !strings.HasPrefix(line, "SIP/2.0 "+outcome+" ") {
					t.Fatalf("answered %q, want %s", line, outcome)
				}
			}
		})
	}
	client := newUDPPeer(t, "127.0.0.1")
	client.send(t, e.udp, request("MESSAGE", "sip:1002@pbx-a.example.com", client.addr(), "after-torture", 1))
	sent := e.upA.next(t, "MESSAGE ", "after-torture")
	e.upA.send(t, sent.src.String(), response(sent.data, "200 OK"))
	client.next(t, "SIP/2.0 200 ")
	for _, id := range notForwarded {
		if e.upA.saw(id) {
			t.Errorf("the message with Call-ID %s reached the upstream", id)
		}
	}
	if e.upA.saw("dblreq.0ha0isnda977644900765") {
		t.Error("the second request of a datagram reached the upstream")
	}
}

// tortureForTest gives a torture message's top Via rport (when the Via is
// one line) and its RFC 3261 branch a prefix naming the message (unless
// the branch is the bare magic cookie, the point of badbranch).
func tortureForTest(data []byte, name string) []byte {
	lines := bytes.Split(data, []byte("\r\n"))
	for i, l := range lines[1:] {
		n, _, ok := bytes.Cut(l, []byte(":"))
		if !ok || (!strings.EqualFold(string(bytes.TrimSpace(n)), "via") && !strings.EqualFold(string(bytes.TrimSpace(n)), "v")) {
			continue
		}
		if i+2 < len(lines) && (bytes.HasPrefix(lines[i+2], []byte(" ")) || bytes.HasPrefix(lines[i+2], []byte("\t"))) {
			break // folded
		}
		l = bytes.Replace(l, []byte("branch=z9hG4bK"), []byte("branch=z9hG4bK"+name+"."), 1)
		if strings.HasSuffix(string(l), "branch=z9hG4bK"+name+".") {
			l = l[:len(l)-len(name)-1] // badbranch: the bare cookie stays
		}
		lines[i+1] = append(l, ";rport"...)
		break
	}
	return bytes.Join(lines, []byte("\r\n"))
}

// tortureCallID returns the Call-ID of a torture message, "" if none.
func tortureCallID(data []byte) string {
	for _, l := range bytes.Split(data, []byte("\r\n"))[1:] {
		if len(l) == 0 {
			break
		}
		n, v, ok := bytes.Cut(l, []byte(":"))
		if ok && (strings.EqualFold(string(bytes.TrimSpace(n)), "call-id") || strings.EqualFold(string(bytes.TrimSpace(n)), "i")) {
			return string(bytes.TrimSpace(v))
		}
	}
	return ""
}
