package store_test

import (
	"context"
	"fmt"
	"testing"

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
