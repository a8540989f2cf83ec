package users_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/internal/users"
)

// batchRecorder records the size of every committed batch.
type batchRecorder struct {
	mu    sync.Mutex
	sizes []int
}

func (r *batchRecorder) CreditsMoved(users.TxKind, int64) {}
func (r *batchRecorder) UserCreated(string)               {}
func (r *batchRecorder) ClerkBatchApplied(n int) {
	r.mu.Lock()
	r.sizes = append(r.sizes, n)
	r.mu.Unlock()
}

func (r *batchRecorder) take() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sizes
	r.sizes = nil
	return s
}

func clerkEvent(i int) users.ClerkEvent {
	id := fmt.Sprintf("user_batch%d", i)
	return users.ClerkEvent{MessageID: "msg_" + id, Type: "user.created",
		User: users.ClerkUser{ID: id, Email: id + "@example.com", UpdatedAt: 1}}
}

// TestGroupCommit: a lone delivery is never held back to wait for company
// (each sequential call is a batch of its own), while concurrent deliveries
// share transactions; every one gets its own outcome.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &batchRecorder{}
	b.svc = users.NewService(b.store, users.Options{InitialCredits: users.DefaultInitialCredits, Observer: rec})
	ctx := context.Background()

	for i := range 5 {
		if out, err := b.svc.ApplyClerkUser(ctx, clerkEvent(i)); err != nil || out != users.OutcomeCreated {
			t.Fatalf("event %d: %v, %v", i, out, err)
		}
	}
	if sizes := rec.take(); len(sizes) != 5 {
		t.Errorf("5 sequential deliveries went in batches %v, want five batches of one", sizes)
	}

	const concurrent = 400
	var wg sync.WaitGroup
	outcomes := make([]users.EventOutcome, concurrent)
	errs := make([]error, concurrent)
	for i := range concurrent {
		wg.Go(func() {
			// Every event twice: the second copy is a duplicate, whichever
			// batch it lands in.
			outcomes[i], errs[i] = b.svc.ApplyClerkUser(ctx, clerkEvent(100+i/2))
		})
	}
	wg.Wait()
	count := map[users.EventOutcome]int{}
	for i := range concurrent {
		if errs[i] != nil {
			t.Fatalf("event %d: %v", i, errs[i])
		}
		count[outcomes[i]]++
	}
	if count[users.OutcomeCreated] != concurrent/2 || count[users.OutcomeDuplicate] != concurrent/2 {
		t.Errorf("outcomes %v, want %d created and %d duplicate", count, concurrent/2, concurrent/2)
	}
	sizes := rec.take()
	total, largest := 0, 0
	for _, n := range sizes {
		total += n
		largest = max(largest, n)
	}
	if total != concurrent || largest < 2 || largest > 32 {
		t.Errorf("%d concurrent deliveries in %d batches (largest %d), want them all, sharing batches of at most 32", total, len(sizes), largest)
	}
	t.Logf("%d concurrent deliveries in %d batches, largest %d", total, len(sizes), largest)
	for i := 100; i < 100+concurrent/2; i++ {
		checkInvariants(t, b, fmt.Sprintf("user_batch%d", i))
	}
}

// lockUserRow locks a user's row in a transaction of its own, which the
// test rolls back (at the latest when it ends).
func lockUserRow(t *testing.T, pool *pgxpool.Pool, clerkUserID string) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, `SELECT 1 FROM users WHERE clerk_user_id = $1 FOR UPDATE`, clerkUserID); err != nil {
		t.Fatal(err)
	}
	return tx
}

// applyStuckUpdate applies a user.updated of user_batch0 (created by
// clerkEvent(0)), whose batch waits while lockUserRow holds its row.
func applyStuckUpdate(ctx context.Context, svc *users.Service) error {
	ev := clerkEvent(0)
	ev.MessageID, ev.Type, ev.User.FirstName, ev.User.UpdatedAt = "msg_stuck", "user.updated", "Stuck", 2
	_, err := svc.ApplyClerkUser(ctx, ev)
	return err
}

// waitForLockWaiter waits until a session of the test's database waits
// for a lock.
func waitForLockWaiter(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	testwait.Until(t, 30*time.Second, "a batch waiting on the lock", func() bool {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
}

// TestParallelBatchWaitsForCompany: while a batch runs, deliveries queue
// for it rather than each starting a batch of one beside it; a second batch
// starts beside it once minParallelBatch (8) wait, and takes them all. The
// running batch is held by a row lock, so the order is deterministic.
func TestParallelBatchWaitsForCompany(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	rec := &batchRecorder{}
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: users.DefaultInitialCredits, Observer: rec})
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	ctx := context.Background()
	if _, err := svc.ApplyClerkUser(ctx, clerkEvent(0)); err != nil {
		t.Fatal(err)
	}
	rec.take()
	tx := lockUserRow(t, pool, "user_batch0")
	stuck := make(chan error, 1)
	go func() {
		stuck <- applyStuckUpdate(ctx, svc)
	}()
	waitForLockWaiter(t, pool)

	const waiting = 8
	done := make(chan error, waiting)
	for i := range waiting {
		go func() {
			out, err := svc.ApplyClerkUser(ctx, clerkEvent(200+i))
			if err == nil && out != users.OutcomeCreated {
				err = fmt.Errorf("outcome %s", out)
			}
			done <- err
		}()
	}
	for range waiting {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the waiting deliveries never got a batch of their own beside the stuck one")
		}
	}
	if sizes := rec.take(); len(sizes) != 1 || sizes[0] != waiting {
		t.Errorf("%d deliveries waiting behind a running batch went in batches %v, want one of %d", waiting, sizes, waiting)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-stuck; err != nil {
		t.Errorf("the held event: %v", err)
	}
}

// TestStopCancelsBatchesInFlight: Stop ends a batch stuck behind a row
// lock (rolled back: the event is not applied), waits for it, and answers
// every later event Unavailable at once — so that userd's shutdown can
// close the pool with no batch running.
func TestStopCancelsBatchesInFlight(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: users.DefaultInitialCredits})
	ctx := context.Background()
	if _, err := svc.ApplyClerkUser(ctx, clerkEvent(0)); err != nil {
		t.Fatal(err)
	}
	tx := lockUserRow(t, pool, "user_batch0")
	stuck := make(chan error, 1)
	go func() {
		stuck <- applyStuckUpdate(ctx, svc)
	}()
	waitForLockWaiter(t, pool)
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := svc.Stop(stopCtx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := <-stuck; err == nil || (apperr.KindOf(err) != apperr.KindUnavailable && apperr.KindOf(err) != apperr.KindCanceled) {
		t.Errorf("the stuck event: %v (kind %v), want unavailable or canceled", err, apperr.KindOf(err))
	}
	if _, err := svc.ApplyClerkUser(ctx, clerkEvent(1)); apperr.KindOf(err) != apperr.KindUnavailable {
		t.Errorf("an event after Stop: %v, want unavailable", err)
	}
	_ = tx.Rollback(ctx)
	var first string
	if err := pool.QueryRow(ctx, `SELECT coalesce(first_name, '') FROM users WHERE clerk_user_id = 'user_batch0'`).Scan(&first); err != nil {
		t.Fatal(err)
	}
	if first == "Stuck" {
		t.Error("the cancelled batch was applied")
	}
}
