// Package proxy is authproxy's SIP core: it serves password-less clients,
// forwards their requests statefully to configured upstreams, answers the
// upstreams' 401/407 digest challenges with credentials chosen by upstream,
// realm and SIP user, and keeps every later request of the dialog
// consistent with what the upstream has seen.
//
// # One call, end to end
//
// Phone 1001 calls 1002 on pbx-a, which challenges INVITE and BYE with
// 407. CSeq numbers on each side (the phone's, then the upstream's):
//
//	phone                      authproxy                         pbx-a
//	INVITE   CSeq 1  ───────►  clone, Via+RR, Max-Forwards-1 ──►  INVITE  CSeq 1
//	                           ◄── 407 Proxy-Authenticate ──────  407     CSeq 1
//	                           (sipgo ACKs the 407, same branch)─►  ACK     CSeq 1
//	                           pick credential (pbx-a, realm, 1001),
//	                           new branch, CSeq+1, offset=1 ─────►  INVITE  CSeq 2 + Proxy-Authorization
//	180      CSeq 1  ◄───────  our Via off, CSeq back to 1 ◄────  180     CSeq 2
//	200      CSeq 1  ◄───────  dialog recorded (tags, upstream,  ◄  200     CSeq 2
//	                           client address, credentials)
//	ACK      CSeq 1  ───────►  own Route off, offset +1,
//	                           the INVITE's Proxy-Authorization ─►  ACK     CSeq 2
//	BYE      CSeq 2  ───────►  offset +1 ────────────────────────►  BYE     CSeq 3
//	                           ◄── 407 (in-dialog challenge) ────  407     CSeq 3
//	                           answered, CSeq+1, offset=2 ───────►  BYE     CSeq 4 + Proxy-Authorization
//	200      CSeq 2  ◄───────  CSeq back to 2, dialog removed ◄──  200     CSeq 4
//
// The offset lives per Call-ID and From tag (the client's CSeq space), so
// it also shifts REGISTER refreshes, re-INVITEs, PRACK and the CSeq inside
// its RAck. Requests the upstream sends into the dialog (a callee BYE, a
// re-INVITE) keep their own numbering and go to where the client's INVITE
// came from. A CANCEL from the phone cancels the INVITE authproxy has
// outstanding (CSeq 2 and its branch above), once that INVITE had a
// provisional response (RFC 3261 §9.1).
//
// # Registrations and calls toward clients
//
// A client's REGISTER goes upstream with a Path naming authproxy (or, per
// upstream, its Contact rewritten to an alias at authproxy); the 2xx
// creates a binding from the registered contact to where the REGISTER came
// from (registrar.go). A request from a configured upstream's address to a
// bound contact goes to that address, an INVITE Record-Routed and its
// dialog recorded with the client's tag in the "caller" slot of dialogKey,
// so both directions route as for calls the client placed. Trunk
// registrations authproxy keeps itself run in registration.go; requests to
// their contact go to a configured local target the same way.
//
// # Upstream names, targets and failover
//
// An upstream's address may be an IP, a host:port or a domain resolved
// NAPTR → SRV → A/AAAA (RFC 3263); proxy/resolve resolves and caches the
// names, refreshed in the background from start and on reload, and sipgo
// is given only IP:port destinations (targets.go). A request tries its
// upstream's targets in order (SRV priority and weight, targets marked
// down last, none of a family authproxy does not listen on) and moves to
// the next one as a new client transaction after no response at all
// (FailoverTimeout while another remains), a transport error or a 503;
// any provisional response but 100 ends that for an INVITE (failover.go).
// A dialog keeps the target that answered its INVITE, and accepts
// requests from the upstream side only from that address and the
// upstream's AcceptFrom prefixes (dialog.go, sources.go).
//
// An upstream group (groups.go) is an ordered list of upstreams routed to
// as one: when an upstream is unreachable or answers a status of the
// group's FailoverOn list, the request is retried on the next. The rule
// that holds it safe: credentials never cross upstreams. The answers
// computed for one upstream are dropped before the next is tried, the
// next one's challenges are answered with a credential looked up for its
// own server identity (its configured address, never a resolved IP), and a
// client group must allow an upstream for it to be tried at all. FuzzHandle
// holds this invariant across failover.
//
// # Where each concern lives
//
// The request's story is forward.go: handle, begin (shutdown, limits),
// prepare, send and relay, end. Each step has its own file:
//
//   - checks and admission: validate.go (§16.3 step 1), admission.go
//     (check, mayRoute, admit, refuse), access.go (client groups, local
//     digest auth), limits.go;
//   - routing and targets: route.go, targets.go, groups.go, failover.go,
//     sources.go, tlsconn.go, tcpconn.go, handover.go, tls.go, proxy/resolve;
//   - building the forwarded request: build.go (buildForward, the
//     forwardEdits both paths share, Record-Route, RAck), rawsip.go (the
//     same edits in bytes);
//   - sending and relaying: exchange.go (non-INVITE), invite.go (INVITE,
//     Timer C, CANCEL races), relay.go (responses back, local answers, the
//     log line), stray.go (after the transactions ended), ack.go, cancel.go;
//   - answering challenges: challenge.go (parsing, answer), auth.go
//     (digest responses, nonce counts), preemptive.go;
//   - dialog and CSeq state: dialog.go, cseq.go;
//   - registrations: registrar.go (clients registering through authproxy),
//     bindingtable.go (their contacts), registration.go (trunk
//     registrations authproxy keeps itself);
//   - health: health.go, healthstate.go;
//   - sockets, hostile input and the fast lane: listeners.go, udpsocket.go,
//     udpworkers.go, pinning.go, ingress.go, tcpguard, fastlane.go
//     (fastlane_dialog.go, fastlane_ack.go), litetx.go, answered.go;
//   - configuration and wiring: config.go, proxy.go, bind.go (the
//     listeners' sockets), inflight.go (the shutdown drain), sipstack.go;
//   - logs and metrics: sipgolog.go, unparsable.go, throttle.go, lazylog.go,
//     trace.go, observe.go; shared header helpers: headers.go.
//
// # What sipgo does and what this package does
//
// sipgo v1.7.3 provides the transports, the parser and the transaction
// state machines (retransmissions, the ACK for non-2xx finals, 100 Trying
// and the 487 after a CANCEL). This package writes the proxy logic on top:
// routing to configured upstreams only, RFC 3261 §16 checks, the challenge
// answers (icholy/digest computes the responses; challenges are parsed
// here), the CSeq offsets, the dialog table, the CANCEL builder, Timer C,
// and the relay of 2xx retransmissions and forked 2xx, which sipgo hands
// only to an OnRetransmission hook.
//
// # Hostile input
//
// Anyone who can reach a listener can send anything. Responses are
// believed only from where their request went: each request authproxy
// sends is pinned, by the branch of its Via, to its transport and
// destination (pinning.go). authproxy owns its listeners' sockets and
// reads every datagram before sipgo does (udpsocket.go): one carrying a
// pinned branch from elsewhere is dropped before anything parses it
// (ingress.go). Over TCP and TLS the connection guard shows each complete
// message to the same checks before sipgo reads it (tcpguard's Inspect,
// inspectStream). A CANCEL is obeyed only from its INVITE's source
// (cancel.go: refused at the socket or the guard, since sipgo answers a
// matching CANCEL before any handler runs), the ACK for a 2xx only from
// the dialog's client. Requests go through RFC 3261 §16.3 step 1's
// checks before routing (validate.go: 400 naming the fault, 505, 416,
// 513); what sipgo's parser refuses reaches authproxy only as a log record,
// which the handler wrapping sipgo's loggers redacts, cuts short, throttles
// and hands on to be answered 400 (sipgolog.go, unparsable.go).
//
// # The fast lane
//
// Out-of-dialog requests that create no dialog and are no REGISTER
// (MESSAGE, OPTIONS, PUBLISH), received over UDP, never reach sipgo
// (fastlane.go): the UDP listener's socket, which authproxy reads for
// sipgo (udpsocket.go), parses such a request itself, and on that
// goroutine runs the same checks, routing, admission and preemptive
// answer as every request (forwarding.check), sends it with our Via from
// the same socket and returns: as the client's datagram with authproxy's
// edits made in its bytes (rawsip.go), or else as a parsed copy. The
// goroutine that reads the upstream's response finds the request by our
// branch and relays it, as bytes with our Via cut out unless it is a
// challenge or unusual, which it parses. The client's retransmissions
// stand in for Timer E (each is sent on at once), one sweeper for Timer
// F, and the final response's bytes, kept by the socket (answered.go),
// answer later retransmissions (liteTx). The same requests from TCP and
// TLS clients are offered to the lane by the connection guard (tcpguard's
// Divert, fastlane_stream.go) and answered on their connection (streamTx);
// the lane retransmits those toward the UDP upstream itself (Timer E).
// WebSocket clients keep sipgo's transactions. A UDP client's initial
// INVITE gets a server transaction of the lane's (invitetx.go: no
// goroutine or timer, its timers run by the lane's sweeper) and is
// forwarded on the lane too toward a UDP target (fastlane_invite.go:
// Timers A and C, the ACK for each non-2xx final, its challenge, CANCEL,
// 2xx and forks). A failover, or a next hop
// over TCP or TLS, hands the request to a goroutine that continues the usual way with
// a sipgo client transaction. It exists for latency: at 3,500 requests a
// second on two shared cores, the goroutines, FSMs, timers and channels of
// two transactions per request are what authproxy would add to the tail
// (docs/performance.md, "The fast lane").
package proxy
