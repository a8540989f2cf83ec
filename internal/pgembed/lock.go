package pgembed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFileName is the file in the data directory a running userd holds an
// exclusive flock on.
const lockFileName = "userd.lock"

// ErrInUse reports a data directory another process holds.
var ErrInUse = errors.New("data directory in use")

// lockDataDir takes the data directory for this process: an exclusive,
// non-blocking flock on <dataDir>/userd.lock, which the kernel releases when
// the process ends however it ends, so a crash never leaves the directory
// locked. The file is opened close-on-exec (Go's default): the PostgreSQL
// server userd starts does not inherit it, so a server orphaned by a
// killed userd never holds the lock. The file records the holder's pid for
// the message a second userd prints.
func lockDataDir(dataDir string) (*os.File, error) {
	path := filepath.Join(dataDir, lockFileName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another process"
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
					holder = fmt.Sprintf("another userd (pid %d)", pid)
				}
			}
			return nil, fmt.Errorf("%w: USERD_DATA_DIR %s is used by %s; this userd leaves it and its "+
				"PostgreSQL alone: stop the other one first, or give this one another USERD_DATA_DIR "+
				"(or a DATABASE_URL)", ErrInUse, dataDir, holder)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
