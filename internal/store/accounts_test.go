package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/internal/users"
)

// The accounts SQL functions (db/migrations/00010_accounts.sql) on the
// real database: statuses, who acted, one key space per account, and the
// books of every account after concurrent mixed writes.

// newOrgAccount inserts an organization and its account with a balance
// (and the GRANT entry that makes the ledger add up), as the organization
// code does, and returns the account's id.
func newOrgAccount(t *testing.T, pool *pgxpool.Pool, clerkOrgID string, credits int64) uuid.UUID {
	t.Helper()
	ctx := context.Background()
	var id uuid.UUID
	err := pool.QueryRow(ctx, `
		WITH o AS (INSERT INTO organizations (clerk_org_id, name) VALUES ($1, 'Acme') RETURNING id)
		INSERT INTO accounts (organization_id, plan, credits) SELECT o.id, 'FREE', 0 FROM o RETURNING id`,
		clerkOrgID).Scan(&id)
	if err != nil {
		t.Fatalf("insert organization account: %v", err)
	}
	if credits > 0 {
		var status string
		if err := pool.QueryRow(ctx, `SELECT status FROM userd_account_change_credits($1, NULL, 'seed', 'GRANT', $2, 'seed', $3)`,
			id, credits, "seed-"+id.String()).Scan(&status); err != nil || status != "applied" {
			t.Fatalf("seed grant: %s %v", status, err)
		}
	}
	return id
}

// checkBooks asserts that every account's balance is the sum of its
// ledger, that every entry's balance_after is the running sum, and, while
// the users.credits/users.plan mirror exists, that it equals the personal
// account.
func checkBooks(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `
		SELECT a.id::text, a.credits, coalesce((SELECT sum(delta) FROM credit_transactions t WHERE t.user_id = a.id), 0)::bigint,
		       (SELECT count(*) FROM (
		           SELECT balance_after, sum(delta) OVER (ORDER BY id) AS running FROM credit_transactions t WHERE t.user_id = a.id
		       ) r WHERE r.balance_after <> r.running)::bigint
		FROM accounts a`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var (
			id                string
			credits, sum, bad int64
		)
		if err := rows.Scan(&id, &credits, &sum, &bad); err != nil {
			t.Fatal(err)
		}
		n++
		if credits != sum {
			t.Errorf("account %s: credits = %d, ledger sum = %d", id, credits, sum)
		}
		if bad != 0 {
			t.Errorf("account %s: %d entries whose balance_after is not the running sum", id, bad)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no accounts")
	}
	var mirror bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_name = 'users' AND column_name = 'credits')`).Scan(&mirror); err != nil {
		t.Fatal(err)
	}
	if !mirror {
		return
	}
	var off int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM users u JOIN accounts a ON a.id = u.id
		WHERE (u.credits, u.plan) IS DISTINCT FROM (a.credits, a.plan)`).Scan(&off); err != nil {
		t.Fatal(err)
	}
	if off != 0 {
		t.Errorf("%d users whose credits/plan mirror differs from their personal account", off)
	}
}

type accountWrite struct {
	Status      string
	Available   *int64
	TID         *int64
	TAccountID  *uuid.UUID
	TDelta      *int64
	TActor      *uuid.UUID
	TService    *string
	PriceCharge *int64
}

func changeCredits(t *testing.T, pool *pgxpool.Pool, account uuid.UUID, actor *uuid.UUID, service, kind string, delta int64, reason, key string) accountWrite {
	t.Helper()
	var w accountWrite
	err := pool.QueryRow(context.Background(), `
		SELECT status, available, t_id, t_account_id, t_delta, t_actor_user_id, t_service
		FROM userd_account_change_credits($1, $2, nullif($3, ''), $4, $5, $6, $7)`,
		account, actor, service, kind, delta, reason, key).
		Scan(&w.Status, &w.Available, &w.TID, &w.TAccountID, &w.TDelta, &w.TActor, &w.TService)
	if err != nil {
		t.Fatalf("userd_account_change_credits: %v", err)
	}
	return w
}

func TestAccountChangeCreditsStatuses(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	ctx := context.Background()
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10})
	member, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_member"})
	if err != nil {
		t.Fatal(err)
	}
	org := newOrgAccount(t, pool, "org_acme", 100)
	actor := &member.ID

	w := changeCredits(t, pool, org, actor, "billing", "DEDUCT", -30, "gpu", "k1")
	if w.Status != "applied" || *w.Available != 70 || *w.TAccountID != org || *w.TActor != member.ID || *w.TService != "billing" {
		t.Fatalf("deduct: %+v", w)
	}
	if w := changeCredits(t, pool, org, actor, "billing", "DEDUCT", -30, "gpu", "k1"); w.Status != "replayed" || *w.TID == 0 {
		t.Errorf("replay: %+v", w)
	}
	if w := changeCredits(t, pool, org, actor, "billing", "DEDUCT", -31, "gpu", "k1"); w.Status != "key_reused" {
		t.Errorf("key reused: %+v", w)
	}
	if w := changeCredits(t, pool, org, actor, "billing", "DEDUCT", -71, "gpu", "k2"); w.Status != "insufficient" || *w.Available != 70 {
		t.Errorf("insufficient: %+v", w)
	}
	if w := changeCredits(t, pool, org, nil, "billing", "GRANT", 1<<62, "x", "k3"); w.Status != "applied" {
		t.Errorf("big grant: %+v", w)
	}
	if w := changeCredits(t, pool, org, nil, "billing", "GRANT", 1<<62, "x", "k4"); w.Status != "overflow" {
		t.Errorf("overflow: %+v", w)
	}
	if w := changeCredits(t, pool, uuid.New(), actor, "billing", "GRANT", 1, "x", "k5"); w.Status != "not_found" {
		t.Errorf("no account: %+v", w)
	}
	// The same key on another account is another key: one key space per
	// account. The member's personal account applies "k1" as well.
	var status string
	if err := pool.QueryRow(ctx, `SELECT status FROM userd_change_credits('user_member', 'DEDUCT', -1, 'own', 'k1')`).Scan(&status); err != nil || status != "applied" {
		t.Errorf("personal k1: %s %v", status, err)
	}

	// A closed account refuses every change, but still replays.
	if _, err := pool.Exec(ctx, `UPDATE accounts SET closed_at = now() WHERE id = $1`, org); err != nil {
		t.Fatal(err)
	}
	if w := changeCredits(t, pool, org, actor, "billing", "DEDUCT", -1, "gpu", "k6"); w.Status != "closed" {
		t.Errorf("closed deduct: %+v", w)
	}
	if w := changeCredits(t, pool, org, nil, "billing", "GRANT", 1, "gpu", "k7"); w.Status != "closed" {
		t.Errorf("closed grant: %+v", w)
	}
	if w := changeCredits(t, pool, org, actor, "billing", "DEDUCT", -30, "gpu", "k1"); w.Status != "replayed" {
		t.Errorf("closed replay: %+v", w)
	}
	var planStatus string
	if err := pool.QueryRow(ctx, `SELECT status FROM userd_account_set_plan($1, NULL, 'billing', 'PRO', 0, 'up', 'k8')`, org).Scan(&planStatus); err != nil || planStatus != "closed" {
		t.Errorf("closed set plan: %s %v", planStatus, err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO prices (action, credits, updated_by) VALUES ('gpu.hour', 5, 'test')`); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT status FROM userd_account_deduct_for_action($1, $2, 'billing', 'gpu.hour', 'k9')`, org, member.ID).Scan(&status); err != nil || status != "closed" {
		t.Errorf("closed deduct for action: %s %v", status, err)
	}
	checkBooks(t, pool)
}

func TestAccountDeductForActionAndSetPlan(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	ctx := context.Background()
	org := newOrgAccount(t, pool, "org_plans", 20)
	if _, err := pool.Exec(ctx, `INSERT INTO prices (action, credits, updated_by) VALUES ('render', 7, 'test')`); err != nil {
		t.Fatal(err)
	}
	deduct := func(action, key string) (status string, available, price int64) {
		t.Helper()
		var a, p *int64
		if err := pool.QueryRow(ctx, `SELECT status, available, price FROM userd_account_deduct_for_action($1, NULL, 'svc', $2, $3)`,
			org, action, key).Scan(&status, &a, &p); err != nil {
			t.Fatal(err)
		}
		return status, deref(a), deref(p)
	}
	if st, av, pr := deduct("render", "a1"); st != "applied" || av != 13 || pr != 7 {
		t.Errorf("deduct render: %s %d %d", st, av, pr)
	}
	if st, _, pr := deduct("render", "a1"); st != "replayed" || pr != 7 {
		t.Errorf("replay render: %s %d", st, pr)
	}
	if st, _, _ := deduct("nope", "a2"); st != "unknown_action" {
		t.Errorf("unknown action: %s", st)
	}
	if st, _, _ := deduct("render", "a3"); st != "applied" {
		t.Errorf("second render: %s", st)
	}
	if st, av, _ := deduct("render", "a4"); st != "insufficient" || av != 6 {
		t.Errorf("third render: %s %d", st, av)
	}

	var (
		status       string
		plan         *string
		credits      *int64
		prev         *string
		actorService *string
		bonusDelta   *int64
	)
	if err := pool.QueryRow(ctx, `SELECT status, a_plan, a_credits, pc_previous_plan, pc_service, t_delta
		FROM userd_account_set_plan($1, NULL, 'billing', 'ENTERPRISE', 1000, 'upgrade', 'p1')`, org).
		Scan(&status, &plan, &credits, &prev, &actorService, &bonusDelta); err != nil {
		t.Fatal(err)
	}
	if status != "applied" || *plan != "ENTERPRISE" || *credits != 1006 || *prev != "FREE" || *actorService != "billing" || *bonusDelta != 1000 {
		t.Errorf("set plan: %s %v %v %v %v %v", status, deref(plan), deref(credits), deref(prev), deref(actorService), deref(bonusDelta))
	}
	if err := pool.QueryRow(ctx, `SELECT status FROM userd_account_set_plan($1, NULL, 'billing', 'ENTERPRISE', 1000, 'upgrade', 'p1')`, org).Scan(&status); err != nil || status != "replayed" {
		t.Errorf("set plan replay: %s %v", status, err)
	}
	if err := pool.QueryRow(ctx, `SELECT status FROM userd_account_set_plan($1, NULL, 'billing', 'PRO', 0, 'down', 'a1')`, org).Scan(&status); err != nil || status != "key_reused" {
		t.Errorf("set plan with a deduction's key: %s %v", status, err)
	}
	checkBooks(t, pool)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// TestConcurrentMixedWritesKeepEveryAccountsBooks: deductions by amount
// and by action, grants and plan changes race on personal and
// organization accounts, through the personal functions (old and new
// signatures) and the account functions; every account's balance is the
// sum of its ledger afterwards, and the users mirror matches.
func TestConcurrentMixedWritesKeepEveryAccountsBooks(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	ctx := context.Background()
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 50})
	var people []users.User
	for i := range 3 {
		u, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: fmt.Sprintf("user_mix%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		people = append(people, u)
	}
	orgs := []uuid.UUID{newOrgAccount(t, pool, "org_mix0", 200), newOrgAccount(t, pool, "org_mix1", 50)}
	if _, err := pool.Exec(ctx, `INSERT INTO prices (action, credits, updated_by) VALUES ('op', 3, 'test')`); err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range each {
				// A few keys repeat, so replays and key reuse race too.
				key := fmt.Sprintf("k%d", r.IntN(each*workers/2))
				u := people[r.IntN(len(people))]
				org := orgs[r.IntN(len(orgs))]
				var q string
				var args []any
				switch r.IntN(8) {
				case 0:
					q, args = `SELECT status FROM userd_change_credits($1, 'DEDUCT', $2, 'r', $3)`, []any{u.ClerkUserID, -int64(1 + r.IntN(20)), key}
				case 1:
					q, args = `SELECT status FROM userd_personal_change_credits($1, 'svc', 'GRANT', $2, 'r', $3)`, []any{u.ClerkUserID, int64(1 + r.IntN(20)), key}
				case 2:
					q, args = `SELECT status FROM userd_personal_deduct_for_action($1, 'svc', 'op', $2)`, []any{u.ClerkUserID, key}
				case 3:
					q, args = `SELECT status FROM userd_set_plan($1, $2, $3, 'r', $4)`, []any{u.ClerkUserID, []string{"FREE", "PRO"}[r.IntN(2)], int64(r.IntN(5)), key}
				case 4:
					q, args = `SELECT status FROM userd_account_change_credits($1, $2, 'svc', 'DEDUCT', $3, 'r', $4)`, []any{org, u.ID, -int64(1 + r.IntN(20)), key}
				case 5:
					q, args = `SELECT status FROM userd_account_change_credits($1, NULL, 'svc', 'GRANT', $2, 'r', $3)`, []any{org, int64(1 + r.IntN(20)), key}
				case 6:
					q, args = `SELECT status FROM userd_account_deduct_for_action($1, $2, 'svc', 'op', $3)`, []any{org, u.ID, key}
				default:
					q, args = `SELECT status FROM userd_account_set_plan($1, NULL, 'svc', $2, $3, 'r', $4)`, []any{org, []string{"PRO", "ENTERPRISE"}[r.IntN(2)], int64(r.IntN(5)), key}
				}
				var status string
				if err := pool.QueryRow(ctx, q, args...).Scan(&status); err != nil {
					errs <- fmt.Errorf("write %d: %s: %w", i, q, err)
					return
				}
				switch status {
				case "applied", "replayed", "key_reused", "insufficient":
				default:
					errs <- fmt.Errorf("write %d: %s: status %s", i, q, status)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkBooks(t, pool)
}

// expandedPool is a database migrated up to, not including, the contract
// (00019): the schema while the previous release may still run.
func expandedPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool := testdb.Connect(t, testdb.EmptyURL(t))
	migrateTo(t, pool, versionExpanded)
	return pool
}

// TestPreviousReleaseCallsKeepWorking: what the previous release runs —
// its queries, verbatim from its gen/sqlcdb, and the old signatures of the
// write functions — keeps working on the expanded schema: it creates users
// (their personal account comes with them), moves credits and plans on
// the personal account, and reads them back from users.credits and
// users.plan.
func TestPreviousReleaseCallsKeepWorking(t *testing.T) {
	t.Parallel()
	pool := expandedPool(t)
	ctx := context.Background()
	const insertUser = `-- name: InsertUserWithInitialCredits :one
WITH new_user AS (
    INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, plan, credits, clerk_updated_at)
    VALUES ($1, $2, $3, $4, $5, 'FREE', $6, $7)
    ON CONFLICT (clerk_user_id) DO NOTHING
    RETURNING id, clerk_user_id, email, first_name, last_name, image_url, plan, credits, clerk_updated_at, created_at, updated_at, deleted_at
), initial AS (
    INSERT INTO credit_transactions (user_id, delta, balance_after, kind)
    SELECT new_user.id, new_user.credits, new_user.credits, 'INITIAL' FROM new_user
)
SELECT id, clerk_user_id, email, first_name, last_name, image_url, plan, credits, clerk_updated_at, created_at, updated_at, deleted_at FROM new_user`
	const getUser = `SELECT id, plan, credits FROM users WHERE clerk_user_id = $1 AND deleted_at IS NULL`
	var id uuid.UUID
	if err := pool.QueryRow(ctx, insertUser, "user_old", "old@example.com", nil, nil, nil, int64(25), nil).Scan(
		&id, new(any), new(any), new(any), new(any), new(any), new(any), new(any), new(any), new(any), new(any), new(any)); err != nil {
		t.Fatalf("old InsertUserWithInitialCredits: %v", err)
	}
	if err := pool.QueryRow(ctx, insertUser, "user_old", "old@example.com", nil, nil, nil, int64(25), nil).Scan(&id); err != pgx.ErrNoRows {
		t.Errorf("old InsertUserWithInitialCredits again: %v, want no row", err)
	}
	var status string
	for _, q := range []string{
		`SELECT status FROM userd_change_credits('user_old', 'DEDUCT', -5, 'r', 'o1')`,
		`SELECT status FROM userd_change_credits('user_old', 'GRANT', 7, 'r', 'o2')`,
		`SELECT status FROM userd_set_plan('user_old', 'PRO', 3, 'up', 'o3')`,
	} {
		if err := pool.QueryRow(ctx, q).Scan(&status); err != nil || status != "applied" {
			t.Errorf("%s: %s %v", q, status, err)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO prices (action, credits, updated_by) VALUES ('old', 4, 'test')`); err != nil {
		t.Fatal(err)
	}
	var price int64
	if err := pool.QueryRow(ctx, `SELECT status, price FROM userd_deduct_for_action('user_old', 'old', 'o4')`).Scan(&status, &price); err != nil || status != "applied" || price != 4 {
		t.Errorf("old deduct for action: %s %d %v", status, price, err)
	}
	var (
		plan    string
		credits int64
	)
	if err := pool.QueryRow(ctx, getUser, "user_old").Scan(&id, &plan, &credits); err != nil {
		t.Fatal(err)
	}
	if plan != "PRO" || credits != 25-5+7+3-4 {
		t.Errorf("old GetUser: plan %s credits %d, want PRO %d", plan, credits, 25-5+7+3-4)
	}
	// The new release sees the same account, once the fleet migrated on
	// to its schema (it runs at its own version: 00019 and the expand
	// migrations after it, e.g. 00022's expiring grants).
	migrateTo(t, pool, versionLatest)
	st := store.New(pool, store.Options{})
	u, err := st.GetLiveUserByClerkID(ctx, "user_old")
	if err != nil || u.Plan != users.PlanPro || u.Credits != credits || u.ID != id {
		t.Errorf("new GetLiveUserByClerkID: %+v %v", u, err)
	}
	checkBooks(t, pool)
}

// TestPreviousReleaseFeedReadSkipsOrganizations: the previous release reads
// the feed through the user_events view with its own queries (verbatim
// from its gen/sqlcdb); it gets every personal event, in order, and never
// an organization's event — which it would otherwise take for a user's
// (credits.changed) or fail on (a kind it does not know).
func TestPreviousReleaseFeedReadSkipsOrganizations(t *testing.T) {
	t.Parallel()
	pool := expandedPool(t)
	ctx := context.Background()
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10})
	// Created with the function this release's EnsureUser calls (its
	// reads need the schema of this release, which a fleet reaches after
	// 00019; the feed is what this test is about).
	var u users.User
	if err := pool.QueryRow(ctx, `SELECT u_id FROM userd_create_user('user_feed', NULL, NULL, NULL, NULL, NULL, 10)`).Scan(&u.ID); err != nil {
		t.Fatal(err)
	}
	org := newOrgAccount(t, pool, "org_feed", 100)
	changeCredits(t, pool, org, &u.ID, "svc", "DEDUCT", -1, "r", "f1")
	if _, err := pool.Exec(ctx, `SELECT userd_emit_event('organization.updated', NULL, NULL, 'org_feed', NULL, NULL, '{}')`); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_feed", Amount: 2, IdempotencyKey: "f2", Service: "svc"}); err != nil {
		t.Fatal(err)
	}
	const oldRead = `-- name: ReadUserEvents :many
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
           p.order_xid AS pruned_xid, p.id AS pruned_id,
           CASE WHEN current_setting('synchronous_standby_names') = '' THEN -1::bigint
                ELSE (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint END AS sync_lsn
    FROM user_events_pruned p
), page AS (
    SELECT ue.id, ue.order_xid, ue.kind, ue.user_id, ue.clerk_user_id, ue.payload, ue.created_at FROM user_events ue
    WHERE (ue.order_xid, ue.id) > ($1::bigint, $2::bigint)
      AND ue.order_xid < (SELECT horizon FROM horizon)
    ORDER BY ue.order_xid, ue.id
    LIMIT $3::int
)
SELECT h.horizon, h.pruned_xid, h.pruned_id, h.sync_lsn,
       e.order_xid, e.id, e.kind, e.user_id, e.clerk_user_id, e.payload, e.created_at
FROM horizon h
LEFT JOIN page e ON true
ORDER BY e.order_xid, e.id`
	read := func() []string {
		rows, err := pool.Query(ctx, oldRead, int64(0), int64(0), int32(1000))
		if err != nil {
			t.Fatalf("old ReadUserEvents: %v", err)
		}
		defer rows.Close()
		var kinds []string
		for rows.Next() {
			var (
				h, px, pid, lsn int64
				oxid, id        *int64
				kind, clerkID   *string
				userID          *uuid.UUID
				payload         []byte
				created         any
			)
			if err := rows.Scan(&h, &px, &pid, &lsn, &oxid, &id, &kind, &userID, &clerkID, &payload, &created); err != nil {
				t.Fatal(err)
			}
			if kind == nil {
				continue
			}
			if deref(clerkID) != "user_feed" || deref(userID) != u.ID {
				t.Errorf("old reader got event %d (%s) of %q, want only user_feed's", *id, *kind, deref(clerkID))
			}
			kinds = append(kinds, *kind)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return kinds
	}
	// The reader hands out an event once every transaction before it has
	// finished (the server's horizon, which other databases' transactions
	// hold back too).
	var kinds []string
	testwait.Until(t, 2*time.Minute, "the events below the horizon", func() bool {
		kinds = read()
		return len(kinds) >= 3
	})
	want := []string{"user.created", "credits.changed", "credits.changed"}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("old reader kinds = %v, want %v", kinds, want)
	}
	var orgEvents int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feed_events WHERE clerk_org_id = 'org_feed'`).Scan(&orgEvents); err != nil || orgEvents != 4 {
		t.Errorf("organization events in the feed: %d (%v), want 4 (organization.created by 00011's trigger, seed grant, deduction, update)", orgEvents, err)
	}
}
