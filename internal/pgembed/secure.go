package pgembed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// hbaConf is the whole of the embedded server's pg_hba.conf: password
// logins over loopback TCP only, checked with SCRAM-SHA-256 (the password
// never crosses the connection, and what the server stores cannot be
// replayed as a password). The server has no Unix socket
// (unix_socket_directories is empty), so no "local" line is needed.
const hbaConf = `# Written by userd (internal/pgembed) at every start; edits are replaced.
# TYPE  DATABASE  USER  ADDRESS        METHOD
host    all       all   127.0.0.1/32   scram-sha-256
host    all       all   ::1/128        scram-sha-256
`

// secure brings a running server to userd's settings, whatever created
// it: a data directory initialised by an older userd (cleartext
// "password" authentication, possibly an MD5-hashed password) is migrated
// in place. It runs on every start and adoption; once the settings hold it
// changes nothing. The statements are DDL on the server's own
// configuration, which sqlc does not cover: they live here, with the one
// literal (the password) quoted.
func (s *Server) secure(ctx context.Context, password string, acct *serverAccount) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		return fmt.Errorf("connect to the embedded PostgreSQL to check its settings: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	// New passwords are stored as SCRAM verifiers...
	var enc string
	if err := conn.QueryRow(ctx, "SHOW password_encryption").Scan(&enc); err != nil {
		return fmt.Errorf("read password_encryption: %w", err)
	}
	reload := false
	if enc != "scram-sha-256" {
		if _, err := conn.Exec(ctx, "ALTER SYSTEM SET password_encryption = 'scram-sha-256'"); err != nil {
			return fmt.Errorf("set password_encryption: %w", err)
		}
		reload = true
	}
	// ...and so is userd's (an MD5 hash cannot log in over SCRAM): set
	// again while the connection made under the old rules is open.
	var scram bool
	if err := conn.QueryRow(ctx, "SELECT coalesce(rolpassword LIKE 'SCRAM-SHA-256$%', false) FROM pg_authid WHERE rolname = current_user").Scan(&scram); err != nil {
		return fmt.Errorf("read the stored password format: %w", err)
	}
	if !scram {
		if _, err := conn.Exec(ctx, "SET password_encryption = 'scram-sha-256'"); err != nil {
			return fmt.Errorf("set password_encryption: %w", err)
		}
		if _, err := conn.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+quoteLiteral(password)); err != nil {
			return errors.New("store the embedded database password as a SCRAM verifier failed")
		}
	}

	var hbaPath string
	if err := conn.QueryRow(ctx, "SHOW hba_file").Scan(&hbaPath); err != nil {
		return fmt.Errorf("read hba_file: %w", err)
	}
	if cur, err := os.ReadFile(hbaPath); err != nil || !bytes.Equal(cur, []byte(hbaConf)) {
		if err := writeOwned(hbaPath, []byte(hbaConf), acct); err != nil {
			return fmt.Errorf("write %s: %w", hbaPath, err)
		}
		reload = true
	}
	if reload {
		var bad int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL OR auth_method <> 'scram-sha-256'").Scan(&bad); err != nil || bad != 0 {
			return fmt.Errorf("the embedded PostgreSQL rejects userd's pg_hba.conf (%d bad rules, %v)", bad, err)
		}
		if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
			return fmt.Errorf("reload the embedded PostgreSQL's configuration: %w", err)
		}
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal (standard conforming
// strings, always on since PostgreSQL 9.1).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// writeOwned replaces path atomically with data, mode 0600, owned by the
// server's account when there is one.
func writeOwned(path string, data []byte, acct *serverAccount) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".userd-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return err
	}
	if acct != nil {
		if err := os.Chown(tmp.Name(), acct.uid, acct.gid); err != nil {
			return err
		}
	}
	return os.Rename(tmp.Name(), path)
}
