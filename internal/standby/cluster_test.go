package standby_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/loopback"
	"github.com/userd/userd/internal/testwait"
)

// cluster is a PostgreSQL primary and a streaming hot standby of its own,
// made for one test in a temporary directory: initdb, then pg_basebackup
// -R (no replication slot) from it, each started with pg_ctl on a free
// loopback port below 32768 with its socket in that directory. Nothing of
// the machine's own server is used or changed. As root, the servers run
// as the postgres account (PostgreSQL refuses root).
type cluster struct {
	t                        *testing.T
	bin, dir                 string
	cred                     *syscall.Credential
	primaryPort, standbyPort int
}

// pgBin finds the newest installed PostgreSQL's programs.
func pgBin(t *testing.T) string {
	t.Helper()
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_basebackup")
	if len(found) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("PostgreSQL's server programs (initdb, pg_ctl, pg_basebackup) are not installed: apt-get install postgresql")
		}
		t.Skip("PostgreSQL's server programs are not installed (apt-get install postgresql)")
	}
	sort.Slice(found, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(found[i]))))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(found[j]))))
		return vi < vj
	})
	return filepath.Dir(found[len(found)-1])
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{t: t, bin: pgBin(t)}
	dir, err := os.MkdirTemp("", "userd-standby-")
	if err != nil {
		t.Fatal(err)
	}
	c.dir = dir
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if os.Getuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres account: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if c.primaryPort, err = loopback.FreePort(); err != nil {
		t.Fatal(err)
	}
	if c.standbyPort, err = loopback.FreePort(); err != nil {
		t.Fatal(err)
	}
	c.run("initdb", "-D", c.path("primary"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	c.start("primary", c.primaryPort)
	c.run("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(c.primaryPort), "-U", "postgres",
		"-D", c.path("standby"), "-R", "-X", "stream", "--no-slot", "-c", "fast", "--no-sync")
	c.start("standby", c.standbyPort)
	return c
}

func (c *cluster) path(name string) string { return filepath.Join(c.dir, name) }

func (c *cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Dir = c.dir
	cmd.Env = []string{"PATH=" + c.bin + ":/usr/bin:/bin", "LANG=C.UTF-8", "PGCONNECT_TIMEOUT=10"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: c.cred}
	return cmd
}

func (c *cluster) run(name string, args ...string) {
	c.t.Helper()
	var out bytes.Buffer
	cmd := c.command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("%s: %v\n%s", name, err, out.String())
	}
}

// start starts the server of data directory name on port and stops it
// (immediate) when the test ends.
func (c *cluster) start(name string, port int) {
	c.t.Helper()
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c fsync=off -c max_connections=60",
		port, c.dir)
	c.run("pg_ctl", "-D", c.path(name), "-l", c.path(name+".log"), "-o", opts, "-w", "-t", "60", "start")
	c.t.Cleanup(func() {
		if _, err := os.Stat(c.path(name + "/postmaster.pid")); err != nil {
			return // stopped by the test
		}
		cmd := c.command("pg_ctl", "-D", c.path(name), "-m", "immediate", "-w", "stop")
		if out, err := cmd.CombinedOutput(); err != nil {
			c.t.Logf("stop %s: %v\n%s", name, err, out)
		}
	})
}

// stop stops the server of data directory name at once (a crash).
func (c *cluster) stop(name string) {
	c.t.Helper()
	c.run("pg_ctl", "-D", c.path(name), "-m", "immediate", "-w", "stop")
}

func (c *cluster) url(port int, db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", port, db)
}

// createDB creates a database on the primary and waits until the standby
// has it.
func (c *cluster) createDB(ctx context.Context, name string) {
	c.t.Helper()
	p := c.pool(ctx, c.primaryPort, "postgres")
	if _, err := p.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		c.t.Fatal(err)
	}
	s := c.pool(ctx, c.standbyPort, "postgres")
	testwait.Until(c.t, 60*time.Second, "the standby has the new database", func() bool {
		var n int
		return s.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n) == nil && n == 1
	})
}

func (c *cluster) pool(ctx context.Context, port int, db string) *pgxpool.Pool {
	c.t.Helper()
	p, err := pgxpool.New(ctx, c.url(port, db))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(p.Close)
	return p
}

// pauseReplay stops the standby's replay (WAL still arrives) and waits
// until it has stopped; resumeReplay starts it again.
func (c *cluster) pauseReplay(ctx context.Context, s *pgxpool.Pool) {
	c.t.Helper()
	if _, err := s.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
		c.t.Fatal(err)
	}
	testwait.Until(c.t, 30*time.Second, "replay paused", func() bool {
		var st string
		return s.QueryRow(ctx, "SELECT pg_get_wal_replay_pause_state()").Scan(&st) == nil && st == "paused"
	})
}

func (c *cluster) resumeReplay(ctx context.Context, s *pgxpool.Pool) {
	c.t.Helper()
	if _, err := s.Exec(ctx, "SELECT pg_wal_replay_resume()"); err != nil {
		c.t.Fatal(err)
	}
}
