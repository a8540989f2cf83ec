package store

import (
	"fmt"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/userd/userd/internal/apperr"
)

// TestTimeoutSQLSTATEsAreUnavailable: every way PostgreSQL ends work for
// taking too long is a retryable Unavailable, never internal; an error
// that is no timeout stays internal.
func TestTimeoutSQLSTATEsAreUnavailable(t *testing.T) {
	t.Parallel()
	for code, want := range map[string]apperr.Kind{
		pgerrcode.QueryCanceled:                   apperr.KindUnavailable, // statement_timeout
		pgerrcode.LockNotAvailable:                apperr.KindUnavailable, // lock_timeout
		pgerrcode.IdleInTransactionSessionTimeout: apperr.KindUnavailable,
		"25P04":                  apperr.KindUnavailable, // transaction_timeout (PostgreSQL 17; not in pgerrcode)
		pgerrcode.UndefinedTable: apperr.KindInternal,    // a bug, not a timeout
		// A failover: the connection is to a server that became a standby,
		// or that is shutting down or starting.
		pgerrcode.ReadOnlySQLTransaction: apperr.KindUnavailable,
		pgerrcode.AdminShutdown:          apperr.KindUnavailable,
		pgerrcode.CrashShutdown:          apperr.KindUnavailable,
		pgerrcode.CannotConnectNow:       apperr.KindUnavailable,
		pgerrcode.ConnectionFailure:      apperr.KindUnavailable,
		pgerrcode.CheckViolation:         apperr.KindInternal, // a bug, not a failover
	} {
		err := translate(fmt.Errorf("query: %w", &pgconn.PgError{Code: code}))
		if got := apperr.KindOf(err); got != want {
			t.Errorf("SQLSTATE %s: kind %v, want %v", code, got, want)
		}
	}
}
