package ceilings_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/db/ceilings"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// benchVars gives every pgbench variable a ceiling may use a value: the
// first seeded user, client 0 and, as pgbench draws afresh for each
// script, a key of the script's own.
func benchVars(k int) map[string]string {
	return map[string]string{"users": "1", "n": "0", "k": strconv.Itoa(k), "client_id": "0"}
}

// TestCeilingsRunOnTheSchema runs every ceiling's statements once, as
// userd-bench's pgbench would, on a freshly migrated database seeded like
// the bench's, and checks that each did its work (one row back) and kept
// the ledger invariant. A schema change that breaks a ceiling fails here.
func TestCeilingsRunOnTheSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// The scripts write their events themselves, as userd's writers do, so
	// the feed triggers that 00020 keeps for a previous release's function
	// bodies stay silent for them, as they do for the writers (which mark
	// their transaction): a session-wide mark, the way make bench runs
	// pgbench (cmd/userd-bench/internal/crud/ceilings.go).
	cfg, err := pgxpool.ParseConfig(testdb.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["userd.writer_emits_events"] = "on"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: users.DefaultInitialCredits})
	if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_bench0", Email: "u0@bench.example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_bench0", Amount: 1000, IdempotencyKey: "seed"}); err != nil {
		t.Fatal(err)
	}
	// org_bench0 with its member user_bench0, as userd-bench seeds them:
	// a balance and a monthly cap.
	if _, err := svc.ApplyClerkOrganization(ctx, users.ClerkOrgEvent{MessageID: "msg_org", Type: "organization.created",
		Org: users.ClerkOrganization{ID: "org_bench0", Name: "Bench", UpdatedAt: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.ApplyClerkMembership(ctx, users.ClerkMembershipEvent{MessageID: "msg_mem", Type: "organizationMembership.created",
		Membership: users.ClerkMembership{ID: "orgmem_bench0", OrgID: "org_bench0", UserID: "user_bench0", Role: "org:member", UpdatedAt: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.GrantCredits(ctx, users.CreditChange{ClerkOrgID: "org_bench0", Amount: 100, IdempotencyKey: "seed"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_bench0", MemberClerkUserID: "user_bench0",
		Period: users.CapPeriodMonth, Cap: 50, ChangedBy: "test"}); err != nil {
		t.Fatal(err)
	}

	scripts, err := ceilings.All()
	if err != nil {
		t.Fatal(err)
	}
	var (
		names       []string
		webhookUser string
	)
	for i, s := range scripts {
		vars := benchVars(i + 1)
		if s.Name == "webhook_create" {
			webhookUser = "user_pgb" + vars["k"] + "_0"
		}
		names = append(names, s.Name)
		if s.Doc == "" {
			t.Errorf("%s.sql: no header comment saying what it does and keeps", s.Name)
		}
		cmds := s.SQL()
		if len(cmds) == 0 {
			t.Errorf("%s.sql: no SQL", s.Name)
		}
		for _, cmd := range cmds {
			sql, err := ceilings.Substitute(cmd, vars)
			if err != nil {
				t.Fatalf("%s.sql: %v", s.Name, err)
			}
			rows, err := pool.Query(ctx, sql)
			if err != nil {
				t.Fatalf("%s.sql: %v", s.Name, err)
			}
			n := 0
			for rows.Next() {
				n++
			}
			if err := rows.Err(); err != nil {
				t.Fatalf("%s.sql: %v\n%s", s.Name, err, sql)
			}
			if n != 1 {
				t.Errorf("%s.sql: %d rows back, want 1 (the operation did nothing?)\n%s", s.Name, n, sql)
			}
		}
	}
	// One key space per user: a key a deduction used cannot grant or set a
	// plan, and the statement that tries changes nothing.
	for _, s := range scripts {
		if s.Name != "grant" && s.Name != "set_plan" {
			continue
		}
		sql, err := ceilings.Substitute(s.SQL()[0], benchVars(slices.Index(names, "deduct")+1))
		if err != nil {
			t.Fatal(err)
		}
		var pgErr *pgconn.PgError
		if _, err := pool.Exec(ctx, sql); !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.UniqueViolation {
			t.Errorf("%s.sql with the key deduct.sql used: err = %v, want a unique violation", s.Name, err)
		}
	}
	// Every write ceiling with the change feed and without it.
	for _, want := range []string{"get_user", "deduct", "grant", "set_plan", "webhook_create", "org_deduct",
		"deduct_nofeed", "grant_nofeed", "set_plan_nofeed", "webhook_create_nofeed", "org_deduct_nofeed"} {
		if !slices.Contains(names, want) {
			t.Errorf("no ceiling %s.sql (have %v)", want, names)
		}
	}

	// Twice each (with and without feed): deduct -1, grant +1, set_plan to
	// PRO with +1: on top of 10 + 1000.
	u := checkLedger(t, svc, "user_bench0")
	if u.Credits != 1012 || u.Plan != users.PlanPro {
		t.Errorf("user_bench0: credits %d plan %s, want 1012 PRO", u.Credits, u.Plan)
	}
	// The organization's account: -1 twice, counted on the member's cap.
	var orgCredits, orgSum, capSpent int64
	if err := pool.QueryRow(ctx, `SELECT a.credits, (SELECT sum(t.delta) FROM credit_transactions t WHERE t.user_id = a.id),
		(SELECT c.spent FROM account_member_caps c WHERE c.account_id = a.id)
		FROM accounts a JOIN organizations o ON o.id = a.organization_id WHERE o.clerk_org_id = 'org_bench0'`).Scan(
		&orgCredits, &orgSum, &capSpent); err != nil {
		t.Fatal(err)
	}
	if orgCredits != 98 || orgSum != 98 || capSpent != 2 {
		t.Errorf("org_bench0: credits %d, ledger sum %d, cap spent %d; want 98, 98, 2", orgCredits, orgSum, capSpent)
	}
	// The ceilings with feed wrote the events userd writes for the same
	// calls, those without none: credits.changed for the deduction, the
	// grant, the organization's deduction, the plan bonus and the new
	// user's INITIAL entry, plan.changed, user.created.
	counts := map[string]int{}
	rows, err := pool.Query(ctx, `SELECT kind, count(*) FROM feed_events
		WHERE payload->>'idempotency_key' LIKE 'pgb%' OR clerk_user_id LIKE 'user_pgb%' GROUP BY kind`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var (
			kind string
			n    int
		)
		if err := rows.Scan(&kind, &n); err != nil {
			t.Fatal(err)
		}
		counts[kind] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"credits.changed": 5, "plan.changed": 1, "user.created": 1}; !maps.Equal(counts, want) {
		t.Errorf("events written by the ceilings: %v, want %v", counts, want)
	}
	if u := checkLedger(t, svc, webhookUser); u.Credits != users.DefaultInitialCredits {
		t.Errorf("webhook_create's user: credits %d, want %d", u.Credits, users.DefaultInitialCredits)
	}
}

// checkLedger asserts that the user's balance is the sum of its ledger and
// the balance_after of its newest entry.
func checkLedger(t *testing.T, svc *users.Service, clerkID string) users.User {
	t.Helper()
	ctx := context.Background()
	u, err := svc.GetUser(ctx, users.Lookup{ClerkUserID: clerkID})
	if err != nil {
		t.Fatalf("%s: %v", clerkID, err)
	}
	page, err := svc.ListCreditTransactions(ctx, clerkID, users.MaxPageSize, "")
	if err != nil {
		t.Fatalf("%s: %v", clerkID, err)
	}
	var sum int64
	for _, tx := range page.Transactions {
		sum += tx.Delta
	}
	if len(page.Transactions) == 0 || u.Credits != sum || page.Transactions[0].BalanceAfter != sum {
		t.Errorf("%s: credits %d, ledger %+v: not the sum of its deltas", clerkID, u.Credits, page.Transactions)
	}
	return u
}

func TestSubstituteRefusesUndefinedVariables(t *testing.T) {
	t.Parallel()
	got, err := ceilings.Substitute("SELECT :a::text || :b", map[string]string{"a": "1", "b": "2"})
	if err != nil || got != "SELECT 1::text || 2" {
		t.Errorf("Substitute = %q, %v", got, err)
	}
	if _, err := ceilings.Substitute("SELECT :a, :c", map[string]string{"a": "1"}); err == nil {
		t.Error("Substitute with :c undefined: no error")
	}
}
