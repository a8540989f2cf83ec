package users_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
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
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM users WHERE clerk_user_id = 'user_batch0' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	stuck := make(chan error, 1)
	go func() {
		ev := clerkEvent(0)
		ev.MessageID, ev.Type, ev.User.FirstName, ev.User.UpdatedAt = "msg_stuck", "user.updated", "Stuck", 2
		_, err := svc.ApplyClerkUser(ctx, ev)
		stuck <- err
	}()
	for deadline := time.Now().Add(30 * time.Second); ; {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the batch never waited on the lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
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
