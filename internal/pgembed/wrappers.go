package pgembed

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// serverAccount is the account the server runs as when userd is root.
type serverAccount struct {
	name     string
	uid, gid int
}

// prepareWrappers writes <dataDir>/wrappers/bin/{pg_ctl,initdb}, which run
// the real binaries in a new session and, for root, as an unprivileged
// account that then owns the server's directories. It returns the
// wrappers' base path (the library's BinariesPath).
func prepareWrappers(dataDir, pgDir, binDir string) (string, error) {
	base := filepath.Join(dataDir, "wrappers")
	if err := os.MkdirAll(filepath.Join(base, "bin"), 0o755); err != nil {
		return "", fmt.Errorf("create wrapper directory: %w", err)
	}
	setsid, err := exec.LookPath("setsid")
	if err != nil {
		return "", fmt.Errorf("setsid (util-linux) is needed to run the embedded database: %w", err)
	}
	prefix := setsid + " -w"
	what := "in its own session"
	chown := ""
	if os.Geteuid() == 0 {
		acct, err := ensureAccount()
		if err != nil {
			return "", err
		}
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			return "", fmt.Errorf("setpriv (util-linux) is needed to run the embedded database as root: %w", err)
		}
		if err := handOver(dataDir, pgDir, acct); err != nil {
			return "", err
		}
		prefix += fmt.Sprintf(" %s --reuid=%d --regid=%d --clear-groups", setpriv, acct.uid, acct.gid)
		what += " as " + acct.name
		// The library writes initdb's password file as root; let the
		// server account read it.
		chown = fmt.Sprintf("for a in \"$@\"; do case \"$a\" in --pwfile=*) chown %d \"${a#--pwfile=}\";; esac; done\n", acct.uid)
	}
	for _, name := range []string{"pg_ctl", "initdb"} {
		script := "#!/bin/sh\n# Written by userd (internal/pgembed): run " + name + " " + what + ".\n"
		if name == "initdb" {
			script += chown
		}
		script += "exec " + prefix + " " + shellQuote(filepath.Join(binDir, name)) + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(base, "bin", name), []byte(script), 0o755); err != nil {
			return "", fmt.Errorf("write %s wrapper: %w", name, err)
		}
	}
	return base, nil
}

// ensureAccount finds the "postgres" account, or creates "userd-pg".
func ensureAccount() (serverAccount, error) {
	for _, name := range []string{"postgres", "userd-pg"} {
		if u, err := user.Lookup(name); err == nil {
			return toAccount(u)
		}
	}
	out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
		"--user-group", "userd-pg").CombinedOutput()
	if err != nil {
		return serverAccount{}, fmt.Errorf("PostgreSQL cannot run as root and no \"postgres\" account exists; "+
			"creating \"userd-pg\" failed: %v: %s", err, strings.TrimSpace(string(out)))
	}
	u, err := user.Lookup("userd-pg")
	if err != nil {
		return serverAccount{}, err
	}
	return toAccount(u)
}

func toAccount(u *user.User) (serverAccount, error) {
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return serverAccount{}, fmt.Errorf("account %s has non-numeric ids", u.Username)
	}
	return serverAccount{name: u.Username, uid: uid, gid: gid}, nil
}

// handOver gives the server account the pg directory (and nothing else)
// and lets it traverse the data directory and its parents.
func handOver(dataDir, pgDir string, acct serverAccount) error {
	for dir := dataDir; ; dir = filepath.Dir(dir) {
		info, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o001 == 0 {
			if dir != dataDir {
				return fmt.Errorf("the embedded database's account %s cannot reach %s: directory %s is not "+
					"traversable by others; choose another USERD_DATA_DIR (default for root: /var/lib/userd) "+
					"or chmod o+x %s", acct.name, dataDir, dir, dir)
			}
			if err := os.Chmod(dir, info.Mode().Perm()|0o011); err != nil {
				return err
			}
		}
		if dir == "/" || dir == filepath.Dir(dir) {
			break
		}
	}
	return filepath.Walk(pgDir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, acct.uid, acct.gid)
	})
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
