package store_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// BenchmarkOperations times each store-backed operation against the real
// PostgreSQL (one client, so the figures are round trips plus userd's own
// work).
func BenchmarkOperations(b *testing.B) {
	ctx := context.Background()
	st := store.New(testdb.Pool(b))
	svc := users.NewService(st, 10)
	const n = 200
	for i := range n {
		id := fmt.Sprintf("user_b%d", i)
		if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id, Email: id + "@example.com"}); err != nil {
			b.Fatal(err)
		}
		if _, err := svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: id, Amount: users.MaxAmount, IdempotencyKey: "seed"}); err != nil {
			b.Fatal(err)
		}
	}
	var seq atomic.Int64
	id := func(i int) string { return "user_b" + strconv.Itoa(i%n) }
	cases := []struct {
		name string
		op   func(i int) error
	}{
		{"GetLiveUserByClerkID", func(i int) error { _, err := st.GetLiveUserByClerkID(ctx, id(i)); return err }},
		{"GetLiveUserByEmail", func(i int) error { _, err := st.GetLiveUserByEmail(ctx, id(i)+"@example.com"); return err }},
		{"EnsureUserExisting", func(i int) error {
			_, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id(i)})
			return err
		}},
		{"DeductCredits", func(i int) error {
			_, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: id(i), Amount: 1, IdempotencyKey: "d" + strconv.FormatInt(seq.Add(1), 10)})
			return err
		}},
		{"DeductCreditsReplay", func(i int) error {
			_, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: id(0), Amount: 1, IdempotencyKey: "replayed"})
			return err
		}},
		{"ApplyClerkUserNew", func(int) error {
			k := strconv.FormatInt(seq.Add(1), 10)
			_, err := svc.ApplyClerkUser(ctx, users.ClerkEvent{MessageID: "msg_" + k, Type: "user.created",
				User: users.ClerkUser{ID: "user_new" + k, Email: "n" + k + "@example.com", UpdatedAt: time.Now().UnixMilli()}})
			return err
		}},
		{"ListCreditTransactions", func(i int) error {
			_, err := svc.ListCreditTransactions(ctx, id(i), 20, "")
			return err
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := c.op(i); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
