package users_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// keyedCall is one keyed operation, reduced to what the key-space test
// compares: its error and a fingerprint of its result.
type keyedCall struct {
	name string
	run  func(ctx context.Context, svc *users.Service, clerkID, key string) (string, error)
}

var keyedCalls = []keyedCall{
	{"Deduct", func(ctx context.Context, svc *users.Service, clerkID, key string) (string, error) {
		t, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: 1, IdempotencyKey: key})
		return fmt.Sprintf("%+v", t.Transaction), err
	}},
	{"Grant", func(ctx context.Context, svc *users.Service, clerkID, key string) (string, error) {
		t, err := svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: 1, IdempotencyKey: key})
		return fmt.Sprintf("%+v", t.Transaction), err
	}},
	{"SetPlan", func(ctx context.Context, svc *users.Service, clerkID, key string) (string, error) {
		r, err := svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: clerkID, Plan: users.PlanPro, IdempotencyKey: key})
		return fmt.Sprintf("%+v", r.Change), err
	}},
	{"SetPlanWithBonus", func(ctx context.Context, svc *users.Service, clerkID, key string) (string, error) {
		r, err := svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: clerkID, Plan: users.PlanEnterprise, BonusCredits: 1, IdempotencyKey: key})
		return fmt.Sprintf("%+v", r.Change), err
	}},
}

// TestOneKeySpaceAcrossOperations races two different keyed operations with
// the same key, for every pair of operations: exactly one may apply, the
// other must be refused as a reused key, and retrying the applied call must
// replay it. (Before the one key space, a deduction and a bonus-less plan
// change with one key both applied in most races.)
func TestOneKeySpaceAcrossOperations(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	pairs := 200
	if testing.Short() {
		pairs = 20 // every pair of operations still races, fewer times
	}
	clerkID := "user_keyspace"
	ensure(t, b, clerkID)
	// Enough credits that no deduction is refused for its amount.
	if _, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: 1_000_000, IdempotencyKey: "fund"}); err != nil {
		t.Fatal(err)
	}
	for i, first := range keyedCalls {
		for _, second := range keyedCalls[i+1:] {
			t.Run(first.name+"_"+second.name, func(t *testing.T) {
				bothApplied := 0
				for p := range pairs {
					key := fmt.Sprintf("%s-%s-%d", first.name, second.name, p)
					var (
						wg   sync.WaitGroup
						res  [2]string
						errs [2]error
					)
					for j, c := range []keyedCall{first, second} {
						wg.Go(func() { res[j], errs[j] = c.run(ctx, b.svc, clerkID, key) })
					}
					wg.Wait()
					applied := -1
					for j := range 2 {
						switch {
						case errs[j] == nil && applied == -1:
							applied = j
						case errs[j] == nil:
							bothApplied++
						case apperr.KindOf(errs[j]) != apperr.KindConflict:
							t.Fatalf("pair %d: %v", p, errs[j])
						}
					}
					if applied == -1 {
						t.Fatalf("pair %d: neither call applied: %v / %v", p, errs[0], errs[1])
					}
					// A retry of the applied call replays its original result.
					c := []keyedCall{first, second}[applied]
					again, err := c.run(ctx, b.svc, clerkID, key)
					if err != nil || again != res[applied] {
						t.Fatalf("pair %d: retry of %s = %s, %v; want the original %s", p, c.name, again, err, res[applied])
					}
				}
				if bothApplied > 0 {
					t.Errorf("one key applied two operations in %d of %d racing pairs", bothApplied, pairs)
				}
			})
		}
	}
	checkInvariants(t, b, clerkID)
}

// TestInvariantChecksCatchALostLock proves that the concurrency tests can
// fail: with the row locks taken out of the personal account lock (a
// mutation of this test's own database), the same kind of concurrent load
// must break the ledger invariant that checkInvariants asserts.
func TestInvariantChecksCatchALostLock(t *testing.T) {
	if testing.Short() {
		t.Skip("a concurrency stress test of a mutant: not in -short (make test-fast)")
	}
	t.Parallel()
	pool := testdb.Pool(t)
	ctx := context.Background()
	var def string
	// Personal grants and deductions by amount lock the account in
	// userd_personal_change_credits.
	if err := pool.QueryRow(ctx, `SELECT pg_get_functiondef('userd_personal_change_credits'::regproc)`).Scan(&def); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(def, "FOR UPDATE OF a") {
		t.Fatal("userd_personal_change_credits takes no row lock to remove")
	}
	mutant := strings.ReplaceAll(def, "FOR UPDATE OF a", "")
	if _, err := pool.Exec(ctx, mutant); err != nil {
		t.Fatalf("install the mutant: %v", err)
	}
	// Without group commit: a store's batches run one account's calls one
	// after the other in one transaction (internal/store/writebatch.go),
	// so only calls on their own race for the row lock that the mutant
	// lost.
	unbatched := store.Options{DisableWriteBatching: true}
	b := bundle{svc: users.NewService(store.New(pool, unbatched), users.Options{InitialCredits: users.DefaultInitialCredits}), store: store.New(pool, unbatched)}
	ensure(t, b, "user_mutant")
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 50 {
				c := users.CreditChange{ClerkUserID: "user_mutant", Amount: 1, IdempotencyKey: fmt.Sprintf("w%d-%d", w, i)}
				if i%2 == 0 {
					_, _ = b.svc.GrantCredits(ctx, c)
				} else {
					_, _ = b.svc.DeductCredits(ctx, c)
				}
			}
		})
	}
	wg.Wait()
	if problems := invariantViolations(t, b, "user_mutant"); len(problems) == 0 {
		t.Error("without the row lock, 800 concurrent calls left the invariants intact: the checks cannot catch a lost lock")
	} else {
		t.Logf("the checks caught the lost lock: %d violations, first: %s", len(problems), problems[0])
	}
}
