package standby

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/consistency"
)

// DBTX is what sqlc's generated queries run on (sqlcdb.DBTX).
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Acquire takes a connection of the primary's pool (the store's, which
// bounds the wait).
type Acquire func(ctx context.Context) (*pgxpool.Conn, error)

// Recording returns primary made to record, for calls whose context
// carries a Recorder, the primary's WAL insert position after each
// statement has committed; other calls go to primary unchanged.
//
// The statement runs as BEGIN; statement; COMMIT; SELECT
// pg_current_wal_insert_lsn(), pipelined in one round trip: COMMIT ends
// the statement's transaction (its commit record is inserted, and with
// synchronous replication confirmed, before COMMIT answers), and the
// position read after it, in a transaction of its own, is at or past
// that record's end. The explicit BEGIN matters: a COMMIT inside the
// pipeline's implicit transaction also commits, but logs the WARNING
// "there is no transaction in progress" on the server for every write.
func Recording(primary DBTX, acquire Acquire) DBTX {
	return recording{next: primary, acquire: acquire}
}

type recording struct {
	next    DBTX
	acquire Acquire
}

const (
	stmtBegin     = "BEGIN"
	stmtCommit    = "COMMIT"
	stmtInsertLSN = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
)

// send starts the recorded batch of one statement and reads its BEGIN.
func (r recording) send(ctx context.Context, sql string, args []any) (*pgxpool.Conn, pgx.BatchResults, error) {
	conn, err := r.acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	b := &pgx.Batch{}
	b.Queue(stmtBegin)
	b.Queue(sql, args...)
	b.Queue(stmtCommit)
	b.Queue(stmtInsertLSN)
	br := conn.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		finish(ctx, conn, br)
		return nil, nil, err
	}
	return conn, br, nil
}

// commit reads the COMMIT and the position after it, and records the
// position.
func commit(br pgx.BatchResults, rec *consistency.Recorder) error {
	if _, err := br.Exec(); err != nil {
		return err
	}
	var lsn int64
	if err := br.QueryRow().Scan(&lsn); err != nil {
		return err
	}
	rec.Observe(uint64(lsn))
	return nil
}

// finish closes the batch and gives the connection back, rolled back
// first if a failed statement left its transaction open (BEGIN made it
// explicit, so the error leaves it aborted rather than ended): one more
// round trip, on the error path only.
func finish(ctx context.Context, conn *pgxpool.Conn, br pgx.BatchResults) {
	_ = br.Close()
	if conn.Conn().PgConn().TxStatus() != 'I' && !conn.Conn().IsClosed() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if _, err := conn.Exec(rctx, "ROLLBACK"); err != nil {
			_ = conn.Conn().Close(rctx)
		}
		cancel()
	}
	conn.Release()
}

func (r recording) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	rec := consistency.RecorderOf(ctx)
	if rec == nil {
		return r.next.Exec(ctx, sql, args...)
	}
	conn, br, err := r.send(ctx, sql, args)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer finish(ctx, conn, br)
	tag, err := br.Exec()
	if err != nil {
		return tag, err
	}
	return tag, commit(br, rec)
}

func (r recording) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rec := consistency.RecorderOf(ctx)
	if rec == nil {
		return r.next.QueryRow(ctx, sql, args...)
	}
	conn, br, err := r.send(ctx, sql, args)
	if err != nil {
		return errRow{err}
	}
	return &recordedRow{ctx: ctx, conn: conn, br: br, rec: rec}
}

type recordedRow struct {
	ctx  context.Context
	conn *pgxpool.Conn
	br   pgx.BatchResults
	rec  *consistency.Recorder
}

func (r *recordedRow) Scan(dest ...any) error {
	defer finish(r.ctx, r.conn, r.br)
	err := r.br.QueryRow().Scan(dest...)
	// The server runs the whole pipeline whatever the client reads: the
	// COMMIT's answer says whether the statement committed (after an
	// error in the statement it repeats that error).
	cerr := commit(r.br, r.rec)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if cerr != nil {
		return cerr
	}
	return err // nil, or no row: an answer, not a failure
}

func (r recording) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rec := consistency.RecorderOf(ctx)
	if rec == nil {
		return r.next.Query(ctx, sql, args...)
	}
	conn, br, err := r.send(ctx, sql, args)
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		finish(ctx, conn, br)
		return nil, err
	}
	return &recordedRows{Rows: rows, ctx: ctx, conn: conn, br: br, rec: rec}, nil
}

// recordedRows commits once the statement's rows are all read: Err then
// reports a failed COMMIT as the statement's error.
type recordedRows struct {
	pgx.Rows
	ctx  context.Context
	conn *pgxpool.Conn
	br   pgx.BatchResults
	rec  *consistency.Recorder
	err  error
	done bool
}

func (r *recordedRows) Next() bool {
	if r.done {
		return false
	}
	if r.Rows.Next() {
		return true
	}
	r.end()
	return false
}

func (r *recordedRows) end() {
	if r.done {
		return
	}
	r.done = true
	r.Rows.Close()
	if r.err = r.Rows.Err(); r.err == nil {
		r.err = commit(r.br, r.rec)
	}
	finish(r.ctx, r.conn, r.br)
}

func (r *recordedRows) Err() error {
	if r.done {
		return r.err
	}
	return r.Rows.Err()
}

// Close ends the rows early if they were not all read; the server ran the
// whole pipeline regardless, so the position is recorded all the same.
func (r *recordedRows) Close() { r.end() }

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
