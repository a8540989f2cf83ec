package crud

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"

	"github.com/userd/userd/db/ceilings"
)

// ceiling is a db/ceilings script, written out for pgbench, and its
// rates over the rounds.
type ceiling struct {
	ceilings.Script
	path  string
	dbURL string
	tps   []float64
}

// noFeed names the variant of a ceiling that writes no change-feed event
// (db/ceilings/<name>_nofeed.sql), where there is one: the two show what
// the feed costs the best SQL.
func noFeed(name string) string { return name + "_nofeed" }

// loadCeilings writes every ceiling script where pgbench can read it.
func loadCeilings(dbURL string) ([]*ceiling, func(), error) {
	scripts, err := ceilings.All()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "userd-pgbench")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	var out []*ceiling
	for _, s := range scripts {
		c := &ceiling{Script: s, path: filepath.Join(dir, s.Name+".sql"), dbURL: dbURL}
		if err := os.WriteFile(c.path, []byte(s.Text), 0o644); err != nil {
			cleanup()
			return nil, nil, err
		}
		out = append(out, c)
	}
	return out, cleanup, nil
}

var (
	tpsRe           = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	processedNoneRe = regexp.MustCompile(`(?m)^number of transactions actually processed: 0$`)
)

// run runs the script with pgbench (prepared statements, -c clients, for
// -d) and records its rate.
func (c *ceiling) run() error {
	cmd := exec.Command("pgbench", "-n", "-M", "prepared", "-c", strconv.Itoa(*concurrency), "-j", strconv.Itoa(runtime.NumCPU()),
		"-T", strconv.Itoa(int(duration.Seconds())), "-D", "users="+strconv.Itoa(*nUsers), "-f", c.path, c.dbURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgbench %s: %v\n%s", c.Name, err, out)
	}
	m := tpsRe.FindSubmatch(out)
	if m == nil && processedNoneRe.Match(out) {
		// On a starved machine a short run may finish none: a rate of 0
		// (the report leaves the ceiling blank), not the end of the run.
		log.Printf("  pgbench %-40s no transaction completed in %s", c.Name, *duration)
		c.tps = append(c.tps, 0)
		return nil
	}
	if m == nil {
		return fmt.Errorf("pgbench %s: no tps in\n%s", c.Name, out)
	}
	tps, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return err
	}
	c.tps = append(c.tps, tps)
	log.Printf("  pgbench %-40s %8.0f tps", c.Name, tps)
	return nil
}
