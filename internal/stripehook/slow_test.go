package stripehook_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/internal/users"
)

// smallPool is a fresh database behind a pool of conns connections.
func smallPool(t *testing.T, conns int) *pgxpool.Pool {
	url := testdb.URL(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return testdb.Connect(t, fmt.Sprintf("%s%spool_max_conns=%d", url, sep, conns))
}

// slowStripe makes n accounts with PRO subscriptions, then hangs Stripe's
// subscription listing and delivers their subscription events at once
// (results on the returned channel).
func slowStripe(t *testing.T, e *env, n int) (release func(), done <-chan int) {
	t.Helper()
	payloads := make([][]byte, n)
	for i := range n {
		cust := e.account(fmt.Sprintf("user_slow_%d", i))
		payloads[i] = subscriptionEvent(e, cust, fmt.Sprintf("evt_slow_%d", i))
	}
	release = e.fake.Hang("/v1/subscriptions")
	t.Cleanup(release)
	codes := make(chan int, n)
	var wg sync.WaitGroup
	for _, p := range payloads {
		wg.Go(func() {
			code, _ := e.deliver(p)
			codes <- code
		})
	}
	go func() { wg.Wait(); close(codes) }()
	return release, codes
}

// ordinaryCalls are calls that need no Stripe: each must be served from
// the pool while Stripe hangs.
func ordinaryCalls(e *env, n int) error {
	ctx := context.Background()
	if _, _, err := e.users.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_ordinary"}); err != nil {
		return err
	}
	for i := range n {
		if _, err := e.users.GetUser(ctx, users.Lookup{ClerkUserID: "user_ordinary"}); err != nil {
			return fmt.Errorf("GetUser: %w", err)
		}
		if _, err := e.users.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_ordinary", Amount: 1,
			IdempotencyKey: fmt.Sprintf("ordinary-%d", i)}); err != nil {
			return fmt.Errorf("DeductCredits: %w", err)
		}
	}
	return nil
}

// TestSlowStripeCannotStarveThePool: with Stripe's API hanging, six
// deliveries that need it take one of the places billing allows
// (MaxLockedFor(4) = 1 on a pool of 4): one holds its customer's lock,
// five wait holding no connection, and ordinary GetUser and DeductCredits
// calls on the same pool are served throughout. Once Stripe answers every
// delivery applies. The control: with as many places as deliveries, the
// hung calls hold every connection and an ordinary call cannot get one.
func TestSlowStripeCannotStarveThePool(t *testing.T) {
	const conns, deliveries = 4, 6
	t.Run("Bounded", func(t *testing.T) {
		e := newEnvWith(t, smallPool(t, conns), 2*time.Second, billing.Options{MaxLocked: billing.MaxLockedFor(conns), LockedTimeout: time.Minute})
		release, done := slowStripe(t, e, deliveries)
		testwait.Until(t, 30*time.Second, "one apply on a hung Stripe call, the others waiting", func() bool {
			held, waiting := e.billing.LockStats()
			return held == 1 && waiting == deliveries-1 && e.fake.Hanging.Load() == 1
		})
		if err := ordinaryCalls(e, initialCredits); err != nil {
			t.Fatalf("an ordinary call while Stripe hangs: %v", err)
		}
		release()
		for code := range done {
			if code != 200 {
				t.Errorf("delivery answered %d once Stripe answered, want 200", code)
			}
		}
		for i := range deliveries {
			if p := e.accountOf(fmt.Sprintf("user_slow_%d", i)).Plan; p != users.PlanPro {
				t.Errorf("account %d on %s, want PRO", i, p)
			}
		}
	})
	t.Run("UnboundedControl", func(t *testing.T) {
		e := newEnvWith(t, smallPool(t, conns), 500*time.Millisecond, billing.Options{MaxLocked: deliveries, LockedTimeout: time.Minute})
		release, done := slowStripe(t, e, deliveries)
		testwait.Until(t, 30*time.Second, "every connection held by an apply on a hung Stripe call", func() bool {
			return e.fake.Hanging.Load() == conns
		})
		if err := ordinaryCalls(e, 1); apperr.KindOf(err) != apperr.KindUnavailable {
			t.Errorf("an ordinary call with every connection held: %v, want Unavailable (no connection): the control shows nothing", err)
		}
		release()
		for range done {
		}
	})
}

// TestSlowStripeCallIsCut: an apply whose Stripe call hangs past
// LockedTimeout fails Unavailable (503: Stripe retries it), records
// nothing and gives its connection back; delivered again once Stripe
// answers, it applies.
func TestSlowStripeCallIsCut(t *testing.T) {
	pool := smallPool(t, 4)
	// The bound must also let the redelivery's whole apply (lock, Stripe
	// call, plan change, record) finish on a loaded CI machine: 300 ms
	// did not, once.
	e := newEnvWith(t, pool, 2*time.Second, billing.Options{LockedTimeout: 2 * time.Second})
	cust := e.account("user_cut")
	payload := subscriptionEvent(e, cust, "evt_cut")
	release := e.fake.Hang("/v1/subscriptions")
	t.Cleanup(release)
	if code, out := e.deliver(payload); code != 503 {
		t.Errorf("delivery on a hung Stripe: %d %v, want 503", code, out)
	}
	if got := e.outcome("evt_cut"); got != "" {
		t.Errorf("a cut apply recorded %q", got)
	}
	testwait.Until(t, 10*time.Second, "the lock's connection back in the pool", func() bool {
		return pool.Stat().AcquiredConns() == 0
	})
	release()
	if code, out := e.deliver(payload); code != 200 || out["status"] != billing.OutcomeApplied {
		t.Errorf("redelivery: %d %v, want 200 applied", code, out)
	}
	if p := e.accountOf("user_cut").Plan; p != users.PlanPro {
		t.Errorf("plan %s, want PRO", p)
	}
}
