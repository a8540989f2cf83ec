package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// hangGuard is how long these tests wait before calling an operation hung:
// far beyond every bound they set.
const hangGuard = 20 * time.Second

// slack is what an answer may take beyond its bound on a busy machine.
const slack = time.Second

// poolWith opens a pool of at most maxConns connections on url whose
// sessions have the timeouts t.
func poolWith(t *testing.T, url string, maxConns int32, timeouts store.SessionTimeouts) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	timeouts.Apply(cfg.ConnConfig)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// timed runs op with no deadline of its own and returns how long it took
// and its error. An op still running after hangGuard fails the test and is
// left to finish in the background (ok false).
func timed(t *testing.T, name string, op func() error) (took time.Duration, ok bool, err error) {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- op() }()
	select {
	case err := <-done:
		return time.Since(start), true, err
	case <-time.After(hangGuard):
		t.Errorf("%s: no answer after %s: it hangs", name, hangGuard)
		return hangGuard, false, nil
	}
}

// wantUnavailable checks err is Unavailable and, when code is not empty,
// caused by that SQLSTATE.
func wantUnavailable(t *testing.T, name string, err error, code string) {
	t.Helper()
	if k := apperr.KindOf(err); k != apperr.KindUnavailable {
		t.Errorf("%s: kind %v (%v), want unavailable", name, k, err)
	}
	var pgErr *pgconn.PgError
	if code != "" && (!errors.As(err, &pgErr) || pgErr.Code != code) {
		t.Errorf("%s: %v, want SQLSTATE %s", name, err, code)
	}
}

// holdRowLock grants clerkID a credit in a transaction on pool that it
// leaves open, holding the user's row lock, as a stuck client would; the
// returned func (also run at cleanup) rolls it back.
func holdRowLock(t *testing.T, pool *pgxpool.Pool, clerkID string) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sqlcdb.New().ChangeCredits(ctx, tx, sqlcdb.ChangeCreditsParams{
		ClerkUserID: clerkID, Kind: string(users.TxGrant), Delta: 1, IdempotencyKey: "lock-holder",
	}); err != nil {
		t.Fatal(err)
	}
	release = func() { _ = tx.Rollback(ctx) }
	t.Cleanup(release)
	return release
}

// TestAcquireWaitIsBounded: with every pool connection taken, a call
// without a deadline waits at most the acquire timeout and fails
// Unavailable — reads and transactions alike — and works again once a
// connection is free.
func TestAcquireWaitIsBounded(t *testing.T) {
	t.Parallel()
	const acquire = 300 * time.Millisecond
	pool := poolWith(t, testdb.URL(t), 1, store.SessionTimeouts{})
	svc := users.NewService(store.New(pool, store.Options{AcquireTimeout: acquire}), users.Options{InitialCredits: 10})
	ctx := context.Background()
	if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_busy"}); err != nil {
		t.Fatal(err)
	}
	held, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(held.Release) // before the pool closes, should the test fail
	ops := []struct {
		name string
		op   func() error
	}{
		{"GetUser", func() error {
			_, err := svc.GetUser(ctx, users.Lookup{ClerkUserID: "user_busy"})
			return err
		}},
		{"DeductCredits", func() error {
			_, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_busy", Amount: 1, IdempotencyKey: "k"})
			return err
		}},
		{"ListCreditTransactions", func() error {
			_, err := svc.ListCreditTransactions(ctx, "user_busy", 10, "")
			return err
		}},
	}
	for _, o := range ops {
		took, ok, err := timed(t, o.name, o.op)
		if !ok {
			continue
		}
		wantUnavailable(t, o.name, err, "")
		if took > acquire+slack {
			t.Errorf("%s with the pool exhausted took %s, beyond the %s acquire timeout", o.name, took, acquire)
		}
	}
	held.Release()
	for _, o := range ops {
		if err := o.op(); err != nil {
			t.Errorf("%s with a free connection: %v", o.name, err)
		}
	}
}

// TestSessionTimeouts: PostgreSQL itself ends a statement that waits too
// long for a lock (lock_timeout) or runs too long (statement_timeout, here
// spent waiting on the lock), and a transaction a client left idle
// (idle_in_transaction_session_timeout), freeing its locks. The first two
// surface as Unavailable, the retryable kind, never as internal.
func TestSessionTimeouts(t *testing.T) {
	t.Parallel()
	const bound = 200 * time.Millisecond
	ctx := context.Background()
	deduct := func(svc *users.Service, clerkID string) func() error {
		return func() error {
			_, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: 1, IdempotencyKey: "k"})
			return err
		}
	}
	for _, tc := range []struct {
		name     string
		timeouts store.SessionTimeouts
		code     string
	}{
		{"LockTimeout", store.SessionTimeouts{Lock: bound}, pgerrcode.LockNotAvailable},
		{"StatementTimeout", store.SessionTimeouts{Statement: bound}, pgerrcode.QueryCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := poolWith(t, testdb.URL(t), 4, tc.timeouts)
			svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10})
			if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_locked"}); err != nil {
				t.Fatal(err)
			}
			release := holdRowLock(t, pool, "user_locked")
			took, ok, err := timed(t, "DeductCredits", deduct(svc, "user_locked"))
			if !ok {
				return
			}
			t.Logf("DeductCredits behind a held row lock: %s: %v", took.Round(time.Millisecond), err)
			wantUnavailable(t, "DeductCredits behind a held row lock", err, tc.code)
			release()
			if err := deduct(svc, "user_locked")(); err != nil {
				t.Errorf("DeductCredits once the lock is free: %v", err)
			}
		})
	}
	t.Run("IdleInTransactionTimeout", func(t *testing.T) {
		t.Parallel()
		pool := poolWith(t, testdb.URL(t), 4, store.SessionTimeouts{IdleInTransaction: bound})
		svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10})
		if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_idle"}); err != nil {
			t.Fatal(err)
		}
		holdRowLock(t, pool, "user_idle") // and never come back
		took, ok, err := timed(t, "DeductCredits", deduct(svc, "user_idle"))
		if !ok {
			return
		}
		t.Logf("DeductCredits behind a transaction left idle: %s: %v", took.Round(time.Millisecond), err)
		if err != nil {
			t.Errorf("DeductCredits behind a transaction left idle: %v; want it to go through once the server ended that session", err)
		}
	})
}
