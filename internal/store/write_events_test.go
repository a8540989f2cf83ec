package store_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// TestEveryWriteWritesItsEvent: since 00020 the write functions write the
// change feed's events themselves (no trigger does). Every path that
// writes a ledger entry or a plan change — personal and organization
// deductions by amount and by action, grants, plan changes with and
// without a bonus, a new user's and a new organization's INITIAL entry, a
// tombstone — leaves exactly one event per row, on its owner's stream,
// with the actor and the payload consumers read; refused and replayed
// calls leave none.
func TestEveryWriteWritesItsEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.Pool(t)
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10, OrgInitialCredits: 7})
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_a", Email: "a@example.com"})
	must("EnsureUser", err)
	_, err = svc.ApplyClerkUser(ctx, users.ClerkEvent{MessageID: "msg_b", Type: "user.created",
		User: users.ClerkUser{ID: "user_b", Email: "b@example.com", UpdatedAt: 1}})
	must("webhook user.created", err)
	_, err = svc.DeleteClerkUser(ctx, "msg_c", "user.deleted", "user_never_seen")
	must("tombstone", err)
	_, err = svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: 2, ChangedBy: "test"})
	must("SetPrice", err)
	for i, c := range []users.CreditChange{
		{ClerkUserID: "user_a", Amount: 3, IdempotencyKey: "d1", Service: "billing"},
		{ClerkUserID: "user_a", Action: "render", IdempotencyKey: "a1"},
		{ClerkUserID: "user_a", Amount: 3, IdempotencyKey: "d1", Service: "billing"}, // replayed
	} {
		_, err := svc.DeductCredits(ctx, c)
		must(fmt.Sprint("DeductCredits ", i), err)
	}
	if _, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_a", Amount: 1000, IdempotencyKey: "d2"}); err == nil {
		t.Fatal("a deduction above the balance was applied")
	}
	_, err = svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_b", Amount: 5, IdempotencyKey: "g1"})
	must("GrantCredits", err)
	_, err = svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_a", Plan: users.PlanPro, BonusCredits: 4, IdempotencyKey: "p1"})
	must("SetPlan with bonus", err)
	_, err = svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_b", Plan: users.PlanEnterprise, IdempotencyKey: "p2"})
	must("SetPlan without bonus", err)

	_, err = svc.ApplyClerkOrganization(ctx, users.ClerkOrgEvent{MessageID: "msg_o", Type: "organization.created",
		Org: users.ClerkOrganization{ID: "org_1", Name: "One", UpdatedAt: 1}})
	must("organization.created", err)
	_, err = svc.ApplyClerkMembership(ctx, users.ClerkMembershipEvent{MessageID: "msg_m", Type: "organizationMembership.created",
		Membership: users.ClerkMembership{ID: "orgmem_1", OrgID: "org_1", UserID: "user_b", Role: "org:member", UpdatedAt: 1}})
	must("organizationMembership.created", err)
	_, err = svc.GrantCredits(ctx, users.CreditChange{ClerkOrgID: "org_1", Amount: 100, IdempotencyKey: "og1", Service: "billing"})
	must("organization grant", err)
	_, err = svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_1", MemberClerkUserID: "user_b",
		Period: users.CapPeriodMonth, Cap: 50, ChangedBy: "test"})
	must("cap", err)
	_, err = svc.DeductCredits(ctx, users.CreditChange{ClerkOrgID: "org_1", ClerkUserID: "user_b", Amount: 6, IdempotencyKey: "od1", Service: "billing"})
	must("organization deduction", err)
	_, err = svc.DeductCredits(ctx, users.CreditChange{ClerkOrgID: "org_1", ClerkUserID: "user_b", Action: "render", IdempotencyKey: "oa1"})
	must("organization deduction by action", err)
	if _, err := svc.DeductCredits(ctx, users.CreditChange{ClerkOrgID: "org_1", ClerkUserID: "user_a", Amount: 1, IdempotencyKey: "od2"}); err == nil {
		t.Fatal("a non-member's spend was applied")
	}
	_, err = svc.SetPlan(ctx, users.SetPlanInput{ClerkOrgID: "org_1", Plan: users.PlanPro, BonusCredits: 3, IdempotencyKey: "op1", Service: "billing"})
	must("organization SetPlan", err)

	// Ledger rows: every one has one credits.changed, with the payload of
	// the row, on the owner's stream, naming the actor by Clerk id.
	var entries, missing int
	if err := pool.QueryRow(ctx, `
		SELECT count(*),
		       count(*) FILTER (WHERE (SELECT count(*) FROM feed_events e
		           WHERE e.kind = 'credits.changed' AND e.account_id = t.user_id AND (e.payload->>'id')::bigint = t.id
		             AND e.payload = userd_credits_changed_payload(t)
		             AND e.clerk_user_id IS NOT DISTINCT FROM (SELECT u.clerk_user_id FROM users u WHERE u.id = a.owner_user_id)
		             AND e.user_id IS NOT DISTINCT FROM a.owner_user_id
		             AND e.clerk_org_id IS NOT DISTINCT FROM (SELECT o.clerk_org_id FROM organizations o WHERE o.id = a.organization_id)
		             AND e.actor_clerk_user_id IS NOT DISTINCT FROM (SELECT u.clerk_user_id FROM users u WHERE u.id = t.actor_user_id)
		       ) <> 1)
		FROM credit_transactions t JOIN accounts a ON a.id = t.user_id`).Scan(&entries, &missing); err != nil {
		t.Fatal(err)
	}
	// INITIAL x3 (two users, the organization), two personal deductions,
	// a grant, a bonus, the organization's grant, two spends and a bonus.
	if entries != 11 || missing != 0 {
		t.Errorf("%d ledger entries (want 11), %d without exactly one matching credits.changed", entries, missing)
	}
	var changes, changesMissing int
	if err := pool.QueryRow(ctx, `
		SELECT count(*),
		       count(*) FILTER (WHERE (SELECT count(*) FROM feed_events e
		           WHERE e.kind = 'plan.changed' AND e.account_id = pc.user_id AND e.payload = userd_plan_changed_payload(pc)
		       ) <> 1)
		FROM plan_changes pc`).Scan(&changes, &changesMissing); err != nil {
		t.Fatal(err)
	}
	if changes != 3 || changesMissing != 0 {
		t.Errorf("%d plan changes (want 3), %d without exactly one matching plan.changed", changes, changesMissing)
	}
	// The users' streams, in feed order: a plan change's bonus comes
	// before the change, a new user's user.created before its INITIAL
	// entry, and a tombstone has its user.deleted.
	for clerkID, want := range map[string][]string{
		"user_a":          {"user.created", "credits.changed", "credits.changed", "credits.changed", "credits.changed", "plan.changed"},
		"user_b":          {"user.created", "credits.changed", "credits.changed", "plan.changed"},
		"user_never_seen": {"user.deleted"},
	} {
		var got []string
		rows, err := pool.Query(ctx, `SELECT kind FROM feed_events WHERE clerk_user_id = $1 ORDER BY order_xid, id`, clerkID)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				t.Fatal(err)
			}
			got = append(got, k)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Errorf("%s's stream: %v, want %v", clerkID, got, want)
			continue
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s's stream: %v, want %v", clerkID, got, want)
				break
			}
		}
	}
	checkBooks(t, pool)
}

// TestFeedTriggersServeWritersWithoutTheirOwnEvents: the feed triggers on
// users (insert), credit_transactions and plan_changes skip, by their WHEN
// clause (00032), the rows of a transaction whose writer writes its own
// events (userd.writer_emits_events on), and still write the events of a
// writer that does not say so — a replica whose call began on an older
// body, which the rolling deploy keeps serving. Plain INSERTs stand for
// both: each row gets exactly one event without the setting, none with it.
func TestFeedTriggersServeWritersWithoutTheirOwnEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.Pool(t)
	write := func(clerkID string, emitsOwn bool) {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if emitsOwn {
			if _, err := tx.Exec(ctx, `SELECT set_config('userd.writer_emits_events', 'on', true)`); err != nil {
				t.Fatal(err)
			}
		}
		for _, q := range []string{
			`INSERT INTO users (clerk_user_id, email) VALUES ($1, $1 || '@example.com')`,
			`INSERT INTO accounts (id, owner_user_id, plan, credits)
			 SELECT id, id, 'FREE', 5 FROM users WHERE clerk_user_id = $1`,
			`INSERT INTO credit_transactions (user_id, delta, balance_after, kind, actor_user_id)
			 SELECT id, 5, 5, 'GRANT', id FROM users WHERE clerk_user_id = $1`,
			`INSERT INTO plan_changes (user_id, previous_plan, plan, idempotency_key, actor_user_id)
			 SELECT id, 'FREE', 'FREE', 'k', id FROM users WHERE clerk_user_id = $1`,
		} {
			if _, err := tx.Exec(ctx, q, clerkID); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	write("user_without_setting", false)
	write("user_with_setting", true)
	for clerkID, want := range map[string]string{
		"user_without_setting": "credits.changed plan.changed user.created",
		"user_with_setting":    "",
	} {
		var got string
		if err := pool.QueryRow(ctx, `SELECT coalesce(string_agg(kind, ' ' ORDER BY kind), '') FROM feed_events
			WHERE clerk_user_id = $1`, clerkID).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: events %q, want %q", clerkID, got, want)
		}
	}
}

// TestMemberLedgerReadsBothBranches: ListAccountCreditTransactions filtered
// by member reads an organization's entries by a member from 00032's
// partial index and a personal account's entries by its owner (which that
// index leaves out) from (user_id, id). Every page of both is exactly the
// unfiltered ledger's entries with that actor, newest first; a user who
// made none of an account's entries gets none.
func TestMemberLedgerReadsBothBranches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.Pool(t)
	st := store.New(pool, store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: 10, OrgInitialCredits: 50})
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	for _, id := range []string{"user_m", "user_n"} {
		_, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id})
		must("EnsureUser", err)
	}
	_, err := svc.ApplyClerkOrganization(ctx, users.ClerkOrgEvent{MessageID: "msg_o", Type: "organization.created",
		Org: users.ClerkOrganization{ID: "org_1", Name: "One", UpdatedAt: 1}})
	must("organization.created", err)
	for i, u := range []string{"user_m", "user_n"} {
		_, err = svc.ApplyClerkMembership(ctx, users.ClerkMembershipEvent{MessageID: fmt.Sprint("msg_m", i),
			Type: "organizationMembership.created", Membership: users.ClerkMembership{ID: fmt.Sprint("orgmem_", i),
				OrgID: "org_1", UserID: u, Role: "org:admin", UpdatedAt: 1}})
		must("membership", err)
	}
	for i := range 7 {
		for _, u := range []string{"user_m", "user_n"} {
			_, err = svc.DeductCredits(ctx, users.CreditChange{ClerkOrgID: "org_1", ClerkUserID: u, Amount: 1,
				IdempotencyKey: fmt.Sprintf("o-%s-%d", u, i)})
			must("organization deduction", err)
			_, err = svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: u, Amount: 1, IdempotencyKey: fmt.Sprintf("p-%s-%d", u, i)})
			must("personal deduction", err)
		}
	}
	orgID, err := st.OrgAccountID(ctx, "org_1")
	must("OrgAccountID", err)
	var mID, nID uuid.UUID
	must("user ids", pool.QueryRow(ctx, `SELECT (SELECT id FROM users WHERE clerk_user_id = 'user_m'),
		(SELECT id FROM users WHERE clerk_user_id = 'user_n')`).Scan(&mID, &nID))
	for _, c := range []struct {
		name    string
		account uuid.UUID
		member  string
		want    int
	}{
		{"organization, a member", orgID, "user_m", 7},
		{"personal, its owner", mID, "user_m", 7},
		{"personal, another user", mID, "user_n", 0},
		{"organization, not a user", orgID, "user_zz", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			all, err := st.ListAccountCreditTransactions(ctx, c.account, "", 0, 1000)
			must("whole ledger", err)
			var want []int64
			for _, tx := range all {
				if tx.ActorClerkUserID == c.member {
					want = append(want, tx.ID)
				}
			}
			var got []int64
			for before := int64(0); ; {
				page, err := st.ListAccountCreditTransactions(ctx, c.account, c.member, before, 3)
				must("member page", err)
				for _, tx := range page {
					got = append(got, tx.ID)
				}
				if len(page) < 3 {
					break
				}
				before = page[len(page)-1].ID
			}
			if len(want) != c.want || !slices.Equal(got, want) {
				t.Errorf("member pages = %v, want %v (%d entries)", got, want, c.want)
			}
		})
	}
}

// TestFirstAllowanceAtSignUp: where the catalog gives FREE an allowance, a
// new user gets its first allowance in the transaction that creates it,
// from userd_insert_user itself since 00032 (its INITIAL entry no longer
// goes through the trigger credit_transactions_initial_allowance), with its
// events after user.created and the INITIAL entry's. An organization
// created after a user in the same transaction (one webhook batch) still
// gets its allowance from the trigger: the setting userd_insert_user raises
// for its own statement is down again. And an INITIAL entry written
// without that setting (a body of before 00032) still gets it from the
// trigger. (An organization keeps its sign-up credits beside the
// allowance, as before 00032.)
func TestFirstAllowanceAtSignUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.Pool(t)
	for _, q := range []string{
		`SELECT userd_set_plan_allowance('FREE', 5, 'month', 0, 0, 'test')`,
		`SELECT * FROM userd_apply_clerk_batch('[
			{"svix_id": "msg_u", "type": "user.created", "kind": "user", "id": "user_a", "updated_at": 1},
			{"svix_id": "msg_o", "type": "organization.created", "kind": "organization", "id": "org_a", "name": "A", "updated_at": 1}
		]'::jsonb, 10, 10, true)`,
		`SELECT userd_insert_user('user_b', NULL, NULL, NULL, NULL, 1, 10, false)`,
		`SELECT userd_insert_user('user_tomb', NULL, NULL, NULL, NULL, 1, 10, true)`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// A writer of before 00032: the user, account and INITIAL entry by
	// plain INSERTs in one transaction, without the setting.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO users (clerk_user_id) VALUES ('user_old')`,
		`INSERT INTO accounts (id, owner_user_id, plan, credits) SELECT id, id, 'FREE', 0 FROM users WHERE clerk_user_id = 'user_old'`,
		`INSERT INTO credit_transactions (user_id, delta, balance_after, kind) SELECT id, 0, 0, 'INITIAL' FROM users WHERE clerk_user_id = 'user_old'`,
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		account, stream string
		credits         int64
		kinds           string
	}{
		{`(SELECT id FROM users WHERE clerk_user_id = 'user_a')`, `clerk_user_id = 'user_a'`, 5,
			"user.created credits.changed credits.changed"},
		{`(SELECT id FROM users WHERE clerk_user_id = 'user_b')`, `clerk_user_id = 'user_b'`, 5,
			"user.created credits.changed credits.changed"},
		{`(SELECT a.id FROM accounts a JOIN organizations o ON o.id = a.organization_id WHERE o.clerk_org_id = 'org_a')`,
			`clerk_org_id = 'org_a'`, 15, "organization.created credits.changed credits.changed"},
		{`(SELECT id FROM users WHERE clerk_user_id = 'user_old')`, `clerk_user_id = 'user_old'`, 5, ""},
		{`(SELECT id FROM users WHERE clerk_user_id = 'user_tomb')`, `clerk_user_id = 'user_tomb'`, 0, "user.deleted"},
	} {
		var credits, ledger int64
		var allowances int
		var kinds string
		if err := pool.QueryRow(ctx, `SELECT a.credits,
				(SELECT coalesce(sum(t.delta), 0) FROM credit_transactions t WHERE t.user_id = a.id),
				(SELECT count(*) FROM credit_transactions t WHERE t.user_id = a.id AND t.kind = 'ALLOWANCE'),
				(SELECT coalesce(string_agg(e.kind, ' ' ORDER BY e.order_xid, e.id), '') FROM feed_events e
				 WHERE e.`+c.stream+` AND e.kind IN ('user.created', 'user.deleted', 'organization.created', 'credits.changed'))
			FROM accounts a WHERE a.id = `+c.account).Scan(&credits, &ledger, &allowances, &kinds); err != nil {
			t.Fatalf("%s: %v", c.stream, err)
		}
		wantAllowances := 1
		if c.credits == 0 {
			wantAllowances = 0
		}
		if credits != c.credits || ledger != credits || allowances != wantAllowances {
			t.Errorf("%s: balance %d, ledger sum %d, %d ALLOWANCE entries; want %d, %d, %d",
				c.stream, credits, ledger, allowances, c.credits, c.credits, wantAllowances)
		}
		if c.kinds != "" && kinds != c.kinds {
			t.Errorf("%s: events %q, want %q", c.stream, kinds, c.kinds)
		}
	}
}
