package store

import (
	"context"
	"errors"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ConfigureFailover makes a pool follow the primary across a failover or a
// switchover, with a DATABASE_URL that names every node and asks for the
// writable one (postgres://a:5432,b:5432/userd?target_session_attrs=read-write,
// or host=a,b ... target_session_attrs=read-write): pgx tries the hosts in
// order and keeps the first that accepts writes, for every new connection.
// What is left to do is to never keep using a connection to a node that is
// no longer the primary:
//
//   - A server shutting down (the old primary, killed or demoted) ends its
//     sessions with admin_shutdown or crash_shutdown; pgx already closes a
//     connection on any FATAL error, and a connection whose server vanished
//     fails its next statement with a network error and is closed too. The
//     pool destroys closed connections when they are released, and pings
//     those idle for over a second before handing them out (pgxpool's
//     ShouldPing default).
//   - A connection still open to a server that now refuses writes answers
//     read_only_sql_transaction (SQLSTATE 25006) with severity ERROR, after
//     which pgx would keep it. OnPgError closes it instead, so the call
//     fails UNAVAILABLE (translate) once and its retry gets a connection to
//     the new primary.
//   - PostgreSQL (14+) reports in_hot_standby and
//     default_transaction_read_only to the client whenever they change;
//     PrepareConn drops an idle connection whose server says it is a
//     standby or read-only before a call uses it, at no round trip, and
//     fails that call UNAVAILABLE (errNotPrimary) rather than letting the
//     pool retry at once: a DATABASE_URL naming only a standby would
//     otherwise have the pool open and drop connections in a tight loop.
func ConfigureFailover(cfg *pgxpool.Config) {
	next := cfg.ConnConfig.OnPgError
	cfg.ConnConfig.OnPgError = func(c *pgconn.PgConn, pgErr *pgconn.PgError) bool {
		if closesConn(pgErr.Code) {
			return false
		}
		if next != nil {
			return next(c, pgErr)
		}
		return true
	}
	prepare := cfg.PrepareConn
	cfg.PrepareConn = func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		if !writable(conn.PgConn()) {
			return false, errNotPrimary
		}
		if prepare != nil {
			return prepare(ctx, conn)
		}
		return true, nil
	}
}

// errNotPrimary fails a call whose pooled connection turned out to be to a
// standby or a read-only server; translate makes it UNAVAILABLE.
var errNotPrimary = errors.New("the database connection is to a standby or read-only server (failover?)")

// closesConn reports the errors after which a connection is never used
// again: it is to a node that is no longer (or not yet) the primary.
func closesConn(code string) bool {
	switch code {
	case pgerrcode.ReadOnlySQLTransaction, pgerrcode.AdminShutdown, pgerrcode.CrashShutdown, pgerrcode.CannotConnectNow:
		return true
	}
	return false
}

// writable reports whether the server last said it accepts writes (an
// empty status, from a server that does not report it, counts as yes:
// the first write then fails 25006 and closes the connection).
func writable(c *pgconn.PgConn) bool {
	return c.ParameterStatus("in_hot_standby") != "on" && c.ParameterStatus("default_transaction_read_only") != "on"
}
