package stripehook_test

import (
	"context"
	"testing"
	"time"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/users"
)

// TestStripeBilledAccountGetsOneAllowancePerPeriod: with PRO in the plan
// catalog (an allowance each month) and PRO's Stripe price granting
// credits per paid invoice, an account Stripe bills gets exactly one
// allowance per period — invoice.paid's — over two periods: neither the
// plan change's refill nor the allowance job, run in both periods, grants
// it the catalog's. An account on PRO that Stripe does not bill still gets
// the catalog's from the job; a canceled subscription hands the account
// back to the catalog.
func TestStripeBilledAccountGetsOneAllowancePerPeriod(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, _, err := e.users.SetPlanAllowance(ctx, users.PlanAllowance{Plan: users.PlanPro, Allowance: proCredits, Period: users.AllowanceMonthly, UpdatedBy: "service:test"}); err != nil {
		t.Fatal(err)
	}
	cust := e.account("user_billed")
	if _, _, err := e.users.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_plain"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.users.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_plain", Plan: users.PlanPro, IdempotencyKey: "plain-pro"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sub := stripetest.Sub{ID: "sub_billed", Customer: cust, Status: "active",
		Items: []stripetest.Item{{PriceID: pricePro, Quantity: 1, PeriodEnd: now.AddDate(0, 1, 0)}}}
	e.fake.PutSub(sub)
	if code, out := e.deliver(stripetest.EventJSON("evt_billed_sub", billing.EventSubscriptionCreated, now.Unix(), stripetest.SubJSON(sub))); code != 200 {
		t.Fatalf("subscription: %d %v", code, out)
	}
	if p := e.accountOf("user_billed").Plan; p != users.PlanPro {
		t.Fatalf("plan %s, want PRO", p)
	}
	runJob := func(at time.Time) {
		t.Helper()
		if _, err := e.pool.Exec(ctx, "SELECT * FROM userd_run_allowances($1, 500)", at); err != nil {
			t.Fatal(err)
		}
	}
	for period := range 2 {
		start := now.AddDate(0, period, 0)
		end := start.AddDate(0, 1, 0)
		sub.Items[0].PeriodEnd = end
		e.fake.PutSub(sub)
		if period == 1 {
			runJob(start.Add(time.Hour))
		}
		id := "in_billed_" + string(rune('a'+period))
		if code, out := e.deliver(stripetest.EventJSON("evt_"+id, billing.EventInvoicePaid, now.Unix(),
			stripetest.InvoiceJSON(id, sub, "subscription_cycle", false))); code != 200 {
			t.Fatalf("invoice of period %d: %d %v", period, code, out)
		}
		runJob(start.Add(2 * time.Hour))
		runJob(start.AddDate(0, 0, 15))
	}
	grants := func(clerkUserID, source string) (n int, credits int64) {
		t.Helper()
		err := e.pool.QueryRow(ctx, `
			SELECT count(*), coalesce(sum(g.amount), 0)::bigint FROM credit_grants g
			JOIN accounts a ON a.id = g.account_id JOIN users u ON u.id = a.owner_user_id
			WHERE u.clerk_user_id = $1 AND g.source = $2`, clerkUserID, source).Scan(&n, &credits)
		if err != nil {
			t.Fatal(err)
		}
		return n, credits
	}
	if n, c := grants("user_billed", users.GrantSourceAllowance); n != 0 {
		t.Errorf("Stripe-billed account: %d catalog allowances (%d credits), want none", n, c)
	}
	if n, c := grants("user_billed", billing.SourceInvoice); n != 2 || c != 2*proCredits {
		t.Errorf("Stripe-billed account: %d invoice grants of %d credits, want 2 of %d (one per period)", n, c, 2*proCredits)
	}
	if n, _ := grants("user_plain", users.GrantSourceAllowance); n != 2 {
		t.Errorf("account on PRO without Stripe: %d catalog allowances, want 2 (one per period)", n)
	}
	// Canceled: the catalog's plan for FREE applies again (none here), and
	// a later return to PRO outside Stripe gets the catalog's allowance.
	sub.Status = "canceled"
	e.fake.PutSub(sub)
	if code, out := e.deliver(stripetest.EventJSON("evt_billed_cancel", billing.EventSubscriptionDeleted, now.Unix(), stripetest.SubJSON(sub))); code != 200 {
		t.Fatalf("cancel: %d %v", code, out)
	}
	if _, err := e.users.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_billed", Plan: users.PlanPro, IdempotencyKey: "billed-pro-by-hand"}); err != nil {
		t.Fatal(err)
	}
	if n, _ := grants("user_billed", users.GrantSourceAllowance); n != 1 {
		t.Errorf("after the subscription ended: %d catalog allowances, want 1", n)
	}
}
