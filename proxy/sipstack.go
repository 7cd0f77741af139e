package proxy

import "github.com/emiago/sipgo/sip"

// TuneSIPStack sets the process-wide settings of sipgo (package globals of
// github.com/emiago/sipgo/sip) that authproxy needs, for every user of
// sipgo in the process. The program calls it once at start, before any
// goroutine can read them (cmd/authproxy); importing this package changes
// nothing.
//
//   - UDPMTUSize: sipgo refuses UDP writes above UDPMTUSize-200 (1300
//     bytes) with ErrUDPMTUCongestion and never falls back to TCP. A
//     forwarded INVITE with SDP, our Via and an Authorization header
//     crosses that easily, so the limit is raised to what a UDP datagram
//     can carry in practice (loopback and LAN fragment fine).
//   - Timer J: a completed non-INVITE server transaction over UDP lingers
//     to answer retransmissions of its request with the same response, 64*T1
//     = 32 s in RFC 3261 §17.2.2. A client stops retransmitting once a
//     response reaches it and retransmits at most every T2 (4 s) until
//     then, so T4 (5 s) still absorbs every retransmission but those whose
//     responses were all lost: the wait Kamailio's tm module uses (wt_timer,
//     5 s) for the same reason. The fast lane's answered store keeps its
//     answers as long (laneSocket).
//   - Timers L and M: the same for INVITE transactions once a 2xx passed
//     (RFC 6026's Accepted state, both 32 s): each holds the INVITE, its SDP
//     and the 2xx, and a call setup rate of a few hundred a second kept some
//     100 MB of them. They absorb INVITE retransmissions (a client stops
//     sending them at the first 1xx) and pass the callee's 2xx
//     retransmissions on (sent until the ACK arrives, normally
//     milliseconds). Later 2xx retransmissions, after an ACK lost for 5 s,
//     are relayed statelessly by handleStrayResponse.
//   - Timer D: the same for an INVITE client transaction once a non-2xx
//     final response came (RFC 3261 §17.1.1.2: 32 s over UDP), to ACK the
//     upstream's retransmissions of it. The upstream retransmits that
//     response only while our ACK has not reached it (at T1 doubling to
//     T2), so 5 s covers every case but an ACK lost again and again, as
//     Timer K (T4) does for non-INVITE transactions. With every INVITE
//     challenged, each call's first INVITE ends this way: at 600 calls/s
//     the 32 s kept about 40 MB of INVITEs, 407s and ACKs alive, and the
//     collector's work on them was a fifth of authproxy's CPU.
func TuneSIPStack() {
	if sip.UDPMTUSize < 9000 {
		sip.UDPMTUSize = 9000
	}
	if sip.Timer_J > sip.T4 {
		sip.Timer_J = sip.T4
	}
	if sip.Timer_L > sip.T4 {
		sip.Timer_L = sip.T4
	}
	if sip.Timer_M > sip.T4 {
		sip.Timer_M = sip.T4
	}
	if sip.Timer_D > sip.T4 {
		sip.Timer_D = sip.T4
	}
}
