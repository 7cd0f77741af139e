// Package peers runs authproxy's binary, real SIP peers (Kamailio, SIPp)
// and a DNS server (dnsmasq) on loopback addresses: the one launcher of the
// interop tests (../../e2e) and the load tests (../../bench).
//
// Everything here is test support: functions take a testing.TB, call
// t.Helper, put their files under t.TempDir and stop what they started in
// t.Cleanup. Nothing sends traffic off the machine: every address a helper
// binds or dials must be a literal loopback address, in 127.0.0.0/8 or ::1
// (the e2e tests run Kamailio and SIPp on both). Linux routes all of
// 127.0.0.0/8 to lo, so each peer can have an address of its own
// (127.0.0.2 for one PBX, 127.0.0.3 for the next, ...).
//
// The pieces:
//
//   - Require skips a test (or, when CI=true, fails it) if a peer binary is
//     missing; Missing and InstallHint serve installers such as TestMain.
//   - FreePort finds a port free for both UDP and TCP on a loopback host.
//   - StartKamailio runs Kamailio 5.6 as a registrar/UAS that challenges
//     like an Asterisk PBX: 401 for REGISTER, 407 for everything else, in one
//     realm ("asterisk" by default), with plain-text users rendered into a
//     generated kamailio.cfg. It logs one PEERS| line per auth decision;
//     Events, AuthUsernames and SeenUsernames read them back, so a test can
//     assert which credentials reached which server. With RelayTo it is a
//     PBX trunk instead: it challenges the initial INVITE, then
//     Record-Routes and relays it to a UAS, relays the dialog's ACK, BYE
//     and CANCEL (logging each), and can challenge the caller's BYE too.
//     Two lean modes serve the load tests (KamailioMode): KamailioLoadTrunk,
//     a stateless challenging trunk that logs nothing per request, and
//     KamailioUACProxy, Kamailio as the credential-injecting proxy
//     (uac_auth) authproxy is measured against.
//   - BuildAuthproxy builds ./cmd/authproxy once per test binary (with -race
//     when the tests run with it); StartAuthproxy runs it from configuration
//     text and returns once it is ready.
//   - RunSipp runs one SIPp scenario to completion and returns its exit
//     status, call counters and message trace. StartSipp runs one in the
//     background, typically the UAS behind a relaying Kamailio, and Wait
//     collects the same result.
//   - StartDnsmasq runs dnsmasq as a local DNS server with the A/AAAA, SRV
//     and NAPTR records a test gives it, reading no system configuration
//     and forwarding nothing, for RFC 3263 resolution tests.
//   - StartProcess runs any daemon in a process group of its own with its
//     output captured (and, on request, a pipe to its stdin), stopping it
//     with SIGTERM and then SIGKILL, or killing it at once (Kill, SIGKILL to
//     the group: a crash, for fault tests); StartAuthproxy and the e2e
//     baresip runner use it too. Kamailio.Kill crashes a Kamailio, which starts
//     again from the same KamailioConfig.
//   - UDPExchange sends one hand-written SIP request and returns the answer,
//     for tests that need a client SIPp cannot be (SIPp digests MD5 only);
//     WaitSIP waits until a daemon answers SIP on a UDP address.
package peers
