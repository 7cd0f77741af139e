package repocheck

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docs/claims.md lists every behavioural promise of README.md and docs/
// with the tests that prove it, one table row per claim:
//
//	| claim | [where it is promised](README.md#anchor) | `pkg/path.TestName`, `pkg/path.TestName/subtest` |
//
// TestClaims fails when a row lists no test, names a test that does not
// exist (as func TestX, FuzzX or BenchmarkX in a _test.go file of the
// package directory named; for a subtest, its parent), or points at a
// document or heading that does not exist.

// minClaims keeps the check from passing on a claims file that lost its
// rows: the README and docs make well over this many promises.
const minClaims = 200

// claim is one row of the claims table.
type claim struct {
	line  int
	text  string
	where []string // link targets, relative to docs/
	tests []testRef
}

// testRef names a test: the package directory relative to the module
// root, the top-level function, and the subtest path if any.
type testRef struct {
	dir, fn, sub string
}

func (r testRef) String() string {
	s := r.dir + "." + r.fn
	if r.sub != "" {
		s += "/" + r.sub
	}
	return s
}

var (
	linkTarget = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	testName   = regexp.MustCompile("`([a-z][a-z0-9_/]*)\\.((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)(?:/([^`]+))?`")
	tableSep   = regexp.MustCompile(`^\|[\s:|-]+\|$`)
)

// parseClaims reads the rows of every table in md whose header's first
// cell is "claim". A row that is not three cells is an error.
func parseClaims(md []byte) ([]claim, []error) {
	var (
		out   []claim
		errs  []error
		inTab bool
	)
	sc := bufio.NewScanner(bytes.NewReader(md))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "|") {
			inTab = false
			continue
		}
		cells := splitRow(line)
		switch {
		case len(cells) > 0 && strings.EqualFold(cells[0], "claim"):
			inTab = true
			continue
		case !inTab || tableSep.MatchString(line):
			continue
		case len(cells) != 3:
			errs = append(errs, fmt.Errorf("claims.md:%d: a claim row has 3 cells (claim, where, tests), this one %d", n, len(cells)))
			continue
		}
		c := claim{line: n, text: cells[0]}
		for _, m := range linkTarget.FindAllStringSubmatch(cells[1], -1) {
			c.where = append(c.where, m[1])
		}
		for _, m := range testName.FindAllStringSubmatch(cells[2], -1) {
			c.tests = append(c.tests, testRef{dir: m[1], fn: m[2], sub: m[3]})
		}
		out = append(out, c)
	}
	return out, errs
}

// splitRow splits a markdown table row into trimmed cells; a `|` inside
// backticks does not split.
func splitRow(line string) []string {
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	var (
		cells []string
		cur   strings.Builder
		code  bool
	)
	for _, r := range line {
		switch {
		case r == '`':
			code = !code
		case r == '|' && !code:
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
			continue
		}
		cur.WriteRune(r)
	}
	return append(cells, strings.TrimSpace(cur.String()))
}

// slug is the anchor GitHub gives a heading.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		case r > 127:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors returns the heading anchors of a markdown document.
func anchors(md []byte) map[string]bool {
	out := map[string]bool{}
	fence := false
	sc := bufio.NewScanner(bytes.NewReader(md))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			fence = !fence
		}
		if fence || !strings.HasPrefix(line, "#") {
			continue
		}
		out[slug(strings.TrimLeft(line, "#"))] = true
	}
	return out
}

// testFuncs returns the names of the Test, Fuzz and Benchmark functions
// declared in the _test.go files of dir.
func testFuncs(dir string) (map[string]bool, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		return nil, err
	}
	decl := regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)\(`)
	out := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, m := range decl.FindAllSubmatch(data, -1) {
			out[string(m[1])] = true
		}
	}
	return out, nil
}

// checkClaims returns every fault of the claims: a row without a test, a
// test or document that does not exist.
func checkClaims(root string, claims []claim) []error {
	var errs []error
	funcs := map[string]map[string]bool{}
	docs := map[string]map[string]bool{}
	for _, c := range claims {
		at := fmt.Sprintf("claims.md:%d", c.line)
		if len(c.tests) == 0 {
			errs = append(errs, fmt.Errorf("%s: %q lists no test", at, c.text))
		}
		if len(c.where) == 0 {
			errs = append(errs, fmt.Errorf("%s: %q says not where it is promised", at, c.text))
		}
		for _, w := range c.where {
			file, anchor, _ := strings.Cut(w, "#")
			path := filepath.Clean(filepath.Join(root, "docs", file))
			a, ok := docs[path]
			if !ok {
				data, err := os.ReadFile(path)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %s: %w", at, w, err))
					docs[path] = nil
					continue
				}
				a = anchors(data)
				docs[path] = a
			}
			if a != nil && anchor != "" && !a[anchor] {
				errs = append(errs, fmt.Errorf("%s: %s: no heading with anchor #%s", at, w, anchor))
			}
		}
		for _, r := range c.tests {
			fs, ok := funcs[r.dir]
			if !ok {
				var err error
				fs, err = testFuncs(filepath.Join(root, filepath.FromSlash(r.dir)))
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %s: %w", at, r, err))
				}
				funcs[r.dir] = fs
			}
			if !fs[r.fn] {
				errs = append(errs, fmt.Errorf("%s: %s: no func %s in %s/*_test.go", at, r, r.fn, r.dir))
			}
		}
	}
	return errs
}

func TestClaims(t *testing.T) {
	root := filepath.Join("..", "..")
	md, err := os.ReadFile(filepath.Join(root, "docs", "claims.md"))
	if err != nil {
		t.Fatal(err)
	}
	claims, errs := parseClaims(md)
	errs = append(errs, checkClaims(root, claims)...)
	for _, err := range errs {
		t.Error(err)
	}
	if len(claims) < minClaims {
		t.Errorf("docs/claims.md has %d claims, want at least %d", len(claims), minClaims)
	}
	tests := map[string]bool{}
	for _, c := range claims {
		for _, r := range c.tests {
			tests[r.dir+"."+r.fn] = true
		}
	}
	t.Logf("%d claims proven by %d test functions", len(claims), len(tests))
}

// TestClaimsCheckFails feeds the check the faults it must find, so that it
// cannot pass by finding nothing.
func TestClaimsCheckFails(t *testing.T) {
	root := t.TempDir()
	for name, text := range map[string]string{
		"docs/guide.md":     "# Guide\n\n## Who may use it\n\ntext\n",
		"pkg/a_test.go":     "package pkg\n\nfunc TestReal(t *testing.T) {}\nfunc FuzzReal(f *testing.F) {}\n",
		"pkg/sub/b_test.go": "package sub\n\nfunc BenchmarkReal(b *testing.B) {}\n",
	} {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	md := "# Claims\n\n| claim | where | tests |\n|---|---|---|\n" +
		"| good | [g](guide.md#who-may-use-it) | `pkg.TestReal/some case`, `pkg.FuzzReal`, `pkg/sub.BenchmarkReal` |\n" +
		"| no test | [g](guide.md#who-may-use-it) | none yet |\n" +
		"| missing test | [g](guide.md) | `pkg.TestGone` |\n" +
		"| missing parent | [g](guide.md) | `pkg.TestGone/sub` |\n" +
		"| wrong package | [g](guide.md) | `pkg/sub.TestReal` |\n" +
		"| missing anchor | [g](guide.md#nowhere) | `pkg.TestReal` |\n" +
		"| missing doc | [g](gone.md) | `pkg.TestReal` |\n" +
		"| nowhere | guide | `pkg.TestReal` |\n" +
		"| two cells | `pkg.TestReal` |\n" +
		"\nnot a table | `pkg.TestGone` |\n"
	claims, errs := parseClaims([]byte(md))
	errs = append(errs, checkClaims(root, claims)...)
	if len(claims) != 8 {
		t.Errorf("parsed %d claims, want 8", len(claims))
	}
	var got []string
	for _, err := range errs {
		got = append(got, err.Error())
	}
	for _, want := range []string{
		`claims.md:6: "no test" lists no test`,
		"claims.md:7: pkg.TestGone: no func TestGone",
		"claims.md:8: pkg.TestGone/sub: no func TestGone",
		"claims.md:9: pkg/sub.TestReal: no func TestReal",
		"claims.md:10: guide.md#nowhere: no heading",
		"claims.md:11: gone.md:",
		`claims.md:12: "nowhere" says not where`,
		"claims.md:13: a claim row has 3 cells",
	} {
		found := false
		for _, g := range got {
			found = found || strings.HasPrefix(g, want)
		}
		if !found {
			t.Errorf("no error %q among:\n%s", want, strings.Join(got, "\n"))
		}
	}
	if len(errs) != 8 {
		t.Errorf("%d errors, want 8:\n%s", len(errs), strings.Join(got, "\n"))
	}
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"Health, readiness and status":                          "health-readiness-and-status",
		" TCP and TLS connections":                              "tcp-and-tls-connections",
		"Responses from elsewhere (`pinning.go`, `ingress.go`)": "responses-from-elsewhere-pinninggo-ingressgo",
		"sipgo's logs (`sipgolog.go`)":                          "sipgos-logs-sipgologgo",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}
