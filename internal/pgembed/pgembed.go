// Package pgembed runs a PostgreSQL server for userd when no DATABASE_URL
// is given, with fergusstrange/embedded-postgres, keeping its data in a
// directory that survives restarts.
//
// It uses PostgreSQL binaries already on the machine (pg_config, the
// Debian/Ubuntu layout, PATH) and only lets the library download binaries
// when there are none. PostgreSQL refuses to run as root, so when userd is
// root the server runs as the dedicated system account "userd-pg" (created
// when missing, no login shell, no home, owning nothing but the server's
// files) through small wrapper scripts around pg_ctl and initdb (setpriv).
// It never runs as the distribution's "postgres" account: whatever can act
// as that account (the system cluster, any of its superusers through COPY
// ... TO PROGRAM) could otherwise rewrite userd's pg_hba.conf. The wrappers
// also start the server in its own session (setsid), so a Ctrl-C in
// userd's terminal reaches userd, which then stops the server cleanly.
//
// The server listens on 127.0.0.1 only, has no Unix socket, and accepts
// only SCRAM-SHA-256 password logins (see secure.go); no file of the data
// directory is readable by other accounts.
//
// One userd at a time uses a data directory: Start takes an exclusive lock
// on it (lock.go), held until Stop, so a second userd refuses to start and
// leaves the first one's server alone. A server left running by a userd
// that was killed is adopted by the next start (its port is read from
// postmaster.pid) and stopped when that userd stops, so no postgres
// process outlives userd.
package pgembed

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	embeddedpostgres "github.com/fergusstrange/embedded-postgres"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/procfs"

	"github.com/userd/userd/internal/loopback"
)

// Config configures the embedded server.
type Config struct {
	// DataDir holds everything. The server's own account owns only pg/
	// (PGDATA is pg/data); the password, the log, the wrappers and the
	// library's runtime and cache directories stay with userd's user, so
	// that the database account can plant nothing root later runs, reads
	// or writes.
	DataDir string
	// BinDir, if set, is the directory of pg_ctl and initdb to use.
	BinDir string
	// Log receives PostgreSQL's output.
	Log io.Writer
	// Lock, if set, is DataDir's lock, already taken (see Lock); Start
	// takes it otherwise. Either way the Server holds it from then on.
	Lock *DirLock
}

// Server is a running embedded PostgreSQL.
type Server struct {
	// URL connects to the userd database as the userd role.
	URL     string
	dataDir string
	pgCtl   string // pg_ctl to stop with (a wrapper when needed)
	ep      *embeddedpostgres.EmbeddedPostgres
	// lock is the data directory's lock, held until Stop or Detach.
	lock *DirLock
	// adopted is the pid of a server a userd that did not stop left
	// running, which this one adopted; 0 when this one started it.
	adopted int
	port    uint32
}

// AdoptedPID is the process id of the server Start adopted from a userd
// that did not stop (it was killed, or crashed), or 0 when Start started
// the server itself.
func (s *Server) AdoptedPID() int { return s.adopted }

const (
	dbName   = "userd"
	dbUser   = "userd"
	fallback = embeddedpostgres.V16 // downloaded when the machine has no PostgreSQL
)

// DefaultDataDir is where data lives unless USERD_DATA_DIR says otherwise:
// /var/lib/userd for root (the server's account must be able to reach
// it), $XDG_DATA_HOME/userd or ~/.local/share/userd otherwise.
func DefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/userd"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "userd")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "userd")
	}
	return ".userd"
}

// Start starts (or adopts) the server and returns it once it accepts
// connections. It fails with ErrInUse, having touched nothing, when another
// process holds the data directory.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	lock := cfg.Lock
	if lock == nil {
		if lock, err = Lock(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	dataDir := lock.dir
	s := &Server{dataDir: filepath.Join(dataDir, "pg", "data"), lock: lock}
	defer func() {
		if err != nil {
			s.Detach()
			return
		}
		// Tell the commands run beside this userd where its database
		// is (the password stays in its own file).
		lock.record(url("", s.port))
	}()
	pgDir := filepath.Join(dataDir, "pg")
	if err := os.MkdirAll(pgDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	password, err := readOrCreatePassword(filepath.Join(dataDir, "password"))
	if err != nil {
		return nil, err
	}

	binDir, major, err := findBinaries(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	version := fallback
	binariesPath := filepath.Join(dataDir, "binaries") // the library's layout: <path>/bin/pg_ctl
	var acct *serverAccount
	if binDir != "" {
		if version, err = versionFor(major); err != nil {
			return nil, err
		}
		if binariesPath, acct, err = prepareWrappers(dataDir, pgDir, binDir); err != nil {
			return nil, err
		}
	} else if os.Geteuid() == 0 {
		return nil, errors.New("no PostgreSQL binaries found and userd runs as root: install PostgreSQL " +
			"(e.g. apt-get install postgresql) or set USERD_PG_BIN_DIR, or set DATABASE_URL")
	}
	if acct == nil { // the server runs as userd's own user: nobody else needs in
		if err := os.Chmod(dataDir, 0o700); err != nil {
			return nil, err
		}
	}
	if err := guardVersion(s.dataDir, version); err != nil {
		return nil, err
	}
	s.pgCtl = filepath.Join(binariesPath, "bin", "pg_ctl")

	if pid, port, ok := postmaster(s.dataDir); ok {
		// Left running by a userd that did not stop (nothing else may
		// run it: we hold the data directory): adopt it.
		s.URL, s.port = url(password, port), port
		if err := ping(ctx, s.URL); err == nil {
			s.adopted = pid
			if err := s.secure(ctx, password, acct); err != nil {
				_ = s.stopRunning()
				return nil, err
			}
			return s, nil
		}
		_ = s.stopRunning()
	}

	// The port was free when freePort looked; something else (another
	// test's listener, a client) may take it before the server binds it.
	// embedded-postgres then refuses to start: try another port.
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		err = s.startOn(port, version, password, binariesPath, dataDir, cfg.Log)
		if err == nil {
			break
		}
		if attempt == 3 || !strings.Contains(err.Error(), "process already listening on port") {
			return nil, fmt.Errorf("start embedded PostgreSQL in %s: %w", s.dataDir, err)
		}
	}
	if err := s.secure(ctx, password, acct); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

// Detach releases the data directory and leaves the server running, for
// the next Start (in this process or another) to adopt. Stop does both.
func (s *Server) Detach() {
	if s.lock != nil {
		s.lock.Release()
		s.lock = nil
	}
}

// Stop stops the server, waits for it to exit and releases the data
// directory.
func (s *Server) Stop() error {
	defer s.Detach()
	pid, _, running := postmaster(s.dataDir)
	err := s.stop()
	if err == nil && running {
		waitExit(pid, 30*time.Second)
	}
	return err
}

func (s *Server) stop() error {
	if s.ep != nil {
		if err := s.ep.Stop(); err == nil {
			return nil
		}
	}
	return s.stopRunning()
}

// waitExit waits until process pid has exited (a zombie counts: it is its
// parent's to reap). pg_ctl stop returns once postmaster.pid is gone, which
// the postmaster removes just before it exits, so without this wait a
// postgres process could outlive userd by a moment.
func waitExit(pid int, timeout time.Duration) {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		proc, err := procfs.NewProc(pid)
		if err != nil {
			return
		}
		if stat, err := proc.Stat(); err != nil || stat.State == "Z" {
			return
		}
	}
}

// stopRunning stops whatever server runs on the data directory.
func (s *Server) stopRunning() error {
	if _, _, ok := postmaster(s.dataDir); !ok {
		return nil
	}
	out, err := exec.Command(s.pgCtl, "stop", "-w", "-m", "fast", "-D", s.dataDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("stop embedded PostgreSQL: %v: %s", err, out)
	}
	return nil
}

// url is the server's URL; without a password when password is "".
// startOn starts the server of s on port.
func (s *Server) startOn(port uint32, version embeddedpostgres.PostgresVersion, password, binariesPath, dataDir string, log io.Writer) error {
	s.URL, s.port = url(password, port), port
	s.ep = embeddedpostgres.NewDatabase(embeddedpostgres.DefaultConfig().
		Version(version).
		Port(port).
		Username(dbUser).
		Password(password).
		Database(dbName).
		DataPath(s.dataDir).
		RuntimePath(filepath.Join(dataDir, "runtime")).
		CachePath(filepath.Join(dataDir, "cache")).
		BinariesPath(binariesPath).
		Locale("C").
		Encoding("UTF8").
		StartParameters(map[string]string{"listen_addresses": "127.0.0.1", "unix_socket_directories": ""}).
		StartTimeout(60 * time.Second).
		Logger(log))
	return s.ep.Start()
}

func url(password string, port uint32) string {
	if password == "" {
		return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", dbUser, port, dbName)
	}
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", dbUser, password, port, dbName)
}

func ping(ctx context.Context, u string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// readOrCreatePassword reads the userd role's password, creating it on
// the first start. The file is userd's own: mode 0600, owned by the user
// userd runs as (fixed when an older userd left it otherwise).
func readOrCreatePassword(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		if err := os.Chmod(path, 0o600); err != nil {
			return "", err
		}
		if err := os.Lchown(path, os.Geteuid(), os.Getegid()); err != nil && os.Geteuid() == 0 {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	pw := hex.EncodeToString(b[:])
	if err := writeOwned(path, []byte(pw+"\n"), nil); err != nil {
		return "", fmt.Errorf("write embedded database password: %w", err)
	}
	return pw, nil
}

// freePort is below 32768 (internal/loopback): a port of the kernel's
// ephemeral range may be taken by an outgoing connection before the server
// binds it.
func freePort() (uint32, error) {
	port, err := loopback.FreePort()
	if err != nil {
		return 0, fmt.Errorf("find a free port for embedded PostgreSQL: %w", err)
	}
	return uint32(port), nil
}

// postmaster reads postmaster.pid and reports the pid and port of a live
// server.
func postmaster(dataDir string) (pid int, port uint32, ok bool) {
	f, err := os.Open(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) < 4 {
		return 0, 0, false
	}
	pid, err1 := strconv.Atoi(strings.TrimSpace(lines[0]))
	p, err2 := strconv.ParseUint(strings.TrimSpace(lines[3]), 10, 16)
	if err1 != nil || err2 != nil || pid <= 0 {
		return 0, 0, false
	}
	// Signal 0 checks that the process exists (EPERM: exists, not ours).
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return 0, 0, false // stale pid file: postgres itself clears it on start
	}
	return pid, uint32(p), true
}

var majorRe = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

// ToolMajor runs a PostgreSQL program (pg_ctl, pg_dump, ...) with
// --version and returns its major version, or false when it does not run
// or does not say.
func ToolMajor(path string) (int, bool) {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return 0, false
	}
	m := majorRe.FindStringSubmatch(string(out))
	if m == nil {
		return 0, false
	}
	major, err := strconv.Atoi(m[1])
	return major, err == nil
}

// findBinaries returns the directory of pg_ctl and initdb and their major
// version, or "" when the machine has none.
func findBinaries(configured string) (string, int, error) {
	var candidates []string
	if configured != "" {
		candidates = []string{configured}
	} else {
		if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
			candidates = append(candidates, strings.TrimSpace(string(out)))
		}
		// Debian and Ubuntu keep server binaries out of PATH; newest first.
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		sort.Slice(dirs, func(i, j int) bool { return versionOfDir(dirs[i]) > versionOfDir(dirs[j]) })
		candidates = append(candidates, dirs...)
		if p, err := exec.LookPath("pg_ctl"); err == nil {
			candidates = append(candidates, filepath.Dir(p))
		}
	}
	for _, dir := range candidates {
		pgCtl := filepath.Join(dir, "pg_ctl")
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err != nil {
			continue
		}
		if major, ok := ToolMajor(pgCtl); ok {
			return dir, major, nil
		}
	}
	if configured != "" {
		return "", 0, fmt.Errorf("USERD_PG_BIN_DIR %s holds no usable pg_ctl and initdb", configured)
	}
	return "", 0, nil
}

func versionOfDir(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

func versionFor(major int) (embeddedpostgres.PostgresVersion, error) {
	switch major {
	case 13:
		return embeddedpostgres.V13, nil
	case 14:
		return embeddedpostgres.V14, nil
	case 15:
		return embeddedpostgres.V15, nil
	case 16:
		return embeddedpostgres.V16, nil
	case 17:
		return embeddedpostgres.V17, nil
	case 18:
		return embeddedpostgres.V18, nil
	}
	return "", fmt.Errorf("PostgreSQL %d is not supported for the embedded database (13 to 18 are)", major)
}

// guardVersion refuses to start on a data directory of another major
// version: the library would wipe it and initialise a new one.
func guardVersion(dataDir string, version embeddedpostgres.PostgresVersion) error {
	b, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		// No cluster yet — unless the directory holds something: the
		// library would wipe it to run initdb.
		if entries, derr := os.ReadDir(dataDir); derr == nil && len(entries) > 0 {
			return fmt.Errorf("%s is not empty but has no readable PG_VERSION (%v): refusing to initialise a "+
				"database over it; move it away to start afresh", dataDir, err)
		}
		return nil
	}
	have := strings.TrimSpace(string(b))
	if !strings.HasPrefix(string(version), have+".") {
		return fmt.Errorf("the embedded database in %s is PostgreSQL %s but the binaries found are %s: "+
			"point USERD_PG_BIN_DIR at PostgreSQL %s binaries, or move the directory away to start afresh",
			dataDir, have, version, have)
	}
	return nil
}
