package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
	"github.com/google/go-cmp/cmp"

	"github.com/userd/userd/internal/config"
)

// updateDocs rewrites the generated parts of docs/ instead of comparing them:
// `make docs` runs this test with -update.
var updateDocs = flag.Bool("update", false, "rewrite the generated tables in docs/ from the flags")

const (
	configDoc      = "../../docs/configuration.md"
	configDocBegin = "<!-- BEGIN generated from `userd serve --help` by `make docs`; do not edit -->"
	configDocEnd   = "<!-- END generated -->"
)

// configurationTable renders every flag of `userd serve` as a markdown table
// row: flag, environment variable, default, help. The help text is the one
// place a setting is described; docs/configuration.md shows it.
func configurationTable(t *testing.T) string {
	t.Helper()
	var c cli
	parser, err := kong.New(&c, kong.Name("userd"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("| flag | environment | default | meaning |\n| --- | --- | --- | --- |\n")
	rows := 0
	for _, node := range parser.Model.Children {
		if node.Name != "serve" {
			continue
		}
		for _, f := range node.Flags {
			if f.Name == "help" || f.Hidden {
				continue
			}
			name := "--" + f.Name
			if f.Tag.Negatable != "" {
				name = "--[no-]" + f.Name
			}
			env := ""
			if len(f.Envs) > 0 {
				env = "`" + f.Envs[0] + "`"
			}
			def := "*(none)*"
			if f.Default != "" {
				def = "`" + f.Default + "`"
			}
			help := strings.ReplaceAll(f.Help, "|", `\|`)
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", name, env, def, help)
			rows++
		}
	}
	if rows == 0 {
		t.Fatal("found no flags of userd serve")
	}
	return b.String()
}

// TestConfigurationDocMatchesFlags keeps docs/configuration.md's table equal
// to `userd serve --help`: the same flags, environment variables, defaults
// and descriptions. `make docs` regenerates it.
func TestConfigurationDocMatchesFlags(t *testing.T) {
	t.Parallel()
	want := configurationTable(t)
	raw, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	begin, end := strings.Index(doc, configDocBegin), strings.Index(doc, configDocEnd)
	if begin < 0 || end < begin {
		t.Fatalf("%s lacks the markers %q … %q around the generated table", configDoc, configDocBegin, configDocEnd)
	}
	got := doc[begin+len(configDocBegin)+1 : end]
	if got == want {
		return
	}
	if *updateDocs {
		doc = doc[:begin+len(configDocBegin)+1] + want + doc[end:]
		if err := os.WriteFile(configDoc, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s is stale: run `make docs` (-doc +flags):\n%s", configDoc, cmp.Diff(got, want))
}

// TestDefaultLimitsMatchFlags: config.DefaultLimits, which configurations
// built in code (tests) start from, says what the flags' defaults say.
func TestDefaultLimitsMatchFlags(t *testing.T) {
	var c cli
	parser, err := kong.New(&c, kong.Name("userd"), kong.Exit(func(int) { t.Fatal("kong exited") }))
	if err != nil {
		t.Fatal(err)
	}
	for _, node := range parser.Model.Children {
		if node.Name != "serve" {
			continue
		}
		for _, f := range node.Flags {
			for _, env := range f.Envs {
				t.Setenv(env, "") // only the defaults
				os.Unsetenv(env)
			}
		}
	}
	if _, err := parser.Parse([]string{"serve"}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(config.DefaultLimits(), c.Serve.Limits); diff != "" {
		t.Errorf("config.DefaultLimits differs from the flags' defaults (-DefaultLimits +flags):\n%s", diff)
	}
}
