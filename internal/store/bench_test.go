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
	st := store.New(testdb.Pool(b), store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: 10})
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
	if _, err := svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: 1, ChangedBy: "service:bench"}); err != nil {
		b.Fatal(err)
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
		{"DeductCreditsForAction", func(i int) error {
			_, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: id(i), Action: "render", IdempotencyKey: "a" + strconv.FormatInt(seq.Add(1), 10)})
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

// BenchmarkUsageSummary times GetUsageSummary's work (validation, one
// statement, assembly) for a user with 100,000 ledger entries spread over
// a year, among 100,000 entries of 1,000 other users, after VACUUM (as
// autovacuum leaves a table), so that the summary reads
// credit_transactions_user_id_created_at_idx alone.
func BenchmarkUsageSummary(b *testing.B) {
	ctx := context.Background()
	pool := testdb.Pool(b)
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10})
	for _, id := range []string{"user_heavy", "user_light"} {
		if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id}); err != nil {
			b.Fatal(err)
		}
	}
	end := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	start := end.AddDate(-1, 0, 0)
	// Interleaved like a busy ledger: the heavy user's entries (grants of
	// 50 every tenth entry, deductions of 1 with one of 12 reasons
	// otherwise) alternate with other users' entries. Balances are the
	// running sums, as the writes would have left them.
	seed := []string{
		`WITH u AS (INSERT INTO users (clerk_user_id) SELECT 'user_other' || o FROM generate_series(1, 1000) AS o RETURNING id)
		INSERT INTO accounts (id, owner_user_id, credits) SELECT id, id, 0 FROM u`,
		`WITH heavy AS (SELECT id FROM users WHERE clerk_user_id = 'user_heavy'),
		others AS (SELECT array_agg(id) AS ids FROM users WHERE clerk_user_id LIKE 'user_other%'),
		entries AS (
			SELECT i, CASE WHEN i % 10 = 1 THEN 50 ELSE -1 END AS delta
			FROM generate_series(1, 100000) AS i
		),
		heavy_entries AS (
			SELECT e.i, heavy.id AS user_id, e.delta, 10 + sum(e.delta) OVER (ORDER BY e.i) AS balance_after,
			       CASE WHEN e.delta > 0 THEN 'GRANT' ELSE 'DEDUCT' END AS kind,
			       CASE WHEN e.delta > 0 THEN 'purchase' ELSE 'action-' || (e.i % 12) END AS reason
			FROM entries e, heavy
		)
		INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key, created_at)
		SELECT x.user_id, x.delta, x.balance_after, x.kind, x.reason, x.key, $1::timestamptz + (x.i * interval '315 seconds')
		FROM heavy_entries h, others,
		LATERAL (VALUES
			(h.i, h.user_id, h.delta, h.balance_after, h.kind, h.reason, 'k' || h.i),
			(h.i, others.ids[1 + h.i % 1000], 1::bigint, 1::bigint, 'GRANT', 'purchase', 'k' || h.i)
		) AS x (i, user_id, delta, balance_after, kind, reason, key)
		ORDER BY h.i`,
		`UPDATE accounts a SET credits = (SELECT sum(delta) FROM credit_transactions t WHERE t.user_id = a.id)
		FROM users u WHERE u.id = a.id AND (u.clerk_user_id = 'user_heavy' OR u.clerk_user_id LIKE 'user_other%')`,
	}
	for i, q := range seed {
		var args []any
		if i == 1 {
			args = append(args, start)
		}
		if _, err := pool.Exec(ctx, q, args...); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE credit_transactions`); err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name string
		q    users.UsageQuery
	}{
		{"Year/ByDay", users.UsageQuery{Start: start, End: end, Period: users.PeriodDay}},
		{"Year/ByMonth", users.UsageQuery{Start: start, End: end, Period: users.PeriodMonth}},
		{"Year/Total", users.UsageQuery{Start: start, End: end}},
		{"Month/ByDay", users.UsageQuery{Start: end.AddDate(0, -1, 0), End: end, Period: users.PeriodDay}},
		{"Day/Total", users.UsageQuery{Start: end.AddDate(0, 0, -1), End: end}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			c.q.ClerkUserID = "user_heavy"
			b.ReportAllocs()
			var entries int64
			for b.Loop() {
				s, err := svc.SummarizeUsage(ctx, c.q)
				if err != nil {
					b.Fatal(err)
				}
				entries = s.Entries
			}
			b.ReportMetric(float64(entries), "entries")
		})
	}
}
