package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/stripeapi"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/upstream"
	"github.com/userd/userd/internal/users"
)

// TestSyncStripeCommand: `userd sync-stripe` replays an invoice.paid that
// was never delivered: --dry-run names it and changes nothing, the run
// grants its allowance and counts it replayed, a rerun replays nothing;
// --since beyond Stripe's 30 days is refused.
func TestSyncStripeCommand(t *testing.T) {
	t.Parallel()
	bin := buildUserd(t)
	fake := stripetest.New(t)
	dbURL := testdb.URL(t)
	ctx := context.Background()

	// An account linked to its Stripe customer, and PRO's price mapped.
	st := store.New(testdb.Connect(t, dbURL), store.Options{})
	us := users.NewService(st, users.Options{InitialCredits: 10})
	t.Cleanup(func() { _ = us.Stop(ctx) })
	api, err := stripeapi.New(stripeapi.Config{SecretKey: "sk_test_cli", URL: fake.Server.URL, Retry: upstream.Policy{Attempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	bs := billing.NewService(st.Billing(), api, us, billing.Options{})
	if _, _, err := us.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_cli_stripe"}); err != nil {
		t.Fatal(err)
	}
	cust, _, err := bs.EnsureCustomer(ctx, billing.EnsureCustomerInput{Ref: users.AccountRef{ClerkUserID: "user_cli_stripe"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bs.SetPrice(ctx, billing.Price{PriceID: "price_cli_pro", Kind: billing.KindPlan, Plan: users.PlanPro, Credits: 100}, "service:test"); err != nil {
		t.Fatal(err)
	}
	sub := stripetest.Sub{ID: "sub_cli", Customer: cust, Status: "active",
		Items: []stripetest.Item{{PriceID: "price_cli_pro", Quantity: 1, PeriodEnd: time.Now().AddDate(0, 1, 0)}}}
	fake.PutSub(sub)
	fake.PutEvent(stripetest.EventJSON("evt_cli_invoice", billing.EventInvoicePaid, time.Now().Add(-time.Hour).Unix(),
		stripetest.InvoiceJSON("in_cli", sub, "subscription_create", false)))
	credits := func() int64 {
		a, err := us.GetAccount(ctx, users.AccountRef{ClerkUserID: "user_cli_stripe"})
		if err != nil {
			t.Fatal(err)
		}
		return a.Credits
	}

	env := []string{"DATABASE_URL=" + dbURL, "STRIPE_SECRET_KEY=sk_test_cli", "USERD_STRIPE_API_URL=" + fake.Server.URL,
		"USERD_STRIPE_API_RATE=100", "USERD_LOG_FORMAT=text"}
	dry := runUserd(t, bin, env, "sync-stripe", "--dry-run")
	if dry.code != 0 || !strings.Contains(dry.stdout, "event evt_cli_invoice invoice.paid "+cust) ||
		!strings.Contains(lastLine(dry.stderr), "1 events, 1 would be replayed") {
		t.Errorf("dry run exited %d, printed %q:\n%s", dry.code, dry.stdout, dry.stderr)
	}
	if c := credits(); c != 10 {
		t.Fatalf("%d credits after the dry run, want 10", c)
	}
	for i, want := range []string{"1 events, 1 replayed, 0 applied before", "1 events, 0 replayed, 1 applied before"} {
		r := runUserd(t, bin, env, "sync-stripe")
		if r.code != 0 || !strings.Contains(lastLine(r.stderr), want) {
			t.Errorf("run %d exited %d, want %q:\n%s", i, r.code, want, r.stderr)
		}
		if c := credits(); c != 110 {
			t.Errorf("run %d: %d credits, want 110 (the allowance, once)", i, c)
		}
	}
	if r := runUserd(t, bin, env, "sync-stripe", "--since", "800h"); r.code != 1 || !strings.Contains(r.stderr, "--since must be between 0 and 720h") {
		t.Errorf("--since 800h: exit %d:\n%s", r.code, r.stderr)
	}
}
