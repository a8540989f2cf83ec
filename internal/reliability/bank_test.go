package reliability_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
)

// acknowledged is a transaction a call reported as done.
type acknowledged struct {
	clerkID string
	tx      *userdv1.CreditTransaction
}

// checkLedgers asserts, for each user, that the balance equals the ledger
// sum, that every entry's balance_after is the running sum (nothing went
// negative), that no key appears twice, and that every acknowledged
// transaction is in the ledger exactly as reported.
func checkLedgers(t *testing.T, in *apptest.Instance, clerkIDs []string, acks []acknowledged) int {
	t.Helper()
	byID := apptest.Books(t, in.Store, clerkIDs)
	for _, a := range acks {
		got, ok := byID[a.tx.GetId()]
		if !ok || got.Delta != a.tx.GetDelta() || got.BalanceAfter != a.tx.GetBalanceAfter() || got.IdempotencyKey != a.tx.GetIdempotencyKey() {
			t.Errorf("%s: acknowledged %v, ledger has %+v (found %v)", a.clerkID, a.tx, got, ok)
		}
	}
	return len(byID)
}

// TestBank runs many clients over real gRPC for several seconds, deducting
// and granting with idempotency keys that repeat (retries, some with other
// amounts), and checks the books afterwards.
func TestBank(t *testing.T) {
	if testing.Short() {
		t.Skip("a load test of the books: not in -short (make test-fast)")
	}
	t.Parallel()
	in := apptest.Start(t, nil)
	ctx := context.Background()
	clerkIDs := []string{"user_bank0", "user_bank1", "user_bank2", "user_bank3", "user_bank4"}
	for _, id := range clerkIDs {
		if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: id}); err != nil {
			t.Fatal(err)
		}
	}
	const clients = 24
	deadline := time.Now().Add(4 * time.Second)
	var (
		mu       sync.Mutex
		acks     []acknowledged
		calls    atomic.Int64
		outcomes sync.Map
		wg       sync.WaitGroup
	)
	for c := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 99))
			for time.Now().Before(deadline) {
				id := clerkIDs[rng.IntN(len(clerkIDs))]
				k := rng.IntN(300) // keys repeat across clients: retries race
				amount := int64(k%7 + 1)
				if rng.IntN(10) == 0 {
					amount += 2 // same key, other parameters: must be refused
				}
				key := fmt.Sprintf("bank-%d", k)
				callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
				var (
					tx  *userdv1.CreditTransaction
					err error
				)
				if k%3 == 0 {
					var r *userdv1.GrantCreditsResponse
					r, err = in.Client.GrantCredits(callCtx, &userdv1.GrantCreditsRequest{ClerkUserId: id, Amount: amount, IdempotencyKey: key})
					tx = r.GetTransaction()
				} else {
					var r *userdv1.DeductCreditsResponse
					r, err = in.Client.DeductCredits(callCtx, &userdv1.DeductCreditsRequest{ClerkUserId: id, Amount: amount, IdempotencyKey: key})
					tx = r.GetTransaction()
				}
				cancel()
				calls.Add(1)
				code := status.Code(err)
				n, _ := outcomes.LoadOrStore(code, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				switch code {
				case codes.OK:
					mu.Lock()
					acks = append(acks, acknowledged{id, tx})
					mu.Unlock()
				case codes.FailedPrecondition, codes.AlreadyExists:
				default:
					t.Errorf("unexpected %v", err)
				}
			}
		})
	}
	wg.Wait()
	entries := checkLedgers(t, in, clerkIDs, acks)
	tally := map[string]int64{}
	outcomes.Range(func(k, v any) bool { tally[k.(codes.Code).String()] = v.(*atomic.Int64).Load(); return true })
	t.Logf("%d calls from %d clients in 4s: %v; %d ledger entries", calls.Load(), clients, tally, entries)
	if tally["FailedPrecondition"] == 0 || tally["AlreadyExists"] == 0 {
		t.Errorf("the run never hit insufficient credits or a reused key: %v", tally)
	}
}
