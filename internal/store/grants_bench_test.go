package store_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// BenchmarkDeductWithGrants times DeductCredits on accounts holding 0, 1
// and 50 live expiring grants (0 is today's path: no grant row is read).
// Each deduction takes 1 credit from the soonest-expiring grant, so every
// grant stays live for the whole run.
//
//	go test ./internal/store -run '^$' -bench DeductWithGrants -benchtime 2000x
func BenchmarkDeductWithGrants(b *testing.B) {
	ctx := context.Background()
	st := store.New(testdb.Pool(b), store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: 10})
	var seq atomic.Int64
	for _, grants := range []int{0, 1, 50} {
		b.Run(fmt.Sprintf("grants=%d", grants), func(b *testing.B) {
			const accounts = 20
			for a := range accounts {
				id := fmt.Sprintf("user_g%d_%d", grants, a)
				if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id}); err != nil {
					b.Fatal(err)
				}
				if _, err := svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: id, Amount: 1_000_000, IdempotencyKey: "pool"}); err != nil {
					b.Fatal(err)
				}
				for g := range grants {
					if _, err := svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: id, Amount: 1_000_000,
						IdempotencyKey: "g" + strconv.Itoa(g), ExpiresAt: time.Now().Add(time.Duration(g+1) * time.Hour)}); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				_, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: fmt.Sprintf("user_g%d_%d", grants, i%accounts),
					Amount: 1, IdempotencyKey: "d" + strconv.FormatInt(seq.Add(1), 10)})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAllowanceJob measures the expiry and refill job's throughput:
// USERD_BENCH_ALLOWANCE_ACCOUNTS accounts (default 100,000; seeded in SQL)
// on a catalog with an allowance each get the current period's allowance
// in one run, then, a period later, have it expire and the next one
// granted. Reports accounts per second of each run.
//
//	go test ./internal/store -run '^$' -bench AllowanceJob -benchtime 1x
func BenchmarkAllowanceJob(b *testing.B) {
	n := 100_000
	if s := os.Getenv("USERD_BENCH_ALLOWANCE_ACCOUNTS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	pool := testdb.Pool(b)
	st := store.New(pool, store.Options{})
	start := time.Now().UTC()
	now := start
	svc := users.NewService(st, users.Options{InitialCredits: 10, Clock: func() time.Time { return now }})
	// Users and their personal accounts, as userd_insert_user makes them
	// (INITIAL entries before the catalog exists: no allowance yet).
	if _, err := pool.Exec(ctx, `SELECT userd_insert_user('user_j' || i, NULL, NULL, NULL, NULL, NULL, 10, false)
		FROM generate_series(1, $1) i`, n); err != nil {
		b.Fatal(err)
	}
	if _, _, err := svc.SetPlanAllowance(ctx, users.PlanAllowance{Plan: users.PlanFree, Allowance: 100,
		Period: users.AllowanceDaily, RolloverCap: 10, UpdatedBy: "service:bench"}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		for _, step := range []struct {
			name string
			at   time.Time
		}{{"first", start.Add(time.Minute)}, {"next period", start.Add(25 * time.Hour)}} {
			now = step.at
			t0 := time.Now()
			run, err := svc.RunAllowances(ctx, 0)
			if err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(t0)
			b.Logf("%s run: %d accounts, %d expired, %d granted in %s (%.0f accounts/s)", step.name, run.Accounts,
				run.Expired, run.Granted, elapsed, float64(n)/elapsed.Seconds())
			b.ReportMetric(float64(n)/elapsed.Seconds(), "accounts/s-"+map[bool]string{true: "first", false: "next"}[step.name == "first"])
		}
	}
}
