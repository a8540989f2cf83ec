//go:build hatest

package hatest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Fixed ports (this harness's range is 26000-26999): the formation's
// nodes register their host:port with the monitor, so they cannot be
// picked at random after the fact.
const (
	monitorPort = 26101
	node1Port   = 26111
	node2Port   = 26112
	grpcPort0   = 26121
	opsPort0    = 26141
	dbName      = "userd"
)

// formation is a pg_auto_failover monitor and two PostgreSQL nodes, each
// run by its own `pg_autoctl create ... --run` under the account that
// owns PostgreSQL's files (PostgreSQL refuses to run as root).
type formation struct {
	t     *testing.T
	dir   string
	env   []string
	cred  *syscall.Credential
	procs map[string]*exec.Cmd
}

// pgConfig finds the pg_config of the PostgreSQL that has the
// pgautofailover extension installed.
func pgConfig(t *testing.T) string {
	t.Helper()
	controls, _ := filepath.Glob("/usr/share/postgresql/*/extension/pgautofailover.control")
	if len(controls) == 0 {
		t.Fatal("the pgautofailover extension is not installed: apt-get install postgresql-15-auto-failover pg-auto-failover-cli")
	}
	version := filepath.Base(filepath.Dir(filepath.Dir(controls[0])))
	pc := filepath.Join("/usr/lib/postgresql", version, "bin", "pg_config")
	if _, err := os.Stat(pc); err != nil {
		t.Fatalf("PostgreSQL %s: %v", version, err)
	}
	if _, err := exec.LookPath("pg_autoctl"); err != nil {
		t.Fatal("pg_autoctl is not installed: apt-get install pg-auto-failover-cli")
	}
	return pc
}

func newFormation(t *testing.T) *formation {
	t.Helper()
	pc := pgConfig(t)
	base, err := os.MkdirTemp("", "userd-ha-")
	if err != nil {
		t.Fatal(err)
	}
	f := &formation{t: t, dir: base, procs: map[string]*exec.Cmd{}}
	t.Cleanup(f.stop)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		// Debian's PostgreSQL account: it exists wherever the server
		// packages are installed, and owns /var/run/postgresql, where
		// the servers put their sockets and lock files.
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres account: %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		f.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	for _, d := range []string{"home", "config", "data", "run"} {
		p := filepath.Join(base, d)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(base, uid, gid); err != nil {
		t.Fatal(err)
	}
	f.env = []string{
		"HOME=" + filepath.Join(base, "home"),
		"XDG_CONFIG_HOME=" + filepath.Join(base, "config"),
		"XDG_DATA_HOME=" + filepath.Join(base, "data"),
		"XDG_RUNTIME_DIR=" + filepath.Join(base, "run"),
		"PG_CONFIG=" + pc,
		"PATH=" + filepath.Dir(pc) + ":/usr/bin:/bin",
		"LANG=C.UTF-8",
	}
	return f
}

func (f *formation) pgdata(name string) string { return filepath.Join(f.dir, name) }

func (f *formation) command(args ...string) *exec.Cmd {
	cmd := exec.Command("pg_autoctl", args...)
	cmd.Env = f.env
	cmd.Dir = f.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: f.cred}
	return cmd
}

// start runs a pg_autoctl service in the background, logging to name.log.
func (f *formation) start(name string, args ...string) {
	f.t.Helper()
	log, err := os.Create(filepath.Join(f.dir, name+".log"))
	if err != nil {
		f.t.Fatal(err)
	}
	cmd := f.command(args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		f.t.Fatalf("start %s: %v", name, err)
	}
	f.procs[name] = cmd
	go func() { _ = cmd.Wait(); _ = log.Close() }()
}

// run runs pg_autoctl to completion and returns its output.
func (f *formation) run(args ...string) (string, error) {
	var out bytes.Buffer
	cmd := f.command(args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (f *formation) startMonitor() {
	f.start("monitor", "create", "monitor", "--pgdata", f.pgdata("monitor"), "--pgport", strconv.Itoa(monitorPort),
		"--hostname", "127.0.0.1", "--listen", "127.0.0.1", "--auth", "trust", "--no-ssl", "--run")
}

func (f *formation) startNode(name string, port int) {
	f.start(name, "create", "postgres", "--pgdata", f.pgdata(name), "--pgport", strconv.Itoa(port),
		"--name", name, "--hostname", "127.0.0.1", "--listen", "127.0.0.1", "--auth", "trust", "--no-ssl",
		"--dbname", dbName, "--monitor", f.monitorURL(), "--run")
}

func (f *formation) monitorURL() string {
	return fmt.Sprintf("postgres://autoctl_node@127.0.0.1:%d/pg_auto_failover?sslmode=disable", monitorPort)
}

// nodeState is a node as the monitor sees it.
type nodeState struct {
	Name, Reported, Goal string
	Port                 int
}

func (f *formation) states(ctx context.Context) ([]nodeState, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.monitorURL()+"&connect_timeout=2")
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT nodename, nodeport, reportedstate::text, goalstate::text FROM pgautofailover.node ORDER BY nodeid")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (nodeState, error) {
		var s nodeState
		err := r.Scan(&s.Name, &s.Port, &s.Reported, &s.Goal)
		return s, err
	})
}

// waitFor polls the monitor until ok holds for its node states.
func (f *formation) waitFor(what string, timeout time.Duration, ok func([]nodeState) bool, meanwhile func()) []nodeState {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	var last []nodeState
	var lastErr error
	for time.Now().Before(deadline) {
		st, err := f.states(context.Background())
		if err == nil && ok(st) {
			return st
		}
		last, lastErr = st, err
		if meanwhile != nil {
			meanwhile()
		}
		time.Sleep(250 * time.Millisecond) // polling the monitor for a state change
	}
	f.dumpLogs()
	f.t.Fatalf("formation: %s: not within %s (last states %+v, err %v)", what, timeout, last, lastErr)
	return nil
}

// healthy: one primary and one secondary, both settled.
func healthy(st []nodeState) bool {
	if len(st) != 2 {
		return false
	}
	roles := map[string]int{}
	for _, s := range st {
		if s.Reported != s.Goal {
			return false
		}
		roles[s.Reported]++
	}
	return roles["primary"] == 1 && roles["secondary"] == 1
}

func primaryOf(st []nodeState) (nodeState, bool) {
	for _, s := range st {
		if s.Reported == "primary" && s.Goal == "primary" {
			return s, true
		}
	}
	return nodeState{}, false
}

// up creates the monitor and both nodes and waits until node1 is the
// primary and node2 its synchronous standby.
func (f *formation) up() {
	f.t.Helper()
	f.startMonitor()
	f.waitFor("monitor up", 90*time.Second, func(st []nodeState) bool { return true }, nil)
	f.startNode("node1", node1Port)
	f.waitFor("node1 registered and writable", 90*time.Second, func(st []nodeState) bool {
		return len(st) == 1 && (st[0].Reported == "single" || st[0].Reported == "wait_primary")
	}, nil)
	f.startNode("node2", node2Port)
	// pg_basebackup waits for a spread checkpoint (minutes at the default
	// checkpoint_timeout): asking for an immediate one makes it finish.
	checkpoint := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, nodeURL(node1Port)); err == nil {
			_, _ = c.Exec(ctx, "CHECKPOINT")
			_ = c.Close(ctx)
		}
	}
	f.waitFor("node2 a synchronous standby", 3*time.Minute, healthy, checkpoint)
}

func nodeURL(port int) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=2", port, dbName)
}

// postmasterPID reads the PID of a node's running postmaster.
func (f *formation) postmasterPID(node string) (int, error) {
	b, err := os.ReadFile(filepath.Join(f.pgdata(node), "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}

// settings is what the monitor's failover decisions run on.
func (f *formation) settings(ctx context.Context) string {
	conn, err := pgx.Connect(ctx, f.monitorURL())
	if err != nil {
		return err.Error()
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT name || '=' || setting || coalesce(unit, '') FROM pg_settings WHERE name LIKE 'pgautofailover.%' ORDER BY name")
	if err != nil {
		return err.Error()
	}
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err.Error()
	}
	return strings.Join(list, " ")
}

func (f *formation) dumpLogs() {
	for _, name := range []string{"monitor", "node1", "node2"} {
		b, err := os.ReadFile(filepath.Join(f.dir, name+".log"))
		if err != nil {
			continue
		}
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		f.t.Logf("--- %s.log (tail) ---\n%s", name, b)
	}
}

// stop ends every pg_autoctl this formation started (each stops its
// PostgreSQL), then removes the directory.
func (f *formation) stop() {
	for _, name := range []string{"node2", "node1", "monitor"} {
		cmd, ok := f.procs[name]
		if !ok || cmd.Process == nil {
			continue
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, name := range []string{"node2", "node1", "monitor"} {
		cmd, ok := f.procs[name]
		if !ok || cmd.Process == nil {
			continue
		}
		for syscall.Kill(cmd.Process.Pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond) // waiting for pg_autoctl to stop its PostgreSQL
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		// A postmaster pg_autoctl could not stop (it runs in a group of its own).
		if pid, err := f.postmasterPID(name); err == nil && pid > 0 {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil &&
				bytes.Contains(cmdline, []byte(f.pgdata(name))) {
				_ = syscall.Kill(pid, syscall.SIGQUIT)
			}
		}
	}
	if os.Getenv("USERD_HA_KEEP") == "" {
		_ = os.RemoveAll(f.dir)
	} else {
		f.t.Logf("formation kept in %s", f.dir)
	}
}
