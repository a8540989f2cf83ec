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

// Constraint names the domain cares about (see db/schema.sql).
const (
	constraintEmailLive      = "users_email_live_key"
	constraintTransactionKey = "credit_transactions_user_key"
	constraintPlanChangeKey  = "plan_changes_user_key"
)

// sqlstateTransactionTimeout is transaction_timeout's SQLSTATE (PostgreSQL
// 17), which pgerrcode does not list yet.
const sqlstateTransactionTimeout = "25P04"

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
		case retryable(err),
			// The session timeouts (SessionTimeouts) end a call with these;
			// each means "the database was too slow this time", so: retry.
			pgErr.Code == pgerrcode.LockNotAvailable,
			pgErr.Code == pgerrcode.IdleInTransactionSessionTimeout,
			pgErr.Code == sqlstateTransactionTimeout,
			pgerrcode.IsConnectionException(pgErr.Code),
			pgerrcode.IsInsufficientResources(pgErr.Code),
			// query_canceled (statement_timeout), admin or crash shutdown,
			// cannot connect now.
			pgerrcode.IsOperatorIntervention(pgErr.Code):
			return apperr.Unavailable(err)
		}
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return apperr.Canceled(err)
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err):
		return apperr.Unavailable(err)
	case unreachable(err):
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
