package config_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/config"
)

// TestReadmeTOMLBlocks parses every ```toml block of the repository README
// and of the documents in docs/, so that documentation cannot drift from
// the schema (after coredns test/readme_test.go).
//
// A block may be a fragment: when it has no [[listen]] or no [[upstream]],
// the ones of config.example.toml (127.0.0.1:5060; pbx-a, pbx-b) are
// appended. password_env variables resolve to a dummy value, and a
// password_file that does not exist is tolerated; everything else must
// validate.
func TestReadmeTOMLBlocks(t *testing.T) {
	docs, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := 0
	for _, path := range append([]string{filepath.Join("..", "README.md")}, docs...) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		name, _ := filepath.Rel("..", path)
		blocks += len(tomlBlocks(data))
		t.Run(name, func(t *testing.T) { checkMarkdownTOML(t, name, data) })
	}
	if blocks < 2 {
		t.Errorf("found %d TOML blocks in README.md and docs/, want the README's example and the group example", blocks)
	}
}

// checkMarkdownTOML runs TestReadmeTOMLBlocks' checks on one document.
func checkMarkdownTOML(t *testing.T, name string, data []byte) {
	t.Helper()
	dummyEnv := config.WithLookupEnv(func(k string) (string, bool) {
		if strings.HasPrefix(k, "AUTHPROXY_") {
			return "", false
		}
		return "readme-dummy-password", true
	})
	for _, b := range tomlBlocks(data) {
		t.Run(fmt.Sprintf("line%d", b.line), func(t *testing.T) {
			text := b.text
			if !strings.Contains(text, "[[listen]]") {
				text += "\n" + listenOK
			}
			if !strings.Contains(text, "[[client]]") {
				text += "\n[[client]]\nname = \"readme\"\nnetworks = [\"127.0.0.0/8\"]\nupstreams = [\"*\"]\n"
			}
			if !strings.Contains(text, "[[upstream]]") {
				text += "\n[[upstream]]\nname = \"pbx-a\"\naddress = \"127.0.0.2:5060\"\n" +
					"\n[[upstream]]\nname = \"pbx-b\"\naddress = \"127.0.0.3:5060\"\n"
			}
			_, err := config.Parse([]byte(text), dummyEnv, config.WithBaseDir(t.TempDir()))
			if errors.Is(err, config.ErrSyntax) {
				t.Fatalf("%s:%d: %v", name, b.line, err)
			}
			for _, fe := range fieldErrors(t, err) {
				if strings.HasSuffix(fe.Key, ".password_file") && errors.Is(fe, fs.ErrNotExist) {
					continue
				}
				t.Errorf("%s:%d: %v", name, b.line, fe)
			}
		})
	}
}

// TestCheckMarkdownTOML runs the README checks on a document with the
// kinds of blocks a README holds, so they work before README.md exists.
func TestCheckMarkdownTOML(t *testing.T) {
	example, err := os.ReadFile(filepath.Join("..", "config.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	md := "# authproxy\n\n```toml\n" + string(example) + "```\n\n" +
		"A credential from the environment:\n\n```toml\n[[credential]]\nusername = \"alice\"\n" +
		"password_env = \"PBX_A_ALICE_PASSWORD\"\nserver = \"pbx-a\"\n```\n\n" +
		"From a file:\n\n```toml\n[[credential]]\nusername = \"bob\"\npassword_file = \"/run/secrets/bob\"\n```\n\n" +
		"```toml\n[log]\nlevel = \"debug\"\n```\n"
	if n := len(tomlBlocks([]byte(md))); n != 4 {
		t.Fatalf("found %d blocks, want 4", n)
	}
	checkMarkdownTOML(t, "test.md", []byte(md))
}

type mdBlock struct {
	line int // of the opening fence, 1-based
	text string
}

// tomlBlocks returns the fenced code blocks whose info string starts with
// "toml".
func tomlBlocks(md []byte) []mdBlock {
	var (
		out    []mdBlock
		cur    *mdBlock
		fence  string
		lineNo int
	)
	sc := bufio.NewScanner(bytes.NewReader(md))
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if cur != nil {
			if trimmed == fence {
				out = append(out, *cur)
				cur = nil
				continue
			}
			cur.text += line + "\n"
			continue
		}
		for _, f := range []string{"```", "~~~"} {
			if info, ok := strings.CutPrefix(trimmed, f); ok {
				if fields := strings.Fields(info); len(fields) > 0 && fields[0] == "toml" {
					cur, fence = &mdBlock{line: lineNo}, f
				}
			}
		}
	}
	return out
}

func TestTOMLBlocks(t *testing.T) {
	md := "# x\n```toml\na = 1\n```\ntext\n```sh\nls\n```\n  ```toml title\n[log]\n  ```\n"
	got := tomlBlocks([]byte(md))
	if len(got) != 2 || got[0].line != 2 || got[0].text != "a = 1\n" || got[1].text != "[log]\n" {
		t.Errorf("tomlBlocks = %+v", got)
	}
}
