package users_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

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
	b.svc.SetObserver(rec)
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
