package pgembed

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
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
	"github.com/jackc/pgx/v5/pgproto3"
)

// dataDirFor returns a data directory the server's account can reach when
// the tests run as root (t.TempDir's parents are 0700).
func dataDirFor(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(base, "data")
}

func start(t *testing.T, dataDir string) *Server {
	t.Helper()
	srv, err := Start(context.Background(), Config{DataDir: dataDir})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	return srv
}

func owner(t *testing.T, path string) (uid, gid int) {
	t.Helper()
	info, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := info.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

func lookupAccount(t *testing.T, name string) (serverAccount, bool) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		return serverAccount{}, false
	}
	a, err := toAccount(u)
	if err != nil {
		t.Fatal(err)
	}
	return a, true
}

func query(t *testing.T, url, sql string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var out string
	if err := conn.QueryRow(ctx, sql).Scan(&out); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// cleartextRefused offers the server the password in cleartext, as the
// "password" method would have it: the server must ask for SCRAM instead
// and refuse the cleartext password.
func cleartextRefused(t *testing.T, url, password string) {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": cfg.User, "database": cfg.Database}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	sasl, ok := msg.(*pgproto3.AuthenticationSASL)
	if !ok {
		t.Errorf("the server asked for %T, want SCRAM-SHA-256 (AuthenticationSASL)", msg)
	} else if !strings.Contains(strings.Join(sasl.AuthMechanisms, ","), "SCRAM-SHA-256") {
		t.Errorf("SASL mechanisms %v, want SCRAM-SHA-256", sasl.AuthMechanisms)
	}
	fe.Send(&pgproto3.PasswordMessage{Password: password})
	if err := fe.Flush(); err != nil {
		return // hung up: refused
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			return // hung up: refused
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return
		case *pgproto3.AuthenticationOk, *pgproto3.ReadyForQuery:
			t.Fatalf("a cleartext password was accepted (%T)", m)
		}
	}
}

// checkPrivate asserts userd's settings on a running server: the account,
// the modes and owners, pg_hba.conf, SCRAM everywhere.
func checkPrivate(t *testing.T, srv *Server, dataDir string) {
	t.Helper()
	pgData := filepath.Join(dataDir, "pg", "data")
	pid, _, ok := postmaster(pgData)
	if !ok {
		t.Fatal("no server runs on the data directory")
	}
	if os.Geteuid() == 0 {
		acct, ok := lookupAccount(t, AccountName)
		if !ok {
			t.Fatalf("no %s account", AccountName)
		}
		if uid, _ := owner(t, filepath.Join("/proc", strconv.Itoa(pid))); uid != acct.uid {
			t.Errorf("the server runs as uid %d, want %s (%d)", uid, AccountName, acct.uid)
		}
		if pg, ok := lookupAccount(t, "postgres"); ok && pg.uid == acct.uid {
			t.Errorf("%s is the postgres account", AccountName)
		}
		_ = filepath.WalkDir(filepath.Join(dataDir, "pg"), func(path string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if uid, gid := owner(t, path); uid != acct.uid || gid != acct.gid {
				t.Errorf("%s owned by %d:%d, want %s %d:%d", path, uid, gid, AccountName, acct.uid, acct.gid)
			}
			return nil
		})
		if _, gid := owner(t, dataDir); gid != acct.gid {
			t.Errorf("data directory group %d, want %s's %d", gid, AccountName, acct.gid)
		}
	}
	wantDataDirMode := fs.FileMode(0o700)
	if os.Geteuid() == 0 {
		wantDataDirMode = 0o710 // the account's group may traverse to pg/, nothing more
	}
	for path, want := range map[string]fs.FileMode{
		dataDir: wantDataDirMode, filepath.Join(dataDir, "pg"): 0o700, pgData: 0o700,
		filepath.Join(dataDir, "password"): 0o600, filepath.Join(dataDir, lockFileName): 0o600,
		filepath.Join(dataDir, "wrappers"): 0o700, filepath.Join(pgData, "pg_hba.conf"): 0o600,
	} {
		info, err := os.Stat(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, info.Mode().Perm(), want)
		}
	}
	if uid, _ := owner(t, filepath.Join(dataDir, "password")); uid != os.Geteuid() {
		t.Errorf("the password file is owned by uid %d, want userd's %d", uid, os.Geteuid())
	}
	hba, err := os.ReadFile(filepath.Join(pgData, "pg_hba.conf"))
	if err != nil || string(hba) != hbaConf {
		t.Errorf("pg_hba.conf = %q (%v), want userd's", hba, err)
	}
	if got := query(t, srv.URL, "SHOW password_encryption"); got != "scram-sha-256" {
		t.Errorf("password_encryption = %s", got)
	}
	if got := query(t, srv.URL, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = current_user"); got != "SCRAM-SHA-256$" {
		t.Errorf("the userd role's password is stored as %q..., want a SCRAM verifier", got)
	}
	if got := query(t, srv.URL, "SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules"); got != "scram-sha-256" {
		t.Errorf("pg_hba methods in force: %s", got)
	}
	pw, err := os.ReadFile(filepath.Join(dataDir, "password"))
	if err != nil {
		t.Fatal(err)
	}
	cleartextRefused(t, srv.URL, strings.TrimSpace(string(pw)))
}

// TestServerIsPrivate: a new embedded server runs as the dedicated
// account (as root), nothing in its data directory is open to other
// accounts, and it accepts SCRAM-SHA-256 logins only.
func TestServerIsPrivate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real PostgreSQL server: not in -short (make test-fast)")
	}
	t.Parallel()
	dataDir := dataDirFor(t)
	srv := start(t, dataDir)
	checkPrivate(t, srv, dataDir)
}

// TestOlderLayoutIsMigrated: a data directory as an older userd left it —
// owned by the distribution's postgres account, cleartext "password"
// authentication, an MD5-hashed password, and (as after a crash) the
// server still running as postgres — is taken over: the server is
// stopped, the files handed to the dedicated account, the password stored
// as a SCRAM verifier and pg_hba.conf replaced, with the data kept.
func TestOlderLayoutIsMigrated(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real PostgreSQL servers: not in -short (make test-fast)")
	}
	t.Parallel()
	dataDir := dataDirFor(t)
	pgData := filepath.Join(dataDir, "pg", "data")
	srv := start(t, dataDir)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}

	// Rebuild what an older userd left behind.
	oldHBA := "local all all password\nhost all all 127.0.0.1/32 password\nhost all all ::1/128 password\n"
	if err := os.WriteFile(filepath.Join(pgData, "pg_hba.conf"), []byte(oldHBA), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dataDir, "password"), 0o644); err != nil {
		t.Fatal(err)
	}
	pgCtl := []string{filepath.Join(dataDir, "wrappers", "bin", "pg_ctl")}
	if pg, ok := lookupAccount(t, "postgres"); ok && os.Geteuid() == 0 {
		if err := os.Chmod(dataDir, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := filepath.Walk(filepath.Join(dataDir, "pg"), func(path string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(path, pg.uid, pg.gid)
		}); err != nil {
			t.Fatal(err)
		}
		binDir, _, err := findBinaries("")
		if err != nil || binDir == "" {
			t.Fatalf("no PostgreSQL binaries: %v", err)
		}
		pgCtl = []string{"setpriv", fmt.Sprintf("--reuid=%d", pg.uid), fmt.Sprintf("--regid=%d", pg.gid), "--clear-groups",
			filepath.Join(binDir, "pg_ctl")}
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	args := append(pgCtl[1:], "start", "-w", "-D", pgData, "-l", filepath.Join(t.TempDir(), "old.log"),
		"-o", fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=''", port))
	if os.Geteuid() == 0 {
		_ = os.Chmod(filepath.Dir(args[len(args)-3]), 0o777) // the log's directory, for postgres
	}
	if out, err := exec.Command(pgCtl[0], args...).CombinedOutput(); err != nil {
		t.Fatalf("start the old-style server: %v\n%s", err, out)
	}
	oldPID, _, _ := postmaster(pgData)
	t.Cleanup(func() { _ = syscall.Kill(oldPID, syscall.SIGKILL) })
	pw, _ := os.ReadFile(filepath.Join(dataDir, "password"))
	oldURL := url(strings.TrimSpace(string(pw)), uint32(port))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, oldURL)
	if err != nil {
		t.Fatalf("connect to the old-style server: %v", err)
	}
	for _, stmt := range []string{
		"ALTER SYSTEM SET password_encryption = 'md5'",
		"SET password_encryption = 'md5'",
		"ALTER ROLE CURRENT_USER PASSWORD " + quoteLiteral(strings.TrimSpace(string(pw))),
		"CREATE TABLE kept (v text)",
		"INSERT INTO kept VALUES ('from the old layout')",
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	_ = conn.Close(ctx)
	if got := query(t, oldURL, "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = current_user"); got != "md5" {
		t.Fatalf("the old-style password is stored as %q...", got)
	}

	srv = start(t, dataDir)
	if pid, _, _ := postmaster(pgData); pid == oldPID && os.Geteuid() == 0 {
		t.Errorf("the server an older userd left running as postgres was kept (pid %d)", pid)
	}
	checkPrivate(t, srv, dataDir)
	if got := query(t, srv.URL, "SELECT v FROM kept"); got != "from the old layout" {
		t.Errorf("data after the migration: %q", got)
	}
}

// TestDataDirectoryLock: a second Start on a data directory in use fails
// with ErrInUse and leaves the first server running; once the holder is
// gone without stopping its server (Detach, as a killed userd), the next
// Start adopts that server.
func TestDataDirectoryLock(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real PostgreSQL servers: not in -short (make test-fast)")
	}
	t.Parallel()
	dataDir := dataDirFor(t)
	first := start(t, dataDir)
	pgData := filepath.Join(dataDir, "pg", "data")
	pid, _, _ := postmaster(pgData)

	_, err := Start(context.Background(), Config{DataDir: dataDir})
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("another userd (pid %d)", os.Getpid())) {
		t.Fatalf("second Start: %v, want ErrInUse naming pid %d", err, os.Getpid())
	}
	if now, _, ok := postmaster(pgData); !ok || now != pid {
		t.Fatalf("after the refused start the server is %d (running %v), want %d", now, ok, pid)
	}
	if err := ping(context.Background(), first.URL); err != nil {
		t.Fatalf("the first server stopped answering: %v", err)
	}
	// Commands run beside the holder reach its server through the lock
	// file (address) and the password file, without taking the lock.
	running, err := Attach(context.Background(), dataDir)
	if err != nil || running.URL != first.URL || running.PID != os.Getpid() {
		t.Fatalf("Attach = %+v, %v; want %s of pid %d", running, err, first.URL, os.Getpid())
	}
	if got := query(t, running.URL, "SELECT current_user"); got != dbUser {
		t.Errorf("attached as %q, want %q", got, dbUser)
	}
	if fi, err := os.Stat(filepath.Join(dataDir, lockFileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v, %v; want mode 0600", fi, err)
	}

	first.Detach()
	adopter := start(t, dataDir)
	if adopter.AdoptedPID() != pid || adopter.URL != first.URL {
		t.Errorf("after the holder went: adopted pid %d at %s, want %d at %s", adopter.AdoptedPID(), adopter.URL, pid, first.URL)
	}
	if err := adopter.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := postmaster(pgData); ok {
		t.Error("the adopted server still runs after Stop")
	}
	if _, err := Attach(context.Background(), dataDir); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Attach after Stop: %v, want ErrNotRunning", err)
	}
}

// TestAttachBeforeTheServer: commands beside a userd that holds the data
// directory but has no server yet are told to wait; without a holder,
// ErrNotRunning. The lock comes first (userd serve takes it before its
// ports), and a second Lock names the holder.
func TestAttachBeforeTheServer(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	if _, err := Attach(context.Background(), dataDir); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Attach without a userd: %v, want ErrNotRunning", err)
	}
	l, err := Lock(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Lock(dataDir); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("(pid %d)", os.Getpid())) {
		t.Errorf("second Lock: %v, want ErrInUse naming pid %d", err, os.Getpid())
	}
	if _, err := Attach(context.Background(), dataDir); err == nil || !strings.Contains(err.Error(), "has not started its PostgreSQL yet") {
		t.Errorf("Attach before the server: %v", err)
	}
	l.Release()
	if _, err := Attach(context.Background(), dataDir); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Attach after Release: %v, want ErrNotRunning", err)
	}
	// (Not asserted: that a Lock right after Release succeeds. A process
	// the parallel tests fork holds a copy of the descriptor until its
	// exec closes it, and with it the flock, for that moment.)
}
