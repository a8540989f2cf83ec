package store_test

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/userd/userd/db"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// The accounts rollout: 00010 (expand) applied while the previous release
// writes, and this release before and after 00019 (contract).

const (
	versionBeforeAccounts = 9  // the previous release's schema
	versionExpanded       = 18 // 00010 and every expand migration, 00019 pending
	// versionLatest: every migration (this release's schema).
	versionLatest = 1 << 62
)

// migrateTo brings the database at url from wherever it is up to version,
// with goose over the embedded migrations (as internal/migrate does).
func migrateTo(t *testing.T, pool *pgxpool.Pool, version int64) {
	t.Helper()
	fsys, err := fs.Sub(db.Migrations, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, fsys)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(context.Background(), version); err != nil {
		t.Fatalf("migrate up to %d: %v", version, err)
	}
}

// TestPersonalRoundBeforeAndAfterContract: this release serves the same on
// the expanded schema (the users mirror still there, while the previous
// release may run) and after the contract.
func TestPersonalRoundBeforeAndAfterContract(t *testing.T) {
	t.Parallel()
	for name, setup := range map[string]func(t *testing.T) *pgxpool.Pool{
		// The expanded schema, then on to this release's (which needs
		// 00022: a binary serves at its own schema version or later).
		"expanded": func(t *testing.T) *pgxpool.Pool {
			pool := expandedPool(t)
			migrateTo(t, pool, versionLatest)
			return pool
		},
		"contracted": func(t *testing.T) *pgxpool.Pool { return testdb.Pool(t) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool := setup(t)
			personalRound(t, pool)
			checkBooks(t, pool)
		})
	}
}

func personalRound(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10})
	u, created, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_round", Email: "round@example.com"})
	if err != nil || !created || u.Credits != 10 || u.Plan != users.PlanFree {
		t.Fatalf("EnsureUser: %+v %v %v", u, created, err)
	}
	if out, err := svc.ApplyClerkUser(ctx, users.ClerkEvent{MessageID: "msg_1", Type: "user.created",
		User: users.ClerkUser{ID: "user_hook", Email: "hook@example.com", UpdatedAt: 1}}); err != nil || out != users.OutcomeCreated {
		t.Fatalf("webhook user.created: %v %v", out, err)
	}
	d, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_round", Amount: 3, IdempotencyKey: "d1", Reason: "job", Service: "billing"})
	if err != nil || d.BalanceAfter != 7 || d.Service != "billing" || d.ActorUserID != u.ID || d.AccountID != u.ID {
		t.Fatalf("DeductCredits: %+v %v", d, err)
	}
	if again, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_round", Amount: 3, IdempotencyKey: "d1", Reason: "job", Service: "billing"}); err != nil || !again.Replayed || again.ID != d.ID {
		t.Errorf("replay: %+v %v", again, err)
	}
	if _, err := svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_round", Amount: 5, IdempotencyKey: "g1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: 2, ChangedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	if r, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_round", Action: "render", IdempotencyKey: "a1", Service: "render"}); err != nil || r.Delta != -2 {
		t.Fatalf("deduct for action: %+v %v", r, err)
	}
	p, err := svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_round", Plan: users.PlanPro, BonusCredits: 4, IdempotencyKey: "p1", Service: "billing"})
	if err != nil || p.User.Plan != users.PlanPro || p.User.Credits != 14 || p.Change.Service != "billing" || p.Bonus == nil || p.Bonus.Service != "billing" {
		t.Fatalf("SetPlan: %+v %v", p, err)
	}
	got, err := svc.GetUser(ctx, users.Lookup{ClerkUserID: "user_round"})
	if err != nil || got.Plan != users.PlanPro || got.Credits != 14 {
		t.Errorf("GetUser: %+v %v", got, err)
	}
	a, err := svc.GetAccount(ctx, users.AccountRef{ClerkUserID: "user_round"})
	if err != nil || a.ID != u.ID || a.Credits != 14 || a.Plan != users.PlanPro || a.OwnerClerkUserID != "user_round" || a.ClosedAt != nil {
		t.Errorf("GetAccount: %+v %v", a, err)
	}
	aff, err := svc.CanAfford(ctx, "user_round", users.Cost{Action: "render"})
	if err != nil || aff.Available != 14 || !aff.Allowed {
		t.Errorf("CanAfford: %+v %v", aff, err)
	}
	sum, err := svc.SummarizeUsage(ctx, users.UsageQuery{ClerkUserID: "user_round", End: time.Now().Add(time.Minute)})
	if err != nil || sum.Balance != 14 {
		t.Errorf("SummarizeUsage: balance %d, %v", sum.Balance, err)
	}
	page, err := svc.ListCreditTransactions(ctx, "user_round", 100, "")
	if err != nil || len(page.Transactions) != 5 {
		t.Fatalf("ListCreditTransactions: %d entries, %v", len(page.Transactions), err)
	}
	if tx := page.Transactions[0]; tx.Kind != users.TxPlanBonus || tx.Service != "billing" || tx.ActorUserID != u.ID {
		t.Errorf("newest entry: %+v", tx)
	}
	if tx := page.Transactions[len(page.Transactions)-1]; tx.Kind != users.TxInitial || tx.Service != "" || tx.ActorUserID != [16]byte{} {
		t.Errorf("initial entry: %+v", tx)
	}
	if out, err := svc.DeleteClerkUser(ctx, "msg_2", "user.deleted", "user_round"); err != nil || out != users.OutcomeDeleted {
		t.Fatalf("delete: %v %v", out, err)
	}
	if _, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_round", Amount: 1, IdempotencyKey: "d2"}); err == nil {
		t.Error("a deleted user's account was charged")
	}
	if out, err := svc.DeleteClerkUser(ctx, "msg_3", "user.deleted", "user_never_seen"); err != nil || out != users.OutcomeDeleted {
		t.Fatalf("tombstone: %v %v", out, err)
	}
}

// ledgerSnapshot is everything the expand migration must keep: per user,
// the balance and plan, every ledger row, every key, every plan change.
type ledgerSnapshot struct {
	Users       map[string]string
	Ledger      []string
	Keys        []string
	PlanChanges []string
}

func snapshot(t *testing.T, pool *pgxpool.Pool, balances string) ledgerSnapshot {
	t.Helper()
	ctx := context.Background()
	strs := func(q string) []string {
		rows, err := pool.Query(ctx, q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	s := ledgerSnapshot{Users: map[string]string{}}
	for _, row := range strs(balances) {
		s.Users[row[:36]] = row[37:]
	}
	s.Ledger = strs(`SELECT concat_ws('|', id, user_id, delta, balance_after, kind, reason, idempotency_key, created_at)
		FROM credit_transactions ORDER BY id`)
	s.Keys = strs(`SELECT concat_ws('|', user_id, idempotency_key, operation, created_at) FROM idempotency_keys ORDER BY 1`)
	s.PlanChanges = strs(`SELECT concat_ws('|', id, user_id, previous_plan, plan, bonus_credits, transaction_id, reason,
		idempotency_key, created_at) FROM plan_changes ORDER BY id`)
	return s
}

const (
	usersBalances    = `SELECT id || ' ' || plan || ' ' || credits FROM users`
	accountsBalances = `SELECT id || ' ' || plan || ' ' || credits FROM accounts WHERE owner_user_id IS NOT NULL`
)

// TestExpandKeepsTheBooksWhileThePreviousReleaseWrites: a database
// populated by the previous release's functions is migrated by 00010 while
// "old replicas" keep creating users and moving credits through the
// previous release's queries and signatures. Every balance, plan, ledger
// row, key and plan change written before is kept as it was (the personal
// account carries the user's balance and plan, under the user's id), and
// afterwards every account's balance is the sum of its ledger and the
// users mirror agrees with the accounts.
func TestExpandKeepsTheBooksWhileThePreviousReleaseWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.Connect(t, testdb.EmptyURL(t))
	migrateTo(t, pool, versionBeforeAccounts)

	// Populate through the previous release's functions.
	for _, q := range []string{
		`INSERT INTO prices (action, credits, updated_by) VALUES ('op', 2, 'test')`,
		`SELECT userd_apply_clerk_user(NULL, 'user.created', 'user_p' || g, 'p' || g || '@example.com', '', '', '', 1, 50)
		 FROM generate_series(1, 300) g`,
		`SELECT userd_change_credits('user_p' || g, 'DEDUCT', -(g % 7 + 1), 'r' || (g % 3), 'd' || g) FROM generate_series(1, 300) g`,
		`SELECT userd_change_credits('user_p' || g, 'GRANT', g, 'top-up', 'g' || g) FROM generate_series(1, 300, 2) g`,
		`SELECT userd_deduct_for_action('user_p' || g, 'op', 'a' || g) FROM generate_series(1, 300, 3) g`,
		`SELECT userd_set_plan('user_p' || g, 'PRO', g % 4, 'upgrade', 'p' || g) FROM generate_series(1, 300, 5) g`,
		`SELECT userd_delete_clerk_user('m' || g, 'user.deleted', 'user_p' || g, true) FROM generate_series(1, 300, 11) g`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	before := snapshot(t, pool, usersBalances)

	// Old replicas keep writing while 00010 runs.
	const oldInsert = `WITH new_user AS (
    INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, plan, credits, clerk_updated_at)
    VALUES ($1, $2, $3, $4, $5, 'FREE', $6, $7)
    ON CONFLICT (clerk_user_id) DO NOTHING
    RETURNING id, clerk_user_id, email, first_name, last_name, image_url, plan, credits, clerk_updated_at, created_at, updated_at, deleted_at
), initial AS (
    INSERT INTO credit_transactions (user_id, delta, balance_after, kind)
    SELECT new_user.id, new_user.credits, new_user.credits, 'INITIAL' FROM new_user
)
SELECT id, clerk_user_id, email, first_name, last_name, image_url, plan, credits, clerk_updated_at, created_at, updated_at, deleted_at FROM new_user`
	stop := make(chan struct{})
	var (
		wg     sync.WaitGroup
		writes atomic.Int64
		errs   = make(chan error, 4)
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 2))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				switch n := r.IntN(300) + 1; i % 4 {
				case 0:
					_, err = pool.Exec(ctx, oldInsert, fmt.Sprintf("user_w%d_%d", w, i), nil, nil, nil, nil, int64(20), nil)
				case 1:
					_, err = pool.Exec(ctx, `SELECT userd_change_credits($1, 'DEDUCT', -1, 'load', $2)`, fmt.Sprintf("user_p%d", n), fmt.Sprintf("w%d-%d", w, i))
				case 2:
					_, err = pool.Exec(ctx, `SELECT userd_change_credits($1, 'GRANT', 1, 'load', $2)`, fmt.Sprintf("user_p%d", n), fmt.Sprintf("w%d-%d", w, i))
				default:
					_, err = pool.Exec(ctx, `SELECT userd_set_plan($1, 'ENTERPRISE', 1, 'load', $2)`, fmt.Sprintf("user_p%d", n), fmt.Sprintf("w%d-%d", w, i))
				}
				if err != nil {
					errs <- fmt.Errorf("old replica write %d: %w", i, err)
					return
				}
				writes.Add(1)
			}
		}()
	}
	migrateTo(t, pool, versionExpanded)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d writes of the previous release during the migration", writes.Load())

	// What existed before is unchanged: the same rows, and each personal
	// account has what its user had, unless a write during the migration
	// moved it (then the books below vouch for it).
	after := snapshot(t, pool, accountsBalances)
	for id, was := range before.Users {
		if now, ok := after.Users[id]; !ok {
			t.Errorf("user %s has no personal account", id)
		} else if now != was && !touchedDuring(t, pool, id) {
			t.Errorf("user %s: %s before, %s after", id, was, now)
		}
	}
	if diff := cmp.Diff(before.Ledger, after.Ledger[:len(before.Ledger)]); diff != "" {
		t.Errorf("ledger rows changed (-before +after):\n%s", diff)
	}
	for _, k := range before.Keys {
		if !contains(after.Keys, k) {
			t.Errorf("key %s lost", k)
		}
	}
	if diff := cmp.Diff(before.PlanChanges, after.PlanChanges[:len(before.PlanChanges)]); diff != "" {
		t.Errorf("plan changes changed (-before +after):\n%s", diff)
	}
	var missing int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = u.id AND a.owner_user_id = u.id)`).Scan(&missing); err != nil || missing != 0 {
		t.Errorf("%d users without a personal account (%v)", missing, err)
	}
	checkBooks(t, pool)

	// And the contract keeps them too.
	migrateTo(t, pool, 1<<30)
	contracted := snapshot(t, pool, accountsBalances)
	if diff := cmp.Diff(after, contracted); diff != "" {
		t.Errorf("the contract changed the books (-before +after):\n%s", diff)
	}
	checkBooks(t, pool)
	personalRound(t, pool)
}

func touchedDuring(t *testing.T, pool *pgxpool.Pool, id string) bool {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM idempotency_keys WHERE user_id = $1 AND idempotency_key LIKE 'w%'`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
