package users

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/userd/userd/internal/apperr"
)

// Group commit of Clerk events. Every commit waits for PostgreSQL to flush
// its WAL, and a delivery's work is tiny next to that flush: committing
// concurrent deliveries together is what lets webhook ingestion approach
// the database's limit. The batcher never waits to fill a batch. A
// delivery that finds no batch running starts one at once (so a lone
// delivery is applied as fast as without batching); deliveries that arrive
// while batches run queue up and go together in the next one, up to
// maxBatch events, taken by the first batch to finish. A further batch
// starts beside the running ones (up to maxBatchesInFlight) only once
// minParallelBatch deliveries wait.
const (
	// maxBatch bounds the events of one transaction. Each runs in its own
	// subtransaction (PostgreSQL tracks up to 64 per transaction cheaply),
	// but for a batch of sign-ups only, which one statement writes in one
	// (userd_apply_clerk_batch, db/migrations/00034_webhook_create_batch.sql).
	maxBatch = 32
	// maxBatchesInFlight bounds the concurrent batch transactions (and so
	// the connections webhook ingestion holds).
	maxBatchesInFlight = 4
	// minParallelBatch is how many deliveries must wait before a batch
	// starts beside those running. Starting one for every delivery that
	// found a free slot made two thirds of the batches single events
	// under make bench's 32 concurrent deliveries (the answers of one
	// batch come back together, and the first of the next wave each
	// took a slot): a commit each, for 17% of the events. Waiting for a
	// running batch instead cut the transactions by 43% (mean 6.3 events
	// a batch instead of 3.8, 11% single) at the same rate, with a lower
	// p99 and less CPU per delivery. The price: a batch held by a row
	// lock from outside (an operator's correction, another replica's
	// batch) delays up to minParallelBatch-1 unrelated deliveries until
	// it ends (at most batchTimeout), as it delayed those past
	// maxBatchesInFlight before.
	minParallelBatch = 8
	// maxEventAttempts bounds how often an event that failed inside its
	// batch (a concurrent change of the same email, a deadlock between
	// batches) is applied again before the delivery is answered as
	// unavailable, which Svix retries.
	maxEventAttempts = 3
	// batchTimeout bounds one batch transaction: it serves many deliveries
	// at once, so no single caller's deadline may cut it.
	batchTimeout = 10 * time.Second
)

// clerkBatcher applies Clerk events through Store.ApplyClerkEvents in
// group-committed batches.
type clerkBatcher struct {
	store Store
	opts  ClerkApplyOptions
	// applied is told the size of each batch that committed.
	applied func(events int)
	// ctx is the parent of every batch's context; stop cancels it. A
	// batch serves many deliveries at once, so no single caller's context
	// may cut it, but userd's shutdown must (see stop).
	ctx    context.Context
	cancel context.CancelFunc
	// flushers counts the goroutines running batches, for stop to wait on.
	flushers sync.WaitGroup

	mu       sync.Mutex
	queue    []*pendingEvent
	inFlight int
	stopped  bool
}

func newClerkBatcher(store Store, opts ClerkApplyOptions, applied func(events int)) *clerkBatcher {
	ctx, cancel := context.WithCancel(context.Background())
	return &clerkBatcher{store: store, opts: opts, applied: applied, ctx: ctx, cancel: cancel}
}

// errStopped answers events that arrive once the batcher has stopped.
var errStopped = apperr.Unavailable(errors.New("userd is shutting down"))

// stop refuses further events, answers those queued with Unavailable,
// cancels the batches in flight (their transactions roll back; a delivery
// whose batch is cut this way was answered 503 or had its connection cut,
// so Svix delivers it again) and waits until no batch runs, or ctx ends.
func (b *clerkBatcher) stop(ctx context.Context) error {
	b.mu.Lock()
	b.stopped = true
	queued := b.queue
	b.queue = nil
	b.mu.Unlock()
	for _, p := range queued {
		p.err = errStopped
		close(p.done)
	}
	b.cancel()
	// No flusher starts once stopped is set (apply checks it under mu,
	// where it also counts the flusher), so Wait cannot race with Add.
	done := make(chan struct{})
	go func() {
		b.flushers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("webhook batches still running: %w", ctx.Err())
	}
}

type pendingEvent struct {
	ev       ClerkEventWrite
	attempts int
	// done is closed once outcome or err is set.
	done    chan struct{}
	outcome EventOutcome
	err     error
}

// apply queues ev and waits until its batch committed (or failed). When ctx
// ends first the answer is Unavailable; the event may still commit, which
// is harmless: a redelivery is then a duplicate.
func (b *clerkBatcher) apply(ctx context.Context, ev ClerkEventWrite) (EventOutcome, error) {
	p := &pendingEvent{ev: ev, done: make(chan struct{})}
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return "", errStopped
	}
	b.queue = append(b.queue, p)
	startFlusher := b.inFlight < maxBatchesInFlight && (b.inFlight == 0 || len(b.queue) >= minParallelBatch)
	if startFlusher {
		b.inFlight++
		b.flushers.Add(1)
	}
	b.mu.Unlock()
	if startFlusher {
		go b.flush()
	}
	select {
	case <-p.done:
		return p.outcome, p.err
	case <-ctx.Done():
		return "", apperr.Unavailable(fmt.Errorf("waiting for the batch: %w", ctx.Err()))
	}
}

// flush runs batches until the queue is empty.
func (b *clerkBatcher) flush() {
	defer b.flushers.Done()
	for {
		b.mu.Lock()
		n := min(len(b.queue), maxBatch)
		if n == 0 {
			b.inFlight--
			b.mu.Unlock()
			return
		}
		batch := slices.Clone(b.queue[:n])
		b.queue = slices.Delete(b.queue, 0, n)
		b.mu.Unlock()
		b.run(batch)
	}
}

// run applies one batch and answers or re-queues each event.
func (b *clerkBatcher) run(batch []*pendingEvent) {
	// Locks are taken in Clerk id order within a batch (lockKey), so that
	// two batches touching the same rows rarely wait for each other in a
	// cycle. A stable sort keeps one object's events in arrival order.
	slices.SortStableFunc(batch, func(x, y *pendingEvent) int {
		return strings.Compare(x.ev.lockKey(), y.ev.lockKey())
	})
	events := make([]ClerkEventWrite, len(batch))
	for i, p := range batch {
		events[i] = p.ev
	}
	ctx, cancel := context.WithTimeout(b.ctx, batchTimeout)
	results, err := b.store.ApplyClerkEvents(ctx, events, b.opts)
	cancel()
	if err == nil && len(results) != len(batch) {
		err = fmt.Errorf("apply clerk events: %d results for %d events", len(results), len(batch))
	}
	if err == nil {
		b.applied(len(batch))
	}
	var again []*pendingEvent
	for i, p := range batch {
		switch {
		case err != nil:
			p.err = err
		case results[i].Outcome != OutcomeRetry:
			p.outcome = results[i].Outcome
		case p.attempts+1 < maxEventAttempts:
			p.attempts++
			again = append(again, p)
			continue
		default:
			p.err = apperr.Unavailable(fmt.Errorf("event failed %d times, last with SQLSTATE %s",
				maxEventAttempts, results[i].ErrorCode))
		}
		close(p.done)
	}
	if len(again) > 0 {
		// First in line: these waited longest.
		b.mu.Lock()
		b.queue = append(again, b.queue...)
		b.mu.Unlock()
	}
}
