// Command userd-bench measures the userd binary. Its subcommands:
//
//	userd-bench crud [flags]  rates, latencies, CPU and memory of the API and
//	                          webhook calls against the best SQL's ceilings
//	                          (pgbench), beside a previous binary: make bench
//	userd-bench feed [flags]  the change feed's commit-to-consumer latency, the
//	                          outbox's cost on writes, idle consumers:
//	                          make bench-feed
//	userd-bench migration     the time and lock impact of this release's
//	                          migrations on a populated database under a
//	                          deduct load on the previous release:
//	                          make bench-migration
//
// Each writes its section of BENCHMARKS.md; `userd-bench <subcommand> -h`
// lists its flags. Both start userd through internal/userdproc, as the
// end-to-end tests do.
package main

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/userd/userd/cmd/userd-bench/internal/crud"
	"github.com/userd/userd/cmd/userd-bench/internal/feed"
	"github.com/userd/userd/cmd/userd-bench/internal/migration"
)

var subcommands = map[string]func(context.Context, []string) error{
	"crud":      crud.Main,
	"feed":      feed.Main,
	"migration": migration.Main,
}

func main() {
	log.SetFlags(0)
	if len(os.Args) < 2 || subcommands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: userd-bench crud|feed|migration [flags] (userd-bench crud -h lists the flags)")
		os.Exit(2)
	}
	if err := subcommands[os.Args[1]](context.Background(), os.Args[2:]); err != nil {
		log.Fatalf("userd-bench %s: %v", os.Args[1], err)
	}
}
