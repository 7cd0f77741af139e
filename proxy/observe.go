package proxy

import "time"

// Observer is told what the proxy does, for metrics. Its methods run on the
// request path: they must be fast and safe for concurrent use. Every value
// passed is bounded and public — a method, a status, an upstream's
// configured name, a realm, an outcome word — never a username, a Call-ID
// or anything secret, so an implementation may use them as labels.
type Observer interface {
	// RequestDone reports a finished request: its method, the upstream it
	// went to ("" when it went nowhere or to a client), the final status
	// sent back (0 when none was, e.g. after a CANCEL), a one-word outcome,
	// the time from receipt to the final response, and the part of it spent
	// waiting on the next hop.
	RequestDone(method, upstream string, status int, outcome string, total, nextHop time.Duration)
	// ChallengeAnswered reports a 401/407 answered for realm; stale when the
	// upstream had marked the previous nonce stale.
	ChallengeAnswered(upstream, realm string, stale bool)
	// AuthRejected reports credentials the upstream refused: its re-challenge
	// was relayed to the client.
	AuthRejected(upstream string)
	// Refused reports a request refused before any upstream traffic
	// (RefusedReasons): "source-denied", "scope-denied",
	// "local-auth-failed", "user-blocked" (a client's user blocked from
	// its source after failed local authentications), a limit
	// ("rate-limited", "too-many-in-progress", "overloaded", "blocked",
	// "too-many-sources"), a malformed request ("bad-request",
	// "version-not-supported", "message-too-large") or a CANCEL from
	// another source than its INVITE's ("cancel-source").
	Refused(reason string)
	// Discarded reports a message dropped unanswered because of what it
	// is (DiscardedReasons): "response-source" (a response from elsewhere than where its
	// request went), "unparsable" (refused by the SIP parser, no response
	// could be built), "ack-source" (an ACK from a source that may not
	// send it), "malformed-ack", "stray-response" (a response matching no
	// request in progress, not relayed).
	Discarded(reason string)
	// RequestResent reports a request sent upstream again with answers to
	// a challenge: one call per re-send, however many realms it answers.
	RequestResent(upstream string)
	// UpstreamStateChanged reports an upstream marked up or down by the
	// OPTIONS health check (HealthCheck).
	UpstreamStateChanged(upstream string, up bool)
	// PreemptiveAuth reports a request sent with credentials before any
	// challenge (Upstream.Preemptive): accepted, or challenged anyway and
	// answered the normal way.
	PreemptiveAuth(upstream string, accepted bool)
	// Failover reports a request moved from upstream's current target to
	// the next target, or to the next upstream of its group, and why:
	// "timeout" (no response at all), "transport-error", or the status
	// code that caused it ("503", or one of the group's list).
	Failover(upstream, reason string)
}

// RefusedReasons are every reason Observer.Refused reports, so that a
// metrics implementation can start each count at zero.
var RefusedReasons = []string{
	"source-denied", "scope-denied", "local-auth-failed", "user-blocked",
	string(limitRate), string(limitConcurrent), string(limitTotal), string(limitBlocked), string(limitSources),
	"bad-request", "version-not-supported", "unsupported-uri-scheme", "message-too-large", "cancel-source",
}

// DiscardedReasons are every reason Observer.Discarded reports.
var DiscardedReasons = []string{"response-source", "unparsable", "ack-source", "malformed-ack", "stray-response"}

// AuthFailureOutcomes are the RequestDone outcomes that mean the upstream
// challenged and authproxy could not get the request accepted (besides
// AuthRejected: credentials refused).
var AuthFailureOutcomes = []string{
	"challenge-limit",     // max_challenges rounds spent
	"no-usable-challenge", // no credential/algorithm could answer
	"no-challenge",        // a 401/407 without a parsable challenge
}

// noObserver is the Observer used when Config.Observer is nil.
type noObserver struct{}

func (noObserver) RequestDone(string, string, int, string, time.Duration, time.Duration) {}
func (noObserver) ChallengeAnswered(string, string, bool)                                {}
func (noObserver) AuthRejected(string)                                                   {}
func (noObserver) Refused(string)                                                        {}
func (noObserver) Discarded(string)                                                      {}
func (noObserver) RequestResent(string)                                                  {}
func (noObserver) UpstreamStateChanged(string, bool)                                     {}
func (noObserver) PreemptiveAuth(string, bool)                                           {}
func (noObserver) Failover(string, string)                                               {}

// InFlight returns the number of requests being handled now.
func (p *Proxy) InFlight() int { return p.flight.count() }
