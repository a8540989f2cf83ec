package store

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgerrcode"
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
// allowance job, the Clerk webhook, another replica's batch) would delay
// the other accounts of that lane as well, for as long as the lock is
// held. Two bounds keep that short: a batch's statements wait at most
// batchLockWait for a lock (less than the session's lock_timeout, never
// more), and the account whose statement waited that long is set aside
// (runAside): its calls, those queued and those to come until it is free,
// run one by one on their own, each within the session's lock_timeout as
// without batching, while the lane goes on with the other accounts. So a
// lock held outside delays the lane's other accounts by at most
// batchLockWait, once per batch that meets it. --db-write-lanes 0 turns
// group commit off.
//
// Stop ends the batcher at shutdown (internal/app stops it after the
// servers and the background tasks that write, before the pool closes):
// new calls are refused Unavailable, the calls already queued still run,
// and Stop waits for their batches to end.
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
	// batchLockWait bounds how long a batch's statements wait for a row
	// lock held outside the batch, and so how long a lock held by someone
	// else delays the lane's other accounts. Far beyond what one account's
	// lock is held by a batch (one round trip), far below lock_timeout.
	batchLockWait = 200 * time.Millisecond
)

var (
	// errWriteQueueFull answers a write that finds the queue full.
	errWriteQueueFull = apperr.Unavailable(errors.New("too many writes waiting for the database"))
	// errWritesStopped answers a write that comes once Stop was called,
	// or that was still queued when Stop's wait ended.
	errWritesStopped = apperr.Unavailable(errors.New("shutting down: writes are no longer taken"))
)

// batchLockWaitSQL sets the batch transaction's lock_timeout to $1, or
// leaves the session's when it is shorter (0 is no bound at all).
const batchLockWaitSQL = `SELECT set_config('lock_timeout', CASE
	WHEN current_setting('lock_timeout')::interval = interval '0'
	  OR current_setting('lock_timeout')::interval > $1::text::interval THEN $1::text
	ELSE current_setting('lock_timeout') END, true)`

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
	seed  maphash.Seed
	// lockWait is batchLockWait, as PostgreSQL reads an interval.
	lockWait string
	// running counts the goroutines that run calls (flush, runAside), so
	// that Stop can wait for them. Add is called under a lane's mu while
	// it is not stopped, so never after Stop began to wait.
	running sync.WaitGroup
	// recording: single records each call's WAL position (standbys), so
	// a call with a Recorder runs on its own. cache, if set, is the read
	// cache (readcache.go): a personal write evicts its user once
	// committed, and a batch reads the token of its writes.
	recording bool
	cache     *ReadCache
}

// personalKey reports whether key is a personal account's (userBatchKey):
// its write evicts the user from the read cache itself, rather than
// raising the cache's write fence.
func personalKey(key string) bool { return strings.HasPrefix(key, "u:") }

// writeLane is a queue of calls and at most one batch running them.
type writeLane struct {
	mu      sync.Mutex
	queue   []*writeOp
	running bool
	// aside holds the calls of the accounts set aside (runAside), by
	// key, in arrival order; a key is present while its runner runs.
	aside map[string][]*writeOp
	// stopped: Stop was called, no call is taken any more.
	stopped bool
}

// waiting is how many calls wait in l, queued or set aside; l.mu is held.
func (l *writeLane) waiting() int {
	n := len(l.queue)
	for _, q := range l.aside {
		n += len(q)
	}
	return n
}

func newWriteBatcher(single sqlcdb.DBTX, acquire func(context.Context) (*pgxpool.Conn, error), lanes int) *writeBatcher {
	b := &writeBatcher{single: single, acquire: acquire, maxBatch: maxWriteBatch, maxQueue: maxWriteQueue,
		lockWait: fmt.Sprintf("%dms", batchLockWait.Milliseconds()), seed: maphash.MakeSeed()}
	for range lanes {
		b.lanes = append(b.lanes, &writeLane{aside: map[string][]*writeOp{}})
	}
	return b
}

// stop refuses new calls and waits until every call already queued has
// been answered. If ctx ends first, the calls still queued are answered
// errWritesStopped (nobody is left waiting for them) and the batches
// running go on: their callers get their answer, or an error once the
// pool closes under them; none is answered before its commit.
func (b *writeBatcher) stop(ctx context.Context) error {
	for _, l := range b.lanes {
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
	}
	idle := make(chan struct{})
	go func() {
		b.running.Wait()
		close(idle)
	}()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
	}
	for _, l := range b.lanes {
		l.mu.Lock()
		for _, op := range l.queue {
			op.taken = true
			op.answer(errWritesStopped)
		}
		l.queue = nil
		for key, q := range l.aside {
			for _, op := range q {
				op.taken = true
				op.answer(errWritesStopped)
			}
			l.aside[key] = nil
		}
		l.mu.Unlock()
	}
	return fmt.Errorf("write batches still running: %w", ctx.Err())
}

// lane is the lane of the calls keyed by key. Lanes live in one process,
// so the hash only needs to be stable within it: maphash's.
func (b *writeBatcher) lane(key string) *writeLane {
	return b.lanes[maphash.String(b.seed, key)%uint64(len(b.lanes))]
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
	if d.b.recording && consistency.RecorderOf(ctx) != nil {
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
	// done is closed once err (and into) are final (answer).
	done chan struct{}
	err  error
	// lane is where the call waits; taken is set, under lane.mu, when a
	// batch took the call.
	lane  *writeLane
	taken bool
	// cache, for a personal account's write with the read cache on: the
	// user is evicted before the call is answered.
	cache *ReadCache
}

// answer gives op its final error (nil: into holds its row) and wakes
// its caller. Each op is answered exactly once, by whoever took it, after
// its batch's commit (or its failure): a personal write's user is evicted
// from the read cache first, so that no read this replica starts after
// the answer has the row from before the write.
func (op *writeOp) answer(err error) {
	if op.cache != nil && !op.cache.breaks(BreakLocalWrites) {
		op.cache.Evict(strings.TrimPrefix(op.key, "u:"))
	}
	op.err = err
	close(op.done)
}

// runCtx is the context op's own statement runs in: a personal write
// with the read cache on does not raise the fence (answer evicts).
func (op *writeOp) runCtx() context.Context {
	if op.cache != nil {
		return consistency.Unfenced(op.ctx)
	}
	return op.ctx
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
	if r.b.cache != nil && personalKey(r.key) {
		op.cache = r.b.cache
	}
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
	if l.stopped {
		l.mu.Unlock()
		return errWritesStopped
	}
	if l.waiting() >= b.maxQueue {
		l.mu.Unlock()
		return errWriteQueueFull
	}
	if q, ok := l.aside[op.key]; ok {
		// Its account is set aside: it waits behind that account's calls.
		l.aside[op.key] = append(q, op)
		l.mu.Unlock()
		return nil
	}
	l.queue = append(l.queue, op)
	start := !l.running
	l.running = true
	if start {
		b.running.Add(1)
	}
	l.mu.Unlock()
	if start {
		go b.flush(l)
	}
	return nil
}

// drop removes op from its lane if no batch took it yet.
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
	if q := l.aside[op.key]; q != nil {
		if i := slices.Index(q, op); i >= 0 {
			l.aside[op.key] = slices.Delete(q, i, i+1)
		}
	}
	return true
}

// flush runs the lane's batches until its queue is empty.
func (b *writeBatcher) flush(l *writeLane) {
	defer b.running.Done()
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
		b.run(l, batch)
	}
}

// run commits batch as one transaction and answers each call. If a
// statement waited batchLockWait for a lock, its account is set aside and
// the rest runs again together; on any other error each call runs again
// on its own; when no connection comes, each call gets that error.
func (b *writeBatcher) run(l *writeLane, batch []*writeOp) {
	// Calls whose caller stopped waiting before the batch formed: drop.
	batch = slices.DeleteFunc(batch, func(op *writeOp) bool {
		if err := op.ctx.Err(); err != nil {
			op.answer(err)
			return true
		}
		return false
	})
	// Deadlock-free: every batch locks its accounts in key order.
	slices.SortStableFunc(batch, func(x, y *writeOp) int { return strings.Compare(x.key, y.key) })
	for len(batch) > 0 {
		failed, err := b.runTogether(batch)
		var noConn *batchConnError
		switch {
		case err == nil:
			for _, op := range batch {
				op.answer(nil)
			}
			return
		case errors.As(err, &noConn):
			// Nothing was sent. Running each call again would wait for a
			// connection once per call, the lane stalled meanwhile: the
			// pool is saturated or closed, and each caller is told so.
			for _, op := range batch {
				op.answer(noConn.err)
			}
			return
		case failed >= 0 && isLockWait(err):
			key := batch[failed].key
			var blocked []*writeOp
			batch = slices.DeleteFunc(batch, func(op *writeOp) bool {
				if op.key == key {
					blocked = append(blocked, op)
					return true
				}
				return false
			})
			b.setAside(l, key, blocked)
		default:
			for _, op := range batch {
				b.runAlone(op)
			}
			return
		}
	}
}

// isLockWait reports a statement ended by lock_timeout.
func isLockWait(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.LockNotAvailable
}

// setAside takes key's account out of the lane: blocked (its calls of the
// failed batch), then its calls still queued, then those to come, run one
// by one in arrival order by runAside, until none is left.
func (b *writeBatcher) setAside(l *writeLane, key string, blocked []*writeOp) {
	l.mu.Lock()
	defer l.mu.Unlock()
	q, running := l.aside[key]
	q = append(q, blocked...)
	l.queue = slices.DeleteFunc(l.queue, func(op *writeOp) bool {
		if op.key == key {
			q = append(q, op)
			return true
		}
		return false
	})
	l.aside[key] = q
	for _, op := range blocked {
		// Taken by the batch, now back in a queue: a caller giving up
		// may drop it again.
		op.taken = false
	}
	if !running {
		b.running.Add(1) // within flush's count: never after Stop's Wait
		go b.runAside(l, key)
	}
}

// runAside runs the calls of an account set aside, each on its own (within
// the session's lock_timeout, as without batching), until none is left;
// then the account's calls go to the lane again.
func (b *writeBatcher) runAside(l *writeLane, key string) {
	defer b.running.Done()
	for {
		l.mu.Lock()
		q := l.aside[key]
		if len(q) == 0 {
			delete(l.aside, key)
			l.mu.Unlock()
			return
		}
		op := q[0]
		l.aside[key] = q[1:]
		op.taken = true
		l.mu.Unlock()
		if err := op.ctx.Err(); err != nil {
			op.answer(err)
			continue
		}
		b.runAlone(op)
	}
}

// batchConnError is runTogether's failure to get a connection.
type batchConnError struct{ err error }

func (e *batchConnError) Error() string { return e.err.Error() }
func (e *batchConnError) Unwrap() error { return e.err }

// runTogether sends batch as one pipeline (one implicit transaction) and
// scans each call's row; nil means the transaction committed. failed is
// the index of the call whose statement failed, if one did.
func (b *writeBatcher) runTogether(batch []*writeOp) (failed int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), writeBatchTimeout)
	defer cancel()
	if b.cache != nil && !slices.ContainsFunc(batch, func(op *writeOp) bool { return op.cache == nil }) {
		ctx = consistency.Unfenced(ctx) // every call evicts its user
	}
	conn, err := b.acquire(ctx)
	if err != nil {
		return -1, &batchConnError{fmt.Errorf("no database connection for the write batch: %w", err)}
	}
	defer conn.Release()
	pb := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(batch)+2)}
	pb.Queue(batchLockWaitSQL, b.lockWait)
	for _, op := range batch {
		pb.Queue(op.sql, op.args...)
	}
	if b.cache != nil {
		// The read cache's token of every call of the batch, read in its
		// transaction after its writes: no extra round trip.
		pb.Queue(stmtFeedXid)
	}
	br := conn.SendBatch(ctx, pb)
	failed = -1
	var setting string
	err = br.QueryRow().Scan(&setting)
	for i, op := range batch {
		if err != nil {
			break
		}
		if err = br.QueryRow().Scan(op.into...); err != nil {
			failed = i
		}
	}
	var xid int64
	if b.cache != nil && err == nil {
		err = br.QueryRow().Scan(&xid)
	}
	// Close reads up to the Sync: the implicit transaction's commit.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && xid > 0 {
		for _, op := range batch {
			if r := consistency.RecorderOf(op.ctx); r != nil {
				r.ObserveXid(uint64(xid))
			}
		}
	}
	return failed, err
}

// runAlone runs op as its own statement, within its caller's context and
// the batch timeout, and answers it.
func (b *writeBatcher) runAlone(op *writeOp) {
	ctx, cancel := context.WithTimeout(op.runCtx(), writeBatchTimeout)
	defer cancel()
	err := b.single.QueryRow(ctx, op.sql, op.args...).Scan(op.into...)
	if r := consistency.RecorderOf(op.ctx); r != nil && op.cache != nil {
		// Unfenced, so the tracer did not: the call's token is read
		// after it (grpcapi.ConsistencyInterceptorWith).
		r.MarkRan()
	}
	op.answer(err)
}
