package stripehook_test

import (
	"context"
	"sync"
	"testing"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/users"
)

// TestEnsureCustomerConcurrent: concurrent EnsureCustomer calls for one
// account end with one customer, reported created by exactly one call; a
// customer linked to one account cannot be adopted by another.
func TestEnsureCustomerConcurrent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, id := range []string{"user_race", "user_other"} {
		if _, _, err := e.users.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu      sync.Mutex
		ids     = map[string]int{}
		created int
		wg      sync.WaitGroup
	)
	for range 8 {
		wg.Go(func() {
			id, c, err := e.billing.EnsureCustomer(ctx, billing.EnsureCustomerInput{Ref: users.AccountRef{ClerkUserID: "user_race"}})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			ids[id]++
			if c {
				created++
			}
		})
	}
	wg.Wait()
	if len(ids) != 1 || created != 1 {
		t.Fatalf("customers %v, %d reported created; want one, created once", ids, created)
	}
	var cust string
	for id := range ids {
		cust = id
	}
	_, _, err := e.billing.EnsureCustomer(ctx, billing.EnsureCustomerInput{Ref: users.AccountRef{ClerkUserID: "user_other"}, AdoptCustomerID: cust})
	if apperr.KindOf(err) != apperr.KindConflict {
		t.Errorf("adopting another account's customer: %v, want Conflict", err)
	}
	e.fake.PutCustomer(stripetest.Customer{ID: "cus_legacy1", Metadata: map[string]string{}})
	got, created2, err := e.billing.EnsureCustomer(ctx, billing.EnsureCustomerInput{Ref: users.AccountRef{ClerkUserID: "user_other"}, AdoptCustomerID: "cus_legacy1"})
	if err != nil || got != "cus_legacy1" || !created2 {
		t.Errorf("adopting a legacy customer: %s %v %v", got, created2, err)
	}
}
