package pgembed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFileName is the file in the data directory a running userd holds an
// exclusive flock on. It also tells the userd commands run beside it
// (sync-clerk, erase-user, migrate, db-url) how to reach its database: its
// first line is the holder's pid, its second, once the server answers, the
// server's URL without the password (which stays in the password file).
const lockFileName = "userd.lock"

// ErrInUse reports a data directory another process holds.
var ErrInUse = errors.New("data directory in use")

// ErrNotRunning reports a data directory no userd holds.
var ErrNotRunning = errors.New("no userd runs on the data directory")

// DirLock is a data directory held by this process (see Lock).
type DirLock struct {
	f   *os.File
	dir string
}

// Lock takes the data directory for this process, creating it if needed:
// an exclusive, non-blocking flock on <dataDir>/userd.lock, which the
// kernel releases when the process ends however it ends, so a crash never
// leaves the directory locked. The file is opened close-on-exec (Go's
// default): the PostgreSQL server userd starts does not inherit it, so a
// server orphaned by a killed userd never holds the lock. It fails with
// ErrInUse, having touched nothing, when another process holds it.
//
// userd serve takes it before it binds its ports, so that a second userd
// on the same directory is told so rather than that a port is in use.
func Lock(dataDir string) (*DirLock, error) {
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("USERD_DATA_DIR: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another process"
			if pid, _, rerr := readLockFile(path); rerr == nil && pid > 0 {
				holder = fmt.Sprintf("another userd (pid %d)", pid)
			}
			return nil, fmt.Errorf("%w: USERD_DATA_DIR %s is used by %s; this userd leaves it and its "+
				"PostgreSQL alone: stop the other one first, or give this one another USERD_DATA_DIR "+
				"(or a DATABASE_URL)", ErrInUse, dir, holder)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// The file is userd's alone (it names the server's address).
	_ = f.Chmod(0o600)
	l := &DirLock{f: f, dir: dir}
	l.record("")
	return l, nil
}

// record rewrites the lock file: this process's pid and, when known, the
// server's URL without password.
func (l *DirLock) record(serverURL string) {
	if l == nil || l.f == nil {
		return
	}
	content := strconv.Itoa(os.Getpid()) + "\n"
	if serverURL != "" {
		content += serverURL + "\n"
	}
	if err := l.f.Truncate(0); err == nil {
		_, _ = l.f.WriteAt([]byte(content), 0)
	}
}

// Release releases the data directory, emptying the lock file first so
// that commands run later find no userd there.
func (l *DirLock) Release() {
	if l != nil && l.f != nil {
		_ = l.f.Truncate(0)
		_ = l.f.Close() // closing the descriptor releases the flock
		l.f = nil
	}
}

// readLockFile reads the holder's pid and the server's URL (without
// password, "" when not recorded yet).
func readLockFile(path string) (pid int, serverURL string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if sc.Scan() {
		pid, _ = strconv.Atoi(strings.TrimSpace(sc.Text()))
	}
	if sc.Scan() {
		serverURL = strings.TrimSpace(sc.Text())
	}
	return pid, serverURL, sc.Err()
}

// Running is the embedded database of the userd that holds dataDir.
type Running struct {
	// URL connects to the userd database as the userd role, password
	// included.
	URL string
	// PID is the holding userd's process id.
	PID int
}

// Attach finds the database of the userd that runs on dataDir, for
// commands run beside it: the server's address from the lock file, the
// password from the password file (both readable only by userd's user),
// checked by connecting. It fails with ErrNotRunning when no userd holds
// the directory, and says why when one does but its database does not
// answer (yet).
//
// It never takes the lock itself, even for a moment: a userd starting at
// that moment would take it for another userd and refuse to start.
func Attach(ctx context.Context, dataDir string) (Running, error) {
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return Running{}, fmt.Errorf("USERD_DATA_DIR: %w", err)
	}
	pid, serverURL, err := readLockFile(filepath.Join(dir, lockFileName))
	if errors.Is(err, os.ErrNotExist) || (err == nil && !alive(pid)) {
		return Running{}, fmt.Errorf("%w %s", ErrNotRunning, dir)
	}
	if err != nil {
		return Running{}, fmt.Errorf("read %s: %w", filepath.Join(dir, lockFileName), err)
	}
	if serverURL == "" {
		return Running{}, fmt.Errorf("the userd (pid %d) on USERD_DATA_DIR %s has not started its PostgreSQL yet: "+
			"try again once it logs \"userd ready\"", pid, dir)
	}
	u, err := neturl.Parse(serverURL)
	if err != nil || u.Scheme != "postgres" || u.User == nil {
		return Running{}, fmt.Errorf("%s does not hold a database URL: is it a file of this userd release?",
			filepath.Join(dir, lockFileName))
	}
	if host, _, err := net.SplitHostPort(u.Host); err != nil || !net.ParseIP(host).IsLoopback() {
		// Only ever written by Start, which listens on 127.0.0.1.
		return Running{}, fmt.Errorf("%s names a server that is not on loopback", filepath.Join(dir, lockFileName))
	}
	pw, err := os.ReadFile(filepath.Join(dir, "password"))
	if err != nil {
		return Running{}, fmt.Errorf("read the embedded database's password: %w (run this command as the user the "+
			"running userd runs as)", err)
	}
	u.User = neturl.UserPassword(u.User.Username(), strings.TrimSpace(string(pw)))
	r := Running{URL: u.String(), PID: pid}
	if err := ping(ctx, r.URL); err != nil {
		return Running{}, fmt.Errorf("the embedded PostgreSQL of the userd (pid %d) on USERD_DATA_DIR %s does not answer "+
			"at %s: %w", pid, dir, u.Host, err)
	}
	return r, nil
}

// alive reports whether process pid exists (EPERM: it does, as another
// user's).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
