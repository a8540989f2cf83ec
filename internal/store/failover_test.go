package store

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/testdb"
)

func failoverPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testdb.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // every acquire gets the same connection, unless it was destroyed
	ConfigureFailover(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func backendPID(t *testing.T, pool *pgxpool.Pool) int32 {
	t.Helper()
	var pid int32
	if err := pool.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestReadOnlyErrorClosesConnection: a write that a server refuses as
// read-only (SQLSTATE 25006, what a demoted primary answers) fails
// UNAVAILABLE and its connection is never reused, so the retry opens a
// new one (to the new primary, with target_session_attrs=read-write).
func TestReadOnlyErrorClosesConnection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := failoverPool(t)
	before := backendPID(t, pool)
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "CREATE TEMPORARY TABLE t (i int)")
		return err
	})
	if err == nil {
		t.Fatal("a write in a read-only transaction succeeded")
	}
	if k := apperr.KindOf(translate(err)); k != apperr.KindUnavailable {
		t.Fatalf("read-only error: kind %v, want unavailable (%v)", k, err)
	}
	if after := backendPID(t, pool); after == before {
		t.Fatalf("the connection that answered 25006 (backend %d) was reused", before)
	}
	// An ordinary error keeps the connection.
	kept := backendPID(t, pool)
	if _, err := pool.Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("1/0 succeeded")
	}
	if again := backendPID(t, pool); again != kept {
		t.Fatalf("an ordinary error dropped the connection (backend %d, then %d)", kept, again)
	}
}

// TestReadOnlyServerConnectionDropped: a pooled connection whose server
// reports it turned read-only (as a demoted primary's sessions would, and
// as SET default_transaction_read_only does here) fails the next call
// UNAVAILABLE without running it and is destroyed.
func TestReadOnlyServerConnectionDropped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := failoverPool(t)
	before := backendPID(t, pool)
	if _, err := pool.Exec(ctx, "SET default_transaction_read_only = on"); err != nil {
		t.Fatal(err)
	}
	_, err := pool.Exec(ctx, "SELECT 1")
	if !errors.Is(err, errNotPrimary) || apperr.KindOf(translate(err)) != apperr.KindUnavailable {
		t.Fatalf("a call on a read-only server's connection: %v, want errNotPrimary (UNAVAILABLE)", err)
	}
	if after := backendPID(t, pool); after == before {
		t.Fatalf("the read-only connection (backend %d) was reused", before)
	}
}
