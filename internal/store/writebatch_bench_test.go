package store_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// BenchmarkConcurrentDeduct: 32 callers deduct from 1000 accounts through
// a 16-connection pool (userd's default), with and without group commit.
func BenchmarkConcurrentDeduct(b *testing.B) {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(testdb.URL(b))
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	const n = 1000
	seed := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 1_000_000_000})
	for i := range n {
		if _, _, err := seed.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_cb" + strconv.Itoa(i)}); err != nil {
			b.Fatal(err)
		}
	}
	for _, accounts := range []int{1000, 100} {
		for _, lanes := range []int{0, 2, 4, 8} {
			b.Run(fmt.Sprintf("accounts=%d/lanes=%d", accounts, lanes), func(b *testing.B) {
				st := store.New(pool, store.Options{DisableWriteBatching: lanes == 0})
				if lanes > 0 {
					store.SetWriteLanes(st, lanes)
				}
				svc := users.NewService(st, users.Options{})
				var seq atomic.Int64
				b.SetParallelism(16)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := seq.Add(1)
						if _, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_cb" + strconv.FormatInt(i%int64(accounts), 10),
							Amount: 1, IdempotencyKey: fmt.Sprintf("k%d-%d-%d", accounts, lanes, i)}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
