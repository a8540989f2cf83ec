// Package crud is `userd-bench crud` (make bench): it measures userd against honest ceilings: it starts the
// userd binary on a fresh database, seeds users, drives gRPC, REST and
// webhook load, runs pgbench at the same concurrency on the best SQL a
// hand-tuned implementation would send for each operation (db/ceilings),
// and prints (and writes to BENCHMARKS.md) a table of rates, latencies,
// userd's CPU per call and peak RSS, with each operation's ratio to its
// ceiling. With -baseline it measures a second, previous userd binary in
// the same run, on a database of its own, and shows its figures beside the
// new ones.
package crud

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// notesMarker starts the part of BENCHMARKS.md a run keeps.
const notesMarker = "<!-- notes: kept by make bench -->"

// flags are the subcommand's; Main parses them.
var flags = flag.NewFlagSet("userd-bench crud", flag.ExitOnError)

var (
	binPath      = flags.String("userd", "bin/userd", "userd binary to measure")
	baselinePath = flags.String("baseline", "", "a previous userd binary to measure in the same run, beside -userd (`make bench` builds one from BASELINE=<commit>)")
	baselineName = flags.String("baseline-name", "", "what the report calls -baseline (default: its file name)")
	serverURL    = flags.String("server", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the bench databases on (embedded when unreachable)")
	concurrency  = flags.Int("c", 32, "concurrent clients (and pgbench clients)")
	duration     = flags.Duration("d", 5*time.Second, "measured time per scenario")
	warmup       = flags.Duration("warmup", time.Second, "unmeasured time before each scenario")
	rounds       = flags.Int("rounds", 3, "rounds; the table shows medians")
	nUsers       = flags.Int("users", 1000, "seeded users")
	out          = flags.String("out", "BENCHMARKS.md", "where to write the report (empty: nowhere)")
	only         = flags.String("run", "", "if set, run only the scenarios whose names match this regular expression (and their ceilings)")
	ports        = flags.String("ports", "", "lo-hi: userd listens only on loopback ports in this range (default: free ports in 10000-32767)")
	pprofDir     = flags.String("pprof", "", "if set, save a CPU profile (<scenario>.pprof) and the allocations (<scenario>.allocs.pprof) of userd for each scenario of the first round here (the baseline's in a subdirectory)")
)

// Main runs `userd-bench crud` with its arguments.
func Main(ctx context.Context, args []string) error {
	if err := flags.Parse(args); err != nil {
		return err
	}
	return run(ctx)
}

// run sets up the targets and the ceilings, measures them round by round
// and writes the report.
func run(ctx context.Context) error {
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			return fmt.Errorf("-run: %w", err)
		}
		scenarios = slices.DeleteFunc(scenarios, func(s scenario) bool { return !re.MatchString(s.name) })
	}
	srv, err := openServer(ctx)
	if err != nil {
		return err
	}
	defer srv.close()

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	targets := []*target{{name: "userd", bin: *binPath}}
	if *baselinePath != "" {
		name := *baselineName
		if name == "" {
			name = filepath.Base(*baselinePath)
		}
		targets = append(targets, &target{name: name, bin: *baselinePath, baseline: true})
	}
	for _, t := range targets {
		if t.dbURL, err = srv.createDatabase(ctx, t.name); err != nil {
			return err
		}
		if err := t.setup(ctx, key); err != nil {
			return err
		}
	}
	// The ceilings run on the database of the binary under test: the
	// schema they are written for.
	ceils, cleanup, err := loadCeilings(targets[0].dbURL)
	if err != nil {
		return err
	}
	defer cleanup()

	for r := range *rounds {
		log.Printf("round %d of %d", r+1, *rounds)
		// Who goes first alternates: it is not the same under a drifting load.
		order := append(append([]*target(nil), targets[r%len(targets):]...), targets[:r%len(targets)]...)
		if err := measureRound(ctx, order, ceils, r == 0); err != nil {
			return err
		}
	}
	return writeReport(render(targets, ceils))
}

// measureRound runs every scenario on each target in turn, each ceiling
// (with and without the change feed) right after the first scenario
// compared with it, and last the half-peak
// scenario: figures that are compared are taken close together, on a
// machine whose load drifts.
func measureRound(ctx context.Context, targets []*target, ceils []*ceiling, profile bool) error {
	done := map[string]bool{}
	for _, s := range scenarios {
		for _, t := range targets {
			if err := t.measure(ctx, s, nil, profile); err != nil {
				return err
			}
		}
		for _, c := range ceils {
			if s.ceiling != "" && (c.Name == s.ceiling || c.Name == NoFeed(s.ceiling)) && !done[c.Name] {
				if err := c.run(); err != nil {
					return err
				}
				done[c.Name] = true
			}
		}
	}
	// p99 at half of gRPC GetUser's peak (its median so far).
	for _, t := range targets {
		if len(t.results[grpcGetUser]) == 0 {
			break
		}
		half := median(rates(t.results[grpcGetUser])) / 2
		s := scenario{name: halfPeak, op: (*instance).getUser}
		if err := t.measure(ctx, s, rate.NewLimiter(rate.Limit(half), *concurrency), false); err != nil {
			return err
		}
	}
	return nil
}

// writeReport prints the report and writes it to -out, keeping the
// hand-written notes below notesMarker of the previous one.
func writeReport(report string) error {
	fmt.Print(report)
	if *out == "" {
		return nil
	}
	if old, err := os.ReadFile(*out); err == nil {
		if i := strings.Index(string(old), notesMarker); i >= 0 {
			report += "\n" + string(old[i:])
		}
	}
	return os.WriteFile(*out, []byte(report), 0o644)
}
