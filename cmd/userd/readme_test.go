package main

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
	"github.com/google/go-cmp/cmp"
)

// TestREADMEConfigurationTableMatchesFlags keeps the README's
// configuration table and `userd serve --help` in step: the same flags with
// the same environment variables and defaults.
func TestREADMEConfigurationTableMatchesFlags(t *testing.T) {
	t.Parallel()
	var c cli
	parser, err := kong.New(&c, kong.Name("userd"))
	if err != nil {
		t.Fatal(err)
	}
	fromFlags := map[string]string{}
	for _, node := range parser.Model.Children {
		if node.Name != "serve" {
			continue
		}
		for _, f := range node.Flags {
			if f.Name == "help" {
				continue
			}
			env := ""
			if len(f.Envs) > 0 {
				env = f.Envs[0]
			}
			fromFlags[f.Name] = env + " " + f.Default
		}
	}
	if len(fromFlags) == 0 {
		t.Fatal("found no flags of userd serve")
	}

	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)
	start := strings.Index(section, "## Configuration")
	if start < 0 {
		t.Fatal("README has no ## Configuration section")
	}
	section = section[start:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	row := regexp.MustCompile("(?m)^\\| `--(?:\\[no-\\])?([a-z0-9-]+)` \\| `([A-Z0-9_]+)` \\| ([^|]*) \\|")
	fromREADME := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		def := strings.TrimSpace(m[3])
		if strings.HasPrefix(def, "*") { // *(none)*, *(required)*: no default
			def = ""
		}
		fromREADME[m[1]] = m[2] + " " + strings.Trim(def, "`")
	}
	if diff := cmp.Diff(fromFlags, fromREADME); diff != "" {
		keys := make([]string, 0, len(fromFlags))
		for k := range fromFlags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Errorf("README configuration table differs from `userd serve --help` (-flags +README):\n%s", diff)
	}
}
