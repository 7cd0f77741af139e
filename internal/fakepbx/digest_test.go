package fakepbx

import (
	"os/exec"
	"strings"
	"testing"
)

// The fake verifies every answer with its own digest code (DigestResponse),
// never with the library authproxy uses, so the two cannot agree on a
// mistake by construction. (sipgo itself links the library; the fake and
// its tests must not call it.)
func TestNoDigestLibraryImport(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	out, err := exec.Command(gobin, "list", "-f", "{{.Imports}} {{.TestImports}} {{.XTestImports}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	if strings.Contains(string(out), "github.com/icholy/digest") {
		t.Errorf("fakepbx imports github.com/icholy/digest: %s", out)
	}
}

// TestDigestResponse pins DigestResponse to published vectors and to values
// computed from the formulas outside Go.
//
// The RFC rows carry the values printed in RFC 7616 §3.9.1 and RFC 2617
// §3.5. The other rows (SHA-512-256, every -sess form, auth-int, and no
// qop) have no published vector; their values were computed from RFC 7616
// §3.4.1-§3.4.3's formulas with Python's hashlib (SHA-512/256 as
// hashlib.new("sha512_256")), independently of this package.
func TestDigestResponse(t *testing.T) {
	rfc7616 := DigestInput{
		Username: "Mufasa", Realm: "http-auth@example.org", Password: "Circle of Life",
		Method: "GET", URI: "/dir/index.html",
		Nonce:  "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
		Cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
		NC:     1, QOP: "auth",
	}
	rfc2617 := DigestInput{
		Username: "Mufasa", Realm: "testrealm@host.com", Password: "Circle Of Life",
		Method: "GET", URI: "/dir/index.html",
		Nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093", Cnonce: "0a4f113b", NC: 1, QOP: "auth",
	}
	sipIn := DigestInput{
		Username: "alice", Realm: "asterisk", Password: "s3cret",
		Method: "INVITE", URI: "sip:100@127.0.0.2:5060;transport=udp",
		Nonce: "1700000000/abc", Cnonce: "c0ffee", NC: 7,
		Body: []byte("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"),
	}
	with := func(in DigestInput, alg, qop string) DigestInput {
		in.Algorithm, in.QOP = alg, qop
		if qop == "" && !strings.HasSuffix(alg, "-sess") {
			in.Cnonce, in.NC = "", 0
		}
		return in
	}
	for _, tc := range []struct {
		name string
		in   DigestInput
		want string
	}{
		{"RFC 7616 §3.9.1 MD5", with(rfc7616, "MD5", "auth"), "8ca523f5e9506fed4657c9700eebdbec"},
		{"RFC 7616 §3.9.1 SHA-256", with(rfc7616, "SHA-256", "auth"), "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"},
		{"RFC 2617 §3.5", rfc2617, "6629fae49393a05397450978507c4ef1"},
		{"RFC 2617 §3.5 inputs without qop (RFC 2069)", with(rfc2617, "", ""), "670fd8c2df070c60b045671b8b24ff02"},
		{"MD5 no qop", with(sipIn, "MD5", ""), "6a7c594892a9b283f3fe13f5939cb545"},
		{"MD5 auth", with(sipIn, "MD5", "auth"), "f99e19ab1a3807a63adf38908094fa25"},
		{"MD5 auth-int", with(sipIn, "MD5", "auth-int"), "33506f9372d4fd6a750862372d3234ed"},
		{"SHA-256 no qop", with(sipIn, "SHA-256", ""), "a780f3356a1a75146aa88686d6c7e966647db64dc48810136f25366f8743b969"},
		{"SHA-256 auth", with(sipIn, "SHA-256", "auth"), "4acbf3a40b33bac9fb81497baf92dba08d639c8cc3b303c2ffeaecd10b5e8abc"},
		{"SHA-256 auth-int", with(sipIn, "SHA-256", "auth-int"), "8e71f0b83fddd40c6d5ab5a04a7c00ea51dff74fbf5c574ec477f0ccb839d4f2"},
		{"sha-256 (case-insensitive) auth", with(sipIn, "sha-256", "auth"), "4acbf3a40b33bac9fb81497baf92dba08d639c8cc3b303c2ffeaecd10b5e8abc"},
		{"SHA-512-256 no qop", with(sipIn, "SHA-512-256", ""), "7ee9d4d223d751e654e40534de3e9ae298d107ace16ceb93d922acfd5bede9fe"},
		{"SHA-512-256 auth", with(sipIn, "SHA-512-256", "auth"), "0fbf7df367a551af77f65101de9f90233fec0f4775c37f059f8d4d566ebdb459"},
		{"SHA-512-256 auth-int", with(sipIn, "SHA-512-256", "auth-int"), "60badae59e88c84804c3b83544adb1b6e455fc0e4f5527e739303c6840964572"},
		{"MD5-sess auth", with(sipIn, "MD5-sess", "auth"), "23d86045fc6d9ef402c714aa27ea80bf"},
		{"MD5-sess auth-int", with(sipIn, "MD5-sess", "auth-int"), "1eec255aa80a40086ab5b1c955217e7b"},
		{"SHA-256-sess auth", with(sipIn, "SHA-256-sess", "auth"), "7c272d7ccba786e0f1e96174bc4290b37e1248fc8730adda3433ad1ce394b867"},
		{"SHA-256-sess auth-int", with(sipIn, "SHA-256-sess", "auth-int"), "1148d20616ed01ebdf9ef403dc302c704410fb985cfb0192dbdbe12e5a639a11"},
		{"SHA-512-256-sess auth", with(sipIn, "SHA-512-256-sess", "auth"), "31c703ff01e63d7594152e30a4aa40691291013b0d7526c72b30cc68f7ceda76"},
		{"SHA-512-256-sess auth-int", with(sipIn, "SHA-512-256-sess", "auth-int"), "55d3455ca54ca12d6d959d70cd859fda65f95f8b41cb8e357e79a0e5400fc73e"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DigestResponse(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestDigestResponseRefuses(t *testing.T) {
	base := DigestInput{Username: "bob", Realm: "asterisk", Password: "pw", Method: "REGISTER", URI: "sip:127.0.0.2", Nonce: "n", Cnonce: "c", NC: 1, QOP: "auth"}
	for _, tc := range []struct {
		name string
		mut  func(*DigestInput)
	}{
		{"-sess without cnonce", func(in *DigestInput) { in.Algorithm, in.Cnonce = "SHA-256-sess", "" }},
		{"qop without cnonce", func(in *DigestInput) { in.Cnonce = "" }},
		{"unknown algorithm", func(in *DigestInput) { in.Algorithm = "SHA-1" }},
		{"unknown qop", func(in *DigestInput) { in.QOP = "auth-conf" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			tc.mut(&in)
			if got, err := DigestResponse(in); err == nil {
				t.Errorf("no error; response %s", got)
			}
		})
	}
}

func TestParseDigestParams(t *testing.T) {
	p, quoted, err := parseDigestParamsQuoting("digest  Username=\"a\\\"b\",\tREALM=\"asterisk\" ,nonce=\"1/x\",nc=00000001, qop=auth,uri=\"sip:1@h;transport=tcp\"")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"username": `a"b`, "realm": "asterisk", "nonce": "1/x", "nc": "00000001", "qop": "auth", "uri": "sip:1@h;transport=tcp"}
	for k, v := range want {
		if p[k] != v {
			t.Errorf("%s = %q, want %q", k, p[k], v)
		}
	}
	if len(p) != len(want) {
		t.Errorf("got %d params, want %d: %v", len(p), len(want), p)
	}
	for k, q := range map[string]bool{"username": true, "realm": true, "nonce": true, "uri": true, "nc": false, "qop": false} {
		if quoted[k] != q {
			t.Errorf("%s quoted = %v, want %v", k, quoted[k], q)
		}
	}

	// What authproxy sends (proxy.formatCredentials) parses back.
	p, err = ParseDigestParams(`Digest username="u", realm="r", nonce="n", uri="sip:x", algorithm=SHA-256, cnonce="c0", opaque="o", qop=auth, nc=00000001, response="ab"`)
	if err != nil {
		t.Fatal(err)
	}
	if p["response"] != "ab" || p["algorithm"] != "SHA-256" || p["nc"] != "00000001" || p["opaque"] != "o" {
		t.Errorf("parsed as %v", p)
	}

	for _, bad := range []string{
		"Basic dXNlcjpwYXNz",
		"Digestusername=\"a\"",
		"Digest username=\"a\", username=\"b\"",
		"Digest username=\"a",
		"Digest username",
		"Digest username=\"a\" realm=\"b\"",
	} {
		if _, err := ParseDigestParams(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
