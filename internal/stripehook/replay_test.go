package stripehook_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/stripetest"
)

// TestSyncReplaysMissedEvents: events Stripe kept but never delivered
// (userd was down) — a paid invoice, a pack bought, a pack bought and then
// refunded — are applied by sync-stripe from Stripe's event list, oldest
// first, exactly once: a dry run changes nothing and names them; a second
// sync replays nothing; the webhook delivering the invoice afterwards is a
// duplicate. An event already delivered is counted as applied before; one
// older than --since is not listed; one rendered in another API version
// fails, named; one of a customer no account claims is for no account.
func TestSyncReplaysMissedEvents(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cust := e.account("user_replay")
	now := time.Now()
	sub := stripetest.Sub{ID: "sub_replay", Customer: cust, Status: "active",
		Items: []stripetest.Item{{PriceID: pricePro, Quantity: 1, PeriodEnd: now.AddDate(0, 1, 0)}}}
	e.fake.PutSub(sub)
	created := now.Add(-48 * time.Hour).Unix()
	// Delivered before userd went down.
	subEvent := stripetest.EventJSON("evt_replay_sub", billing.EventSubscriptionCreated, created, stripetest.SubJSON(sub))
	if code, out := e.deliver(subEvent); code != 200 {
		t.Fatalf("subscription: %d %v", code, out)
	}
	e.fake.PutEvent(subEvent)
	// Missed.
	invoice := stripetest.EventJSON("evt_replay_invoice", billing.EventInvoicePaid, created+1,
		stripetest.InvoiceJSON("in_replay", sub, "subscription_create", false))
	e.fake.PutEvent(invoice)
	checkout := func(id, session, pi string, at int64) []byte {
		e.fake.PutCheckoutLines(session, []stripetest.Item{{PriceID: pricePack, Quantity: 1}})
		return stripetest.EventJSON(id, billing.EventCheckoutCompleted, at, map[string]any{
			"id": session, "object": "checkout.session", "mode": "payment", "payment_status": "paid",
			"customer": cust, "payment_intent": pi, "metadata": map[string]string{},
		})
	}
	e.fake.PutEvent(checkout("evt_replay_pack1", "cs_replay_1", "pi_replay_1", created+2))
	e.fake.PutEvent(checkout("evt_replay_pack2", "cs_replay_2", "pi_replay_2", created+3))
	e.fake.PutEvent(stripetest.EventJSON("evt_replay_refund2", billing.EventChargeRefunded, created+4, map[string]any{
		"id": "ch_replay_2", "object": "charge", "customer": cust, "payment_intent": "pi_replay_2", "refunded": true,
	}))
	// Too old for --since, and of another API version's train.
	e.fake.PutEvent(checkout("evt_replay_old", "cs_replay_old", "pi_replay_old", now.Add(-10*24*time.Hour).Unix()))
	e.fake.PutEvent(bytes.Replace(checkout("evt_replay_clover", "cs_replay_cl", "pi_replay_cl", created+5),
		[]byte(`"api_version":"`), []byte(`"api_version":"2025-10-29.clover`+`","x_was":"`), 1))

	before := e.accountOf("user_replay").Credits
	opts := billing.SyncOptions{Since: 7 * 24 * time.Hour}
	var out bytes.Buffer
	dry := opts
	dry.DryRun, dry.Out = true, &out
	sum, err := e.billing.Sync(ctx, e.api, dry)
	if err != nil {
		t.Fatal(err)
	}
	if c := e.accountOf("user_replay").Credits; c != before {
		t.Fatalf("a dry run changed the balance: %d, want %d", c, before)
	}
	if sum.Events != 6 || sum.Replayed != 4 || sum.AlreadyApplied != 1 || sum.EventsFailed != 1 {
		t.Errorf("dry run %+v: want 6 events, 4 would be replayed, 1 applied before, 1 failed", sum)
	}
	for _, id := range []string{"evt_replay_invoice", "evt_replay_pack1", "evt_replay_pack2", "evt_replay_refund2"} {
		if !strings.Contains(out.String(), "event "+id) {
			t.Errorf("dry run does not name %s:\n%s", id, out.String())
		}
	}
	if !strings.Contains(out.String(), "fail event evt_replay_clover") || !strings.Contains(out.String(), "clover") {
		t.Errorf("dry run does not name the other version's event:\n%s", out.String())
	}

	// A customer of another product on the same Stripe account: no
	// account claims it, so its event is for no account, not a failure.
	e.fake.PutEvent(stripetest.EventJSON("evt_replay_foreign", billing.EventInvoicePaid, created+6,
		stripetest.InvoiceJSON("in_foreign", stripetest.Sub{ID: "sub_foreign", Customer: "cus_foreign", Status: "active",
			Items: []stripetest.Item{{PriceID: pricePro, Quantity: 1, PeriodEnd: now.AddDate(0, 1, 0)}}}, "subscription_create", false)))

	want := before + proCredits + packCredits
	for run := range 2 {
		sum, err = e.billing.Sync(ctx, e.api, opts)
		if err != nil {
			t.Fatal(err)
		}
		replayed := 4
		if run == 1 {
			replayed = 0
		}
		if sum.Replayed != replayed || sum.AlreadyApplied != 5-replayed || sum.EventsFailed != 1 || sum.EventsIgnored != 1 {
			t.Errorf("sync %d: %+v; want %d replayed, %d applied before, 1 failed, 1 for no account", run, sum, replayed, 5-replayed)
		}
		if c := e.accountOf("user_replay").Credits; c != want {
			t.Errorf("sync %d: %d credits, want %d (the allowance and one pack, the refunded pack taken back)", run, c, want)
		}
	}
	if code, out := e.deliver(invoice); code != 200 || out["status"] != billing.OutcomeDuplicate {
		t.Errorf("the invoice delivered after the sync: %d %v, want 200 duplicate", code, out)
	}
	if c := e.accountOf("user_replay").Credits; c != want {
		t.Errorf("%d credits after the late delivery, want %d", c, want)
	}
	var grants int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM credit_transactions WHERE idempotency_key = 'stripe:invoice:in_replay'`).Scan(&grants); err != nil || grants != 1 {
		t.Errorf("%d ledger entries for the invoice (%v), want 1", grants, err)
	}
}
