package store

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/userd/userd/internal/apperr"
)

// TestTimeoutSQLSTATEsAreUnavailable: every way PostgreSQL ends work for
// taking too long is a retryable Unavailable, never internal; an error
// that is no timeout stays internal.
func TestTimeoutSQLSTATEsAreUnavailable(t *testing.T) {
	t.Parallel()
	for code, want := range map[string]apperr.Kind{
		"57014": apperr.KindUnavailable, // query_canceled: statement_timeout
		"55P03": apperr.KindUnavailable, // lock_not_available: lock_timeout
		"25P03": apperr.KindUnavailable, // idle_in_transaction_session_timeout
		"25P04": apperr.KindUnavailable, // transaction_timeout
		"42P01": apperr.KindInternal,    // undefined_table: a bug, not a timeout
		// A failover: the connection is to a server that became a standby,
		// or that is shutting down or starting.
		"25006": apperr.KindUnavailable, // read_only_sql_transaction
		"57P01": apperr.KindUnavailable, // admin_shutdown
		"57P02": apperr.KindUnavailable, // crash_shutdown
		"57P03": apperr.KindUnavailable, // cannot_connect_now
		"08006": apperr.KindUnavailable, // connection_failure
		"23514": apperr.KindInternal,    // check_violation: a bug, not a failover
	} {
		err := translate(fmt.Errorf("query: %w", &pgconn.PgError{Code: code}))
		if got := apperr.KindOf(err); got != want {
			t.Errorf("SQLSTATE %s: kind %v, want %v", code, got, want)
		}
	}
}
