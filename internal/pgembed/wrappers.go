package pgembed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// AccountName is the system account the embedded server runs as when
// userd is root. It is userd's alone: never the distribution's "postgres",
// whose processes and superusers are not userd's to trust.
const AccountName = "userd-pg"

// serverAccount is the account the server runs as when userd is root.
type serverAccount struct {
	name     string
	uid, gid int
}

// prepareWrappers writes <dataDir>/wrappers/bin/{pg_ctl,initdb}, which run
// the real binaries in a new session and, for root, as the dedicated
// account, which then owns the server's directory. It returns the
// wrappers' base path (the library's BinariesPath) and, for root, the
// account.
func prepareWrappers(dataDir, pgDir, binDir string) (string, *serverAccount, error) {
	base := filepath.Join(dataDir, "wrappers")
	if err := os.MkdirAll(filepath.Join(base, "bin"), 0o700); err != nil {
		return "", nil, fmt.Errorf("create wrapper directory: %w", err)
	}
	if err := os.Chmod(base, 0o700); err != nil { // an older userd made it 0755
		return "", nil, err
	}
	setsid, err := exec.LookPath("setsid")
	if err != nil {
		return "", nil, fmt.Errorf("setsid (util-linux) is needed to run the embedded database: %w", err)
	}
	prefix := setsid + " -w"
	what := "in its own session"
	pwfile := ""
	var acct *serverAccount
	if os.Geteuid() == 0 {
		a, err := ensureAccount()
		if err != nil {
			return "", nil, err
		}
		acct = &a
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			return "", nil, fmt.Errorf("setpriv (util-linux) is needed to run the embedded database as root: %w", err)
		}
		if err := handOver(dataDir, pgDir, a); err != nil {
			return "", nil, err
		}
		prefix += fmt.Sprintf(" %s --reuid=%d --regid=%d --clear-groups", setpriv, a.uid, a.gid)
		what += " as " + a.name
		// The library writes initdb's password file as root; let the
		// server account read it.
		pwfile = fmt.Sprintf("  --pwfile=*) chown %d \"${a#--pwfile=}\" ;;\n", a.uid)
	}
	// The library asks initdb for cleartext password authentication (-A
	// password); a new cluster gets SCRAM-SHA-256 from the start instead
	// (secure.go then replaces pg_hba.conf with userd's own).
	initdbArgs := "prev=\n" +
		"for a do\n" +
		"  shift\n" +
		"  case \"$prev:$a\" in\n" +
		"  -A:password) a=scram-sha-256 ;;\n" +
		"  esac\n" +
		"  case \"$a\" in\n" + pwfile + "  esac\n" +
		"  prev=$a\n" +
		"  set -- \"$@\" \"$a\"\n" +
		"done\n"
	for _, name := range []string{"pg_ctl", "initdb"} {
		script := "#!/bin/sh\n# Written by userd (internal/pgembed): run " + name + " " + what + ".\n"
		if name == "initdb" {
			script += initdbArgs
		}
		script += "exec " + prefix + " " + shellQuote(filepath.Join(binDir, name)) + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(base, "bin", name), []byte(script), 0o700); err != nil {
			return "", nil, fmt.Errorf("write %s wrapper: %w", name, err)
		}
		if err := os.Chmod(filepath.Join(base, "bin", name), 0o700); err != nil {
			return "", nil, err
		}
	}
	return base, acct, nil
}

// ensureAccount finds the dedicated account, creating it when missing: a
// system account with its own group, no home directory and no login shell.
func ensureAccount() (serverAccount, error) {
	if u, err := user.Lookup(AccountName); err == nil {
		return toAccount(u)
	}
	shell := "/usr/sbin/nologin"
	for _, sh := range []string{"/usr/sbin/nologin", "/sbin/nologin", "/bin/false"} {
		if _, err := os.Stat(sh); err == nil {
			shell = sh
			break
		}
	}
	out, err := exec.Command("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
		"--shell", shell, "--comment", "userd embedded PostgreSQL", AccountName).CombinedOutput()
	u, lerr := user.Lookup(AccountName)
	if lerr != nil { // useradd may fail because another userd just created it
		return serverAccount{}, fmt.Errorf("PostgreSQL cannot run as root and creating the system account %q "+
			"for it failed: %v: %s (create it by hand: useradd --system --user-group --no-create-home "+
			"--shell %s %s)", AccountName, err, strings.TrimSpace(string(out)), shell, AccountName)
	}
	return toAccount(u)
}

func toAccount(u *user.User) (serverAccount, error) {
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return serverAccount{}, fmt.Errorf("account %s has non-numeric ids", u.Username)
	}
	if uid == 0 || gid == 0 {
		return serverAccount{}, fmt.Errorf("account %s has uid %d, gid %d: the embedded PostgreSQL needs an "+
			"unprivileged account of its own", u.Username, uid, gid)
	}
	return serverAccount{name: u.Username, uid: uid, gid: gid}, nil
}

// handOver gives the server account the pg directory (and nothing else)
// and lets it, and only it, traverse the data directory: the data
// directory becomes 0710 with the account's group, so other accounts can
// neither list nor enter it. A data directory an older userd gave to
// another account (the distribution's "postgres") is taken back: a server
// still running from it as that account is stopped first.
func handOver(dataDir, pgDir string, acct serverAccount) error {
	for dir := filepath.Dir(dataDir); ; dir = filepath.Dir(dir) {
		info, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("the embedded database's account %s cannot reach %s: directory %s is not "+
				"traversable by others; choose another USERD_DATA_DIR (default for root: /var/lib/userd) "+
				"or chmod o+x %s", acct.name, dataDir, dir, dir)
		}
		if dir == "/" || dir == filepath.Dir(dir) {
			break
		}
	}
	if err := os.Chown(dataDir, -1, acct.gid); err != nil {
		return err
	}
	if err := os.Chmod(dataDir, 0o710); err != nil {
		return err
	}
	pgData := filepath.Join(pgDir, "data")
	if err := stopForeignServer(pgData, acct); err != nil {
		return err
	}
	err := filepath.Walk(pgDir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, acct.uid, acct.gid)
	})
	if err != nil {
		return err
	}
	if err := os.Chmod(pgDir, 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(pgData); err == nil {
		return os.Chmod(pgData, 0o700)
	}
	return nil
}

// stopForeignServer stops a server running on pgData as another account
// than acct (started by an older userd as "postgres"): it would lose
// access to its files once they are handed over. SIGINT is PostgreSQL's
// fast shutdown.
func stopForeignServer(pgData string, acct serverAccount) error {
	pid, _, ok := postmaster(pgData)
	if !ok {
		return nil
	}
	info, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	if err != nil {
		return nil // gone meanwhile
	}
	st, _ := info.Sys().(*syscall.Stat_t)
	if st == nil || int(st.Uid) == acct.uid {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop the embedded PostgreSQL (pid %d) an older userd left running as uid %d: %w", pid, st.Uid, err)
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, _, ok := postmaster(pgData); !ok {
			return nil
		}
	}
	return fmt.Errorf("the embedded PostgreSQL (pid %d) an older userd left running as uid %d did not stop within 60s", pid, st.Uid)
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
