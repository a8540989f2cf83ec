package store

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/consistency"
)

// Group commit of credit and plan writes (issue 24). Each write is one
// call of a server-side function (userd_personal_change_credits,
// userd_org_spend, ...) whose work is small next to its commit and round
// trip: every commit waits for PostgreSQL to flush its WAL, and every
// round trip wakes userd and a backend. The write batcher sends the calls
// that arrive together as one pipeline of statements ending in one Sync:
// PostgreSQL runs a pipeline without BEGIN as one implicit transaction, so
// the calls share one round trip and one commit.
//
// It is safe because those functions answer a business refusal
// (insufficient credits, a reused key, a closed account, a missing member)
// with a status, never an error: one call's refusal leaves the others'
// writes in the transaction. An error (a deadlock with another batch, a
// bug, a lost connection) rolls the whole batch back, and then each call
// runs again on its own so that it gets its own answer. Nothing is
// answered before the batch's commit (the Sync's result) is read.
//
// Calls are spread over lanes by account (lockKey): a lane runs one batch
// at a time, so the calls of one account never wait for another batch of
// writes to commit (two batches in flight never share an account, and
// one account's calls keep their order). A lane never waits to fill a
// batch: a call that finds its lane idle starts a batch at once (a lone
// call is as fast as without batching), and the calls arriving while it
// runs go together in the next one, up to maxWriteBatch.
//
// The price: a lane serves about 1/lanes of the accounts, so a row lock
// held outside the batches (an operator's audited correction, the
// allowance job, another replica's batch) delays the other accounts of
// that lane as well, up to the session's lock_timeout (the batch then
// fails and its calls run on their own). --db-write-lanes 0 turns group
// commit off.
const (
	// maxWriteBatch bounds the calls of one transaction (the locks it
	// holds, and the work redone one by one if it fails).
	maxWriteBatch = 64
	// writeLanes is how many batches may run at once by default
	// (--db-write-lanes), and so the pool connections writes hold.
	writeLanes = 4
	// maxWriteQueue bounds the calls waiting in a lane: when the database
	// hangs, callers are refused (Unavailable) rather than queued without
	// end.
	maxWriteQueue = 1024
	// writeBatchTimeout bounds one batch transaction: it serves many
	// calls, so no single caller's deadline may cut it (a caller whose
	// context ends stops waiting; see batchRow.Scan).
	writeBatchTimeout = 10 * time.Second
)

// errWriteQueueFull answers a write that finds the queue full.
var errWriteQueueFull = apperr.Unavailable(errors.New("too many writes waiting for the database"))

// writeBatcher group-commits single-row statement calls (QueryRow of a
// :one sqlc query) made through the DBTX that on returns.
type writeBatcher struct {
	// single runs a call on its own: a lone call, and each call of a
	// batch that failed.
	single sqlcdb.DBTX
	// acquire takes the connection a batch runs on.
	acquire func(context.Context) (*pgxpool.Conn, error)
	// maxBatch and maxQueue are maxWriteBatch and maxWriteQueue, but for
	// tests.
	maxBatch, maxQueue int
	// gate, when set (tests), holds every flusher until it is closed, so
	// that a test can queue calls into one batch.
	gate  chan struct{}
	lanes []*writeLane
}

// writeLane is a queue of calls and at most one batch running them.
type writeLane struct {
	mu      sync.Mutex
	queue   []*writeOp
	running bool
}

func newWriteBatcher(single sqlcdb.DBTX, acquire func(context.Context) (*pgxpool.Conn, error), lanes int) *writeBatcher {
	b := &writeBatcher{single: single, acquire: acquire, maxBatch: maxWriteBatch, maxQueue: maxWriteQueue}
	for range lanes {
		b.lanes = append(b.lanes, &writeLane{})
	}
	return b
}

// lane is the lane of the calls keyed by key (FNV-1a).
func (b *writeBatcher) lane(key string) *writeLane {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h = (h ^ uint32(key[i])) * 16777619
	}
	return b.lanes[h%uint32(len(b.lanes))]
}

// on returns the DBTX whose QueryRow joins a batch, for a write whose
// locks are keyed by lockKey (the account's owner: "u:" and a Clerk user
// id, "o:" and a Clerk organization id). Within a batch calls run in
// lockKey order, so two batches lock the accounts they share in the same
// order and cannot deadlock on them; calls of one account keep their
// arrival order. Exec and Query are not batched.
func (b *writeBatcher) on(lockKey string) sqlcdb.DBTX {
	return batchDBTX{b: b, key: lockKey}
}

type batchDBTX struct {
	b   *writeBatcher
	key string
}

func (d batchDBTX) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return d.b.single.Exec(ctx, sql, args...)
}

func (d batchDBTX) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return d.b.single.Query(ctx, sql, args...)
}

func (d batchDBTX) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if consistency.RecorderOf(ctx) != nil {
		// The call records its commit's WAL position (internal/standby's
		// recording DBTX, which single is then): it runs on its own.
		return d.b.single.QueryRow(ctx, sql, args...)
	}
	return batchRow{b: d.b, ctx: ctx, key: d.key, sql: sql, args: args}
}

// writeOp is one call waiting for, or in, a batch.
type writeOp struct {
	ctx  context.Context
	key  string
	sql  string
	args []any
	// into holds fresh values of dest's types: the batch scans into them
	// and the caller copies them to dest once done is closed, so that a
	// caller that stopped waiting never shares memory with the batch.
	into []any
	// done is closed once err (and into) are final.
	done chan struct{}
	err  error
	// lane is where the call waits; taken is set, under lane.mu, when a
	// batch took the call.
	lane  *writeLane
	taken bool
}

type batchRow struct {
	b    *writeBatcher
	ctx  context.Context
	key  string
	sql  string
	args []any
}

// Scan queues the call and waits for its batch's commit. When the
// caller's context ends first it gets the context's error: a call still
// queued is dropped (it never runs); one already sent may still commit,
// which a retry with the same idempotency key replays.
func (r batchRow) Scan(dest ...any) error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	op := &writeOp{ctx: r.ctx, key: r.key, lane: r.b.lane(r.key), sql: r.sql, args: r.args, into: make([]any, len(dest)), done: make(chan struct{})}
	for i, d := range dest {
		op.into[i] = reflect.New(reflect.TypeOf(d).Elem()).Interface()
	}
	if err := r.b.enqueue(op); err != nil {
		return err
	}
	select {
	case <-op.done:
	case <-r.ctx.Done():
		if r.b.drop(op) {
			return r.ctx.Err()
		}
		select {
		case <-op.done:
		default:
			return fmt.Errorf("waiting for the write batch: %w", r.ctx.Err())
		}
	}
	if op.err != nil {
		return op.err
	}
	for i, d := range dest {
		reflect.ValueOf(d).Elem().Set(reflect.ValueOf(op.into[i]).Elem())
	}
	return nil
}

func (b *writeBatcher) enqueue(op *writeOp) error {
	l := op.lane
	l.mu.Lock()
	if len(l.queue) >= b.maxQueue {
		l.mu.Unlock()
		return errWriteQueueFull
	}
	l.queue = append(l.queue, op)
	start := !l.running
	l.running = true
	l.mu.Unlock()
	if start {
		go b.flush(l)
	}
	return nil
}

// drop removes op from its lane's queue if no batch took it yet.
func (b *writeBatcher) drop(op *writeOp) bool {
	l := op.lane
	l.mu.Lock()
	defer l.mu.Unlock()
	if op.taken {
		return false
	}
	if i := slices.Index(l.queue, op); i >= 0 {
		l.queue = slices.Delete(l.queue, i, i+1)
	}
	return true
}

// flush runs the lane's batches until its queue is empty.
func (b *writeBatcher) flush(l *writeLane) {
	if b.gate != nil {
		<-b.gate
	}
	for {
		l.mu.Lock()
		n := min(len(l.queue), b.maxBatch)
		if n == 0 {
			l.running = false
			l.mu.Unlock()
			return
		}
		batch := slices.Clone(l.queue[:n])
		clear(l.queue[:n])
		l.queue = l.queue[n:]
		for _, op := range batch {
			op.taken = true
		}
		l.mu.Unlock()
		b.run(batch)
	}
}

// run commits batch as one transaction and answers each call; if that
// fails, each call runs again on its own.
func (b *writeBatcher) run(batch []*writeOp) {
	// Calls whose caller stopped waiting before the batch formed: drop.
	batch = slices.DeleteFunc(batch, func(op *writeOp) bool {
		if err := op.ctx.Err(); err != nil {
			op.err = err
			close(op.done)
			return true
		}
		return false
	})
	if len(batch) == 0 {
		return
	}
	// Deadlock-free: every batch locks its accounts in key order.
	slices.SortStableFunc(batch, func(x, y *writeOp) int { return strings.Compare(x.key, y.key) })
	if len(batch) > 1 && b.runTogether(batch) == nil {
		for _, op := range batch {
			close(op.done)
		}
		return
	}
	for _, op := range batch {
		b.runAlone(op)
	}
}

// runTogether sends batch as one pipeline (one implicit transaction) and
// scans each call's row; nil means the transaction committed.
func (b *writeBatcher) runTogether(batch []*writeOp) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), writeBatchTimeout)
	defer cancel()
	conn, err := b.acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	pb := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(batch))}
	for _, op := range batch {
		pb.Queue(op.sql, op.args...)
	}
	br := conn.SendBatch(ctx, pb)
	for _, op := range batch {
		if err = br.QueryRow().Scan(op.into...); err != nil {
			break
		}
	}
	// Close reads up to the Sync: the implicit transaction's commit.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// runAlone runs op as its own statement, within its caller's context and
// the batch timeout, and answers it.
func (b *writeBatcher) runAlone(op *writeOp) {
	ctx, cancel := context.WithTimeout(op.ctx, writeBatchTimeout)
	defer cancel()
	op.err = b.single.QueryRow(ctx, op.sql, op.args...).Scan(op.into...)
	close(op.done)
}
