package store

import (
	"context"
	"errors"
	"io"
	"net"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// Constraint names the domain cares about (see db/migrations).
const (
	constraintEmailLive      = "users_email_live_key"
	constraintTransactionKey = "credit_transactions_user_key"
	constraintPlanChangeKey  = "plan_changes_user_key"
	// transaction_timeout (PostgreSQL 17), which pgerrcode does not know yet.
	sqlstateTransactionTimeout = "25P04"
)

// unavailableCode reports the SQLSTATEs that mean "this database could not
// do it now, the same call may work in a moment" (UNAVAILABLE, retried by
// the caller with the same idempotency key):
//   - connection exceptions (class 08), insufficient resources (53),
//     operator intervention (57: query_canceled from statement_timeout,
//     admin_shutdown and crash_shutdown of a primary going down in a
//     failover, cannot_connect_now while it starts);
//   - the session timeouts (SessionTimeouts): the database was too slow
//     this time;
//   - read_only_sql_transaction: the connection is to a server that became
//     a standby (a demoted primary after a failover or switchover);
//     OnPgError closes such a connection, so the retry reaches the new
//     primary (see failover.go).
func unavailableCode(code string) bool {
	switch code {
	case pgerrcode.LockNotAvailable, pgerrcode.IdleInTransactionSessionTimeout, sqlstateTransactionTimeout,
		pgerrcode.ReadOnlySQLTransaction:
		return true
	}
	return pgerrcode.IsConnectionException(code) || pgerrcode.IsInsufficientResources(code) ||
		pgerrcode.IsOperatorIntervention(code)
}

// translate maps a pgx error to the domain's vocabulary: missing rows and
// known unique violations become users' sentinel errors; failures to reach
// the database become apperr Unavailable (or Canceled); everything else is
// returned as is, to surface as internal.
func translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return users.ErrNoRow
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == pgerrcode.UniqueViolation && pgErr.ConstraintName == constraintEmailLive:
			return users.ErrEmailInUse
		case pgErr.Code == pgerrcode.UniqueViolation &&
			(pgErr.ConstraintName == constraintTransactionKey || pgErr.ConstraintName == constraintPlanChangeKey):
			return users.ErrIdempotencyKeyInUse
		case retryable(err), unavailableCode(pgErr.Code):
			return apperr.Unavailable(err)
		}
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return apperr.Canceled(err)
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err):
		return apperr.Unavailable(err)
	case unreachable(err), errors.Is(err, errNotPrimary):
		return apperr.Unavailable(err)
	}
	return err
}

// unreachable reports errors that mean the database could not be talked to.
func unreachable(err error) bool {
	var (
		connectErr *pgconn.ConnectError
		netErr     net.Error
	)
	return errors.As(err, &connectErr) ||
		errors.As(err, &netErr) ||
		// The pool closes at the end of userd's shutdown, after every
		// handler and background task was waited for; one that outlived
		// that wait (internal/app/run.go's stopBound) is told to retry
		// elsewhere, not that userd failed.
		errors.Is(err, puddle.ErrClosedPool) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) ||
		pgconn.SafeToRetry(err)
}

// retryable reports errors after which re-running the whole transaction is
// expected to succeed.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == pgerrcode.SerializationFailure || pgErr.Code == pgerrcode.DeadlockDetected)
}
