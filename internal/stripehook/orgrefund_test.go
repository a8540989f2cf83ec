package stripehook_test

import (
	"context"
	"testing"
	"time"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/users"
)

// TestOrganizationPackRefundAndDispute: an organization's credit pack is
// taken back on a full refund as a personal one is — down to zero, never
// below, once — by the service (the ledger entry has no member as actor);
// a lost dispute of the same payment takes nothing more.
func TestOrganizationPackRefundAndDispute(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	org := users.AccountRef{ClerkOrgID: "org_pack"}
	if _, err := e.users.ApplyClerkOrganization(ctx, users.ClerkOrgEvent{MessageID: "msg_org_pack", Type: "organization.created",
		Org: users.ClerkOrganization{ID: "org_pack", Name: "Pack", UpdatedAt: 1}}); err != nil {
		t.Fatal(err)
	}
	cust, _, err := e.billing.EnsureCustomer(ctx, billing.EnsureCustomerInput{Ref: org})
	if err != nil {
		t.Fatal(err)
	}
	acct := func() users.Account {
		a, err := e.users.GetAccount(ctx, org)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	start := acct().Credits
	e.fake.PutCheckoutLines("cs_org_pack", []stripetest.Item{{PriceID: pricePack, Quantity: 1}})
	if code, out := e.deliver(stripetest.EventJSON("evt_org_pack", billing.EventCheckoutCompleted, time.Now().Unix(), map[string]any{
		"id": "cs_org_pack", "object": "checkout.session", "mode": "payment", "payment_status": "paid",
		"customer": cust, "payment_intent": "pi_org_pack", "metadata": map[string]string{},
	})); code != 200 {
		t.Fatalf("pack checkout: %d %v", code, out)
	}
	if c := acct().Credits; c != start+packCredits {
		t.Fatalf("%d credits after the pack, want %d", c, start+packCredits)
	}
	if code, out := e.deliver(stripetest.EventJSON("evt_org_refund", billing.EventChargeRefunded, time.Now().Unix(), map[string]any{
		"id": "ch_org_pack", "object": "charge", "customer": cust, "payment_intent": "pi_org_pack", "refunded": true,
	})); code != 200 {
		t.Fatalf("refund: %d %v", code, out)
	}
	if got := e.outcome("evt_org_refund"); got != "purchase_reversed" {
		t.Errorf("refund outcome %q, want purchase_reversed", got)
	}
	if c := acct().Credits; c != start {
		t.Errorf("%d credits after the refund, want %d", c, start)
	}
	if code, out := e.deliver(stripetest.EventJSON("evt_org_dispute", billing.EventDisputeClosed, time.Now().Unix(), map[string]any{
		"id": "dp_org_pack", "object": "dispute", "payment_intent": "pi_org_pack", "status": "lost", "charge": "ch_org_pack",
	})); code != 200 {
		t.Fatalf("dispute: %d %v", code, out)
	}
	if got := e.outcome("evt_org_dispute"); got != "already_reversed" {
		t.Errorf("dispute outcome %q, want already_reversed", got)
	}
	if c := acct().Credits; c != start {
		t.Errorf("%d credits after the lost dispute, want %d (taken back once)", c, start)
	}
	var actorless bool
	var service string
	if err := e.pool.QueryRow(ctx, `SELECT actor_user_id IS NULL, service FROM credit_transactions WHERE idempotency_key = 'stripe:reversal:pi_org_pack'`).Scan(&actorless, &service); err != nil {
		t.Fatal(err)
	}
	if !actorless || service != billing.ServiceName {
		t.Errorf("reversal entry: no actor %v, service %q; want no actor, %s", actorless, service, billing.ServiceName)
	}
}
