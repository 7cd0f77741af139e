package proxy

import (
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// newTestInviteTx is an inviteTx of a parsed INVITE whose responses go
// from a loopback socket to another, registered in a table of its own.
func newTestInviteTx(t *testing.T) (*inviteTx, *inviteTable) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	sink, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	s := &laneSocket{PacketConn: pc, p: &Proxy{log: slog.New(slog.DiscardHandler)}}
	inv, _ := clientInvite(t, "UDP")
	key, _ := serverTxKey(inv)
	tbl := newInviteTable()
	tx := newInviteTx(tbl, key, inv, s, addrPortOf(sink.LocalAddr()), time.Now())
	if tbl.claim(tx) != nil {
		t.Fatal("a new table has the key")
	}
	return tx, tbl
}

// The responses an INVITE server transaction sends and refuses in each
// state (RFC 3261 §17.2.1, RFC 6026 §7.1): provisional responses until a
// final one; 2xx again and again once Accepted; one non-2xx final, after
// which neither a 2xx nor another final goes; after the client's CANCEL,
// a 2xx is refused with sip.ErrTransactionCanceled.
func TestInviteTxRespond(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cancel bool
		codes  []int
		want   []error // per code; nil: sent
	}{
		{"provisional then 2xx twice", false, []int{180, 183, 200, 200}, []error{nil, nil, nil, nil}},
		{"non-2xx then anything", false, []int{180, 486, 200, 486, 180}, []error{nil, nil, errInviteTxFinal, errInviteTxFinal, errInviteTxFinal}},
		{"2xx then non-2xx", false, []int{200, 500, 180}, []error{nil, errInviteTxFinal, errInviteTxFinal}},
		{"cancelled", true, []int{200, 487, 180}, []error{sip.ErrTransactionCanceled, sip.ErrTransactionCanceled, sip.ErrTransactionCanceled}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, tbl := newTestInviteTx(t)
			fired := false
			if !tx.OnCancel(func(*sip.Request) { fired = true }) {
				t.Fatal("OnCancel refused a hook on a new transaction")
			}
			if tc.cancel {
				_, cancel := clientInvite(t, "UDP")
				tx.cancel(cancel)
				if !fired || !errors.Is(tx.Err(), sip.ErrTransactionCanceled) || tx.OnCancel(func(*sip.Request) {}) {
					t.Fatalf("after CANCEL: hook ran %v, Err %v, OnCancel still takes hooks", fired, tx.Err())
				}
			}
			for i, code := range tc.codes {
				res := sip.NewResponseFromRequest(tx.req, code, "", nil)
				if err := tx.Respond(res); !errors.Is(err, tc.want[i]) {
					t.Errorf("Respond(%d) = %v, want %v", code, err, tc.want[i])
				}
			}
			tx.Terminate()
			if tbl.len() != 0 || tx.Respond(sip.NewResponseFromRequest(tx.req, 200, "", nil)) == nil {
				t.Error("a terminated transaction stays in its table or still responds")
			}
		})
	}
}
