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
	"time"

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

// NoFeed names the variant of a ceiling that writes no change-feed event
// (db/ceilings/<name>_nofeed.sql), where there is one: the two show what
// the feed costs the best SQL.
func NoFeed(name string) string { return name + "_nofeed" }

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
		path, err := WriteScript(dir, s)
		if err != nil {
			cleanup()
			return nil, nil, err
		}
		out = append(out, &ceiling{Script: s, path: path, dbURL: dbURL})
	}
	return out, cleanup, nil
}

// WriteScript writes a ceiling script into dir, where pgbench can read
// it, and returns its path.
func WriteScript(dir string, s ceilings.Script) (string, error) {
	path := filepath.Join(dir, s.Name+".sql")
	return path, os.WriteFile(path, []byte(s.Text), 0o644)
}

var (
	tpsRe           = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	processedNoneRe = regexp.MustCompile(`(?m)^number of transactions actually processed: 0$`)
)

// run runs the script with pgbench (-c clients, for -d) and records its
// rate.
func (c *ceiling) run() error {
	tps, err := Pgbench(c.dbURL, c.path, *concurrency, *duration, *nUsers)
	if err != nil {
		return fmt.Errorf("pgbench %s: %w", c.Name, err)
	}
	if tps == 0 {
		// On a starved machine a short run may finish none: a rate of 0
		// (the report leaves the ceiling blank), not the end of the run.
		log.Printf("  pgbench %-40s no transaction completed in %s", c.Name, *duration)
	} else {
		log.Printf("  pgbench %-40s %8.0f tps", c.Name, tps)
	}
	c.tps = append(c.tps, tps)
	return nil
}

// Pgbench runs the ceiling script at path with pgbench (prepared
// statements, clients clients, for d) on a database seeded with users users
// (UserID(0) .. UserID(users-1), passed as -D users=N), and returns its
// rate: 0 when no transaction completed.
func Pgbench(dbURL, path string, clients int, d time.Duration, users int) (float64, error) {
	cmd := exec.Command("pgbench", "-n", "-M", "prepared", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(runtime.NumCPU()),
		"-T", strconv.Itoa(int(d.Seconds())), "-D", "users="+strconv.Itoa(users), "-f", path, dbURL)
	// The ceilings write their feed events themselves, as userd's writers
	// do; the triggers 00020 keeps for a previous release's bodies skip
	// sessions marked so (see db/migrations/00020_write_path_events.sql).
	cmd.Env = append(os.Environ(), "PGOPTIONS=-c userd.writer_emits_events=on")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v\n%s", err, out)
	}
	m := tpsRe.FindSubmatch(out)
	if m == nil && processedNoneRe.Match(out) {
		return 0, nil
	}
	if m == nil {
		return 0, fmt.Errorf("no tps in\n%s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}
