package stripehook_test

import (
	"testing"
	"time"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/users"
)

// TestInvoicePaidAfterPeriodEnd: an invoice.paid whose period ended before
// it was applied grants nothing and is acknowledged (200, recorded as
// allowance_period_over), so Stripe does not retry it; a redelivery is a
// duplicate.
func TestInvoicePaidAfterPeriodEnd(t *testing.T) {
	e := newEnv(t)
	cust := e.account("user_late_invoice")
	sub := stripetest.Sub{ID: "sub_late", Customer: cust, Status: "active",
		Items: []stripetest.Item{{PriceID: pricePro, Quantity: 1, PeriodEnd: time.Now().Add(-time.Hour)}}}
	e.fake.PutSub(sub)
	inv := stripetest.EventJSON("evt_late_invoice", billing.EventInvoicePaid, time.Now().Add(-40*24*time.Hour).Unix(),
		stripetest.InvoiceJSON("in_late", sub, "subscription_cycle", false))
	before := e.accountOf("user_late_invoice").Credits
	code, out := e.deliver(inv)
	if code != 200 || out["status"] != billing.OutcomeApplied {
		t.Fatalf("late invoice: %d %v, want 200 applied (acknowledged, not retried)", code, out)
	}
	if got := e.outcome("evt_late_invoice"); got != "allowance_period_over" {
		t.Errorf("outcome %q, want allowance_period_over", got)
	}
	if a := e.accountOf("user_late_invoice"); a.Credits != before {
		t.Errorf("%d credits after a late invoice, want %d (nothing granted)", a.Credits, before)
	}
	if code, out := e.deliver(inv); code != 200 || out["status"] != billing.OutcomeDuplicate {
		t.Errorf("redelivery: %d %v, want 200 duplicate", code, out)
	}
}

// TestUpgradeProrationGrantsDifference: the paid prorated invoice of a
// mid-period upgrade (PRO → ENTERPRISE: a negative line for PRO's unused
// time, a positive one for ENTERPRISE's rest of the period) grants the
// difference of the plans' credits, expiring at the period's end, once;
// a downgrade's prorated invoice grants nothing.
func TestUpgradeProrationGrantsDifference(t *testing.T) {
	e := newEnv(t)
	cust := e.account("user_upgrade")
	end := time.Now().AddDate(0, 0, 20).Truncate(time.Second)
	pro := stripetest.Sub{ID: "sub_up", Customer: cust, Status: "active",
		Items: []stripetest.Item{{PriceID: pricePro, Quantity: 1, PeriodEnd: end}}}
	e.fake.PutSub(pro)
	if code, out := e.deliver(stripetest.EventJSON("evt_up_inv1", billing.EventInvoicePaid, time.Now().Unix(),
		stripetest.InvoiceJSON("in_up_1", pro, "subscription_create", false))); code != 200 {
		t.Fatalf("first invoice: %d %v", code, out)
	}
	ent := pro
	ent.Items = []stripetest.Item{{PriceID: priceEnt, Quantity: 1, PeriodEnd: end}}
	e.fake.PutSub(ent)
	if code, out := e.deliver(stripetest.EventJSON("evt_up_sub", billing.EventSubscriptionUpdated, time.Now().Unix(), stripetest.SubJSON(ent))); code != 200 {
		t.Fatalf("upgrade: %d %v", code, out)
	}
	upgrade := stripetest.InvoiceLinesJSON("in_up_2", ent, "subscription_update", []stripetest.Line{
		{Item: stripetest.Item{PriceID: pricePro, Quantity: 1, PeriodEnd: end}, Proration: true, Amount: -600},
		{Item: stripetest.Item{PriceID: priceEnt, Quantity: 1, PeriodEnd: end}, Proration: true, Amount: 6000},
	})
	for _, id := range []string{"evt_up_inv2", "evt_up_inv2_again"} {
		if code, out := e.deliver(stripetest.EventJSON(id, billing.EventInvoicePaid, time.Now().Unix(), upgrade)); code != 200 {
			t.Fatalf("prorated invoice: %d %v", code, out)
		}
	}
	if got := e.outcome("evt_up_inv2"); got != "upgrade_allowance_granted" {
		t.Errorf("outcome %q, want upgrade_allowance_granted", got)
	}
	a := e.accountOf("user_upgrade")
	if a.Plan != users.PlanEnterprise || a.Credits != initialCredits+entCredits {
		t.Errorf("account %s with %d credits, want ENTERPRISE with %d (PRO's period plus the difference)", a.Plan, a.Credits, initialCredits+entCredits)
	}
	gs, err := e.users.ListGrants(t.Context(), users.AccountRef{ClerkUserID: "user_upgrade"})
	if err != nil {
		t.Fatal(err)
	}
	var diff int64
	for _, g := range gs.Grants {
		if g.Amount == entCredits-proCredits && g.ExpiresAt.Equal(end) {
			diff++
		}
	}
	if diff != 1 {
		t.Errorf("grants %+v: want one of %d expiring at %s", gs.Grants, entCredits-proCredits, end)
	}
	// Back to PRO: its prorated invoice credits ENTERPRISE back and charges
	// PRO; nothing is granted or taken.
	downgrade := stripetest.InvoiceLinesJSON("in_up_3", pro, "subscription_update", []stripetest.Line{
		{Item: stripetest.Item{PriceID: priceEnt, Quantity: 1, PeriodEnd: end}, Proration: true, Amount: -5000},
		{Item: stripetest.Item{PriceID: pricePro, Quantity: 1, PeriodEnd: end}, Proration: true, Amount: 500},
	})
	if code, out := e.deliver(stripetest.EventJSON("evt_up_inv3", billing.EventInvoicePaid, time.Now().Unix(), downgrade)); code != 200 {
		t.Fatalf("downgrade invoice: %d %v", code, out)
	}
	if got := e.outcome("evt_up_inv3"); got != "no_allowance" {
		t.Errorf("downgrade outcome %q, want no_allowance", got)
	}
	if c := e.accountOf("user_upgrade").Credits; c != initialCredits+entCredits {
		t.Errorf("%d credits after the downgrade's invoice, want %d", c, initialCredits+entCredits)
	}
}
