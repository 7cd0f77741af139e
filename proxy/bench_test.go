package proxy

import (
	"testing"

	"github.com/icholy/digest"

	"github.com/authproxy/authproxy/credentials"
)

func BenchmarkParseChallenge(b *testing.B) {
	const v = `Digest realm="asterisk",nonce="1795659227/862816f3d556fd936076167d643f42c1",opaque="b6637de4895439625313e685e39d71df",algorithm=SHA-256,qop="auth"`
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseChallenge(v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkComputeAuthorization(b *testing.B) {
	cred := credentials.Credential{Username: "alice", Password: credentials.NewSecret("pw")}
	for _, alg := range []string{"MD5", "SHA-256", "SHA-512-256-sess"} {
		b.Run(alg, func(b *testing.B) {
			ch := challenge{Challenge: &digest.Challenge{Realm: "asterisk", Nonce: "n0nce", Opaque: "op", Algorithm: alg, QOP: []string{"auth"}}, proxy: true}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := computeAuthorization(ch, cred, "INVITE", "sip:1002@pbx-a.example.com", nil, 1, "0123456789abcdef"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
