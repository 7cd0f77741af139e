package proxy

import (
	"errors"
	"testing"
)

// streamFrame makes a response datagram fit for a stream (RFC 3261
// §18.3): Content-Length added when missing, the body cut to it when
// shorter, the datagram refused when it claims more than it carries; one
// already framed is returned as it is.
func TestStreamFrame(t *testing.T) {
	const head = "SIP/2.0 200 OK\r\nCall-ID: a\r\n"
	for _, tc := range []struct {
		name, in, want string
		err            error
	}{
		{"framed", head + "Content-Length: 2\r\n\r\nhi", head + "Content-Length: 2\r\n\r\nhi", nil},
		{"compact", head + "l: 0\r\n\r\n", head + "l: 0\r\n\r\n", nil},
		{"none, no body", head + "\r\n", head + "Content-Length: 0\r\n\r\n", nil},
		{"none, a body", head + "\r\nhello", head + "Content-Length: 5\r\n\r\nhello", nil},
		{"shorter than the body", head + "Content-Length: 2\r\n\r\nhello", head + "Content-Length: 2\r\n\r\nhe", nil},
		{"longer than the body", head + "Content-Length: 9\r\n\r\nhello", "", errUnframable},
		{"unreadable length", head + "Content-Length: x\r\n\r\n", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := streamFrame(nil, []byte(tc.in))
			if tc.want == "" {
				if err == nil || (tc.err != nil && !errors.Is(err, tc.err)) {
					t.Fatalf("got %q, %v; want an error", got, err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
