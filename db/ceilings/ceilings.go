// Package ceilings holds the pgbench scripts `make bench` (cmd/userd-bench)
// compares userd with: for each operation, the best SQL a hand-tuned
// implementation would send for the same semantics, one statement where SQL
// allows it. Each <operation>.sql starts with a comment saying what the
// statement does and which guarantees it keeps; ceilings_test.go runs every
// script once against a freshly migrated database, so a schema change that
// breaks a ceiling fails the test suite instead of the next benchmark.
//
// The scripts use pgbench's variables: :client_id (pgbench's own), :users
// (passed with -D: the users userd-bench seeded, user_bench0 ..
// user_bench<users-1>) and what their \set lines draw: :n (a seeded user)
// and :k (a random number that makes keys and ids fresh).
package ceilings

import (
	"embed"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
)

//go:embed *.sql
var files embed.FS

// Script is one ceiling.
type Script struct {
	// Name is the operation, the file name without .sql.
	Name string
	// Doc is the header comment, without the comment markers.
	Doc string
	// Text is the whole file, as pgbench runs it.
	Text string
}

// All returns every ceiling, by name.
func All() ([]Script, error) {
	paths, err := fs.Glob(files, "*.sql")
	if err != nil {
		return nil, err
	}
	out := make([]Script, 0, len(paths))
	for _, p := range paths {
		b, err := files.ReadFile(p)
		if err != nil {
			return nil, err
		}
		s := Script{Name: strings.TrimSuffix(p, ".sql"), Text: string(b)}
		var doc []string
		for _, line := range strings.Split(s.Text, "\n") {
			c, ok := strings.CutPrefix(line, "--")
			if !ok {
				break
			}
			doc = append(doc, strings.TrimSpace(c))
		}
		s.Doc = strings.Join(doc, "\n")
		out = append(out, s)
	}
	return out, nil
}

// SQL returns the script's SQL commands, without comments and pgbench's
// meta-commands (\set and the like), each ending in its semicolon.
func (s Script) SQL() []string {
	var (
		cmds []string
		cur  []string
	)
	for _, line := range strings.Split(s.Text, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") || strings.HasPrefix(trimmed, `\`) {
			continue
		}
		cur = append(cur, line)
		if strings.HasSuffix(trimmed, ";") {
			cmds = append(cmds, strings.Join(cur, "\n"))
			cur = nil
		}
	}
	if len(cur) > 0 {
		cmds = append(cmds, strings.Join(cur, "\n"))
	}
	return cmds
}

// pgbench variable references; "::" (a cast) is not one.
var variable = regexp.MustCompile(`(^|[^:]):([A-Za-z_][A-Za-z0-9_]*)`)

// Substitute replaces pgbench variables in a command by their values, as
// pgbench's simple query mode does (textually), and fails on a variable
// vars does not define.
func Substitute(cmd string, vars map[string]string) (string, error) {
	var missing []string
	out := variable.ReplaceAllStringFunc(cmd, func(m string) string {
		sub := variable.FindStringSubmatch(m)
		v, ok := vars[sub[2]]
		if !ok {
			missing = append(missing, sub[2])
			return m
		}
		return sub[1] + v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("undefined pgbench variables %v", missing)
	}
	return out, nil
}
