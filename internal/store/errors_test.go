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
	} {
		err := translate(fmt.Errorf("query: %w", &pgconn.PgError{Code: code}))
		if got := apperr.KindOf(err); got != want {
			t.Errorf("SQLSTATE %s: kind %v, want %v", code, got, want)
		}
	}
}
