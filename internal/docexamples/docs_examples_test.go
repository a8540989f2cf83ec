// Package docexamples holds TestDocumentationExamples: it runs the marked
// shell examples of README.md and docs/*.md against a userd built from the
// tree. A package of its own, so that its minutes count against no other
// package's test timeout.
package docexamples

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/userdproc"
)

// docBlock is a shell example of the documentation that the documentation
// test runs: a ```sh block right after a line <!-- test: run -->.
type docBlock struct {
	file    string // relative to the repository
	line    int    // of the opening fence
	heading string // the section it is in
	code    string
}

func (b docBlock) String() string { return fmt.Sprintf("%s:%d (%s)", b.file, b.line, b.heading) }

// runMarker marks the next fenced block as one the test runs.
var runMarker = regexp.MustCompile(`^<!--\s*test:\s*run\s*-->\s*$`)

// docFiles are the documents whose marked blocks run, in the order a
// reader meets them: README.md, then docs/*.md by name.
func docFiles(root string) ([]string, error) {
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	sort.Strings(docs)
	files := []string{"README.md"}
	for _, d := range docs {
		rel, err := filepath.Rel(root, d)
		if err != nil {
			return nil, err
		}
		files = append(files, rel)
	}
	return files, nil
}

// extractBlocks returns the marked blocks of one markdown document. A
// marker not followed by a ```sh or ```bash block is an error, so a marker
// cannot silently stop covering its example.
func extractBlocks(file string, md []byte) ([]docBlock, error) {
	var (
		blocks  []docBlock
		heading string
		marked  = 0 // line of a pending marker
		cur     *docBlock
		body    strings.Builder
	)
	sc := bufio.NewScanner(bytes.NewReader(md))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur != nil:
			if strings.TrimSpace(line) == "```" {
				cur.code = body.String()
				blocks = append(blocks, *cur)
				cur = nil
				continue
			}
			body.WriteString(line + "\n")
		case runMarker.MatchString(line):
			if marked != 0 {
				return nil, fmt.Errorf("%s:%d: a run marker follows the one of line %d without a block between", file, n, marked)
			}
			marked = n
		case marked != 0 && strings.TrimSpace(line) == "":
		case marked != 0:
			if fence := strings.TrimSpace(line); fence != "```sh" && fence != "```bash" {
				return nil, fmt.Errorf("%s:%d: the run marker is followed by %q, not a ```sh block", file, marked, line)
			}
			cur = &docBlock{file: file, line: n, heading: heading}
			body.Reset()
			marked = 0
		case strings.HasPrefix(line, "#"):
			heading = strings.TrimSpace(strings.TrimLeft(line, "#"))
		}
	}
	switch {
	case cur != nil:
		return nil, fmt.Errorf("%s:%d: the marked block is not closed", file, cur.line)
	case marked != 0:
		return nil, fmt.Errorf("%s:%d: the run marker is followed by no block", file, marked)
	}
	return blocks, sc.Err()
}

func TestExtractBlocks(t *testing.T) {
	t.Parallel()
	md := "# A\n\n<!-- test: run -->\n```sh\necho one\n```\n\n```sh\nnot marked\n```\n## B\n<!-- test: run -->\n\n```bash\necho two\necho three\n```\n"
	blocks, err := extractBlocks("x.md", []byte(md))
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 || blocks[0].code != "echo one\n" || blocks[0].heading != "A" || blocks[0].line != 4 ||
		blocks[1].code != "echo two\necho three\n" || blocks[1].heading != "B" {
		t.Errorf("blocks = %+v", blocks)
	}
	for _, bad := range []string{
		"<!-- test: run -->\n```go\nx\n```\n",
		"<!-- test: run -->\ntext\n```sh\nx\n```\n",
		"<!-- test: run -->\n",
		"<!-- test: run -->\n```sh\nx\n",
		"<!-- test: run -->\n<!-- test: run -->\n```sh\nx\n```\n",
	} {
		if _, err := extractBlocks("x.md", []byte(bad)); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

// replayed matches a response that reports a replayed write: JSON (grpcurl,
// curl, userctl --json) or userctl's table.
var replayed = regexp.MustCompile(`"replayed":\s*true|(?m)^REPLAYED:`)

// makeDefault reads a variable's default (NAME ?= value) from the Makefile,
// so that the test runs with the development credentials make run uses.
func makeDefault(t *testing.T, makefile []byte, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + `\s*\?=\s*(\S+)\s*$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatalf("the Makefile sets no default for %s", name)
	}
	return string(m[1])
}

// docPrelude stands in for the make targets the examples call: the test
// built bin/ already, and `make demo-webhook` runs what the Makefile runs.
const docPrelude = `make() {
  local target=$1 args="" a
  shift
  for a in "$@"; do
    case $a in
      ARGS=*) args=${a#ARGS=} ;;
      *) echo "make: $a is not supported by the documentation test" >&2; return 2 ;;
    esac
  done
  case $target in
    demo-webhook) eval "bin/userd send-clerk-event --url http://localhost:8081/webhooks/clerk $args" ;;
    build|grpcurl) ;;
    *) echo "make $target: not run by the documentation test" >&2; return 2 ;;
  esac
}
`

// TestDocumentationExamples runs every marked shell example of README.md
// and docs/*.md, in order, against one userd built from this tree (on a
// fresh database, with make run's development credentials), the way a
// reader pastes them into a terminal: each block in its own bash with
// `set -euo pipefail`, in a directory whose bin/ holds userd, userctl and
// the pinned grpcurl. The documented addresses (localhost:9090, :8080,
// :8081, :9091) are rewritten to the test's ports. A block fails the test
// when a command fails, or when a response reports a replayed write: the
// examples must not reuse each other's idempotency keys.
func TestDocumentationExamples(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	files, err := docFiles(root)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []docBlock
	for _, f := range files {
		md, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		bs, err := extractBlocks(f, md)
		if err != nil {
			t.Fatal(err)
		}
		blocks = append(blocks, bs...)
	}
	if len(blocks) == 0 {
		t.Fatal("no documentation block is marked <!-- test: run -->")
	}

	work := t.TempDir()
	binDir := filepath.Join(work, "bin")
	build := func(dir, out, pkg string) {
		t.Helper()
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, out), pkg)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	build(root, "userd", "./cmd/userd")
	build(root, "userctl", "./cmd/userctl")
	build(filepath.Join(root, "tools"), "grpcurl", "github.com/fullstorydev/grpcurl/cmd/grpcurl")

	makefile, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	secret := makeDefault(t, makefile, "CLERK_WEBHOOK_SECRET")
	tokens := makeDefault(t, makefile, "USERD_SERVICE_TOKENS")
	proc, err := userdproc.Start(context.Background(), userdproc.Config{
		Bin: filepath.Join(binDir, "userd"),
		Env: []string{"DATABASE_URL=" + testdb.EmptyURL(t), "USERD_DATA_DIR=" + t.TempDir(),
			"CLERK_WEBHOOK_SECRET=" + secret, "USERD_SERVICE_TOKENS=" + tokens, "USERD_LOG_FORMAT=text"},
	}, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Stop(syscall.SIGTERM, 30*time.Second) })
	ep := proc.Addrs
	ports := strings.NewReplacer(
		"localhost:9090", ep.GRPC, "localhost:8080", ep.HTTP,
		"localhost:8081", ep.Webhook, "localhost:9091", ep.Ops,
	)
	// The environment a reader's terminal would have: none of userd's
	// own settings, and the Makefile's secret exported as make does.
	env := []string{"HOME=" + work, "TMPDIR=" + work, "PATH=" + os.Getenv("PATH"), "CLERK_WEBHOOK_SECRET=" + secret}

	for _, b := range blocks {
		script := "set -euo pipefail\n" + ports.Replace(docPrelude+b.code)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-c", script)
		cmd.Dir, cmd.Env = work, env
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s: %v\n--- block ---\n%s--- output ---\n%s", b, err, b.code, out)
			continue
		}
		if loc := replayed.FindIndex(out); loc != nil {
			t.Errorf("%s: a write was a replay (an idempotency key used twice):\n--- block ---\n%s--- output ---\n%s",
				b, b.code, out)
			continue
		}
		t.Logf("%s: ok\n%s", b, out)
	}
	if t.Failed() {
		t.Logf("userd's log:\n%s", proc.Logs())
	}
}
