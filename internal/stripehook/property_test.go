package stripehook_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/stripehook"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/users"
)

var propertySeeds = flag.Int("property.seeds", 12, "random subscription histories TestDeliveryOrderDoesNotMatter runs")

// op is one change Stripe makes to a customer's subscriptions, and the
// events it sends about it.
type op struct {
	cust int
	// sub is the subscription's index within the customer.
	sub       int
	status    string
	price     string
	period    int // months after the base: the item's period end
	events    []string
	invReason string // the paid invoice's billing_reason, with invoice.paid
}

// script is a random subscription history of a few customers, in Stripe's
// order, with what delivering it once in order must give.
type script struct {
	ops       []op
	customers int
	wantPlan  []users.Plan
	wantCred  []int64
}

var planOfPrice = map[string]users.Plan{pricePro: users.PlanPro, priceEnt: users.PlanEnterprise}
var creditsOfPrice = map[string]int64{pricePro: proCredits, priceEnt: entCredits}

func randomScript(rng *rand.Rand, customers, steps int) script {
	s := script{customers: customers, wantPlan: make([]users.Plan, customers), wantCred: make([]int64, customers)}
	type cur struct {
		sub           int
		status, price string
		period, nsubs int
	}
	state := make([]cur, customers)
	for i := range state {
		state[i] = cur{sub: -1}
		s.wantCred[i] = initialCredits
	}
	prices := []string{pricePro, priceEnt}
	other := func(p string) string {
		if p == pricePro {
			return priceEnt
		}
		return pricePro
	}
	for range steps {
		c := rng.IntN(customers)
		st := &state[c]
		o := op{cust: c}
		live := st.sub >= 0 && (st.status == "active" || st.status == "trialing" || st.status == "past_due" || st.status == "unpaid" || st.status == "incomplete")
		switch {
		case !live: // subscribe (again)
			st.sub, st.nsubs, st.price, st.period = st.nsubs, st.nsubs+1, prices[rng.IntN(2)], st.period+1
			switch rng.IntN(4) {
			case 0:
				st.status = "trialing"
				o.events = []string{billing.EventSubscriptionCreated}
			case 1:
				st.status = "incomplete"
				o.events = []string{billing.EventSubscriptionCreated}
			default:
				st.status = "active"
				o.events = []string{billing.EventSubscriptionCreated, billing.EventInvoicePaid}
				o.invReason = "subscription_create"
			}
		case st.status == "incomplete":
			if rng.IntN(3) == 0 {
				st.status = "incomplete_expired"
				o.events = []string{billing.EventSubscriptionUpdated}
			} else {
				st.status = "active"
				o.events = []string{billing.EventSubscriptionUpdated, billing.EventInvoicePaid}
				o.invReason = "subscription_create"
			}
		default:
			switch k := rng.IntN(10); {
			case k < 2 && st.status != "unpaid": // upgrade or downgrade
				st.price = other(st.price)
				o.events = []string{billing.EventSubscriptionUpdated}
			case k < 4 && (st.status == "active" || st.status == "trialing"): // payment fails
				st.status = "past_due"
				o.events = []string{billing.EventSubscriptionUpdated, billing.EventInvoicePaymentFailed}
			case k < 5 && st.status == "past_due": // retries run out
				st.status = "unpaid"
				o.events = []string{billing.EventSubscriptionUpdated}
			case k < 8: // renewal, or recovery of a failed payment
				st.status, st.period = "active", st.period+1
				o.events = []string{billing.EventSubscriptionUpdated, billing.EventInvoicePaid}
				o.invReason = "subscription_cycle"
			default: // cancel
				st.status = "canceled"
				o.events = []string{billing.EventSubscriptionDeleted}
			}
		}
		o.sub, o.status, o.price, o.period = st.sub, st.status, st.price, st.period
		if o.invReason != "" {
			s.wantCred[c] += creditsOfPrice[st.price]
		}
		s.ops = append(s.ops, o)
	}
	for c, st := range state {
		s.wantPlan[c] = users.PlanFree
		if st.sub >= 0 && billing.StatusGivesPlan(st.status) {
			s.wantPlan[c] = planOfPrice[st.price]
		}
	}
	return s
}

// event is one event of a run: its payload, fixed when Stripe sent it.
type event struct {
	payload []byte
	// due is the op after which it is delivered (shuffled runs).
	due int
}

// run plays a script against the fake Stripe and the endpoint: in order
// (each event delivered once, right after its op) or shuffled (each event
// delivered after a random delay, some twice, some concurrently, many
// sharing their second). It returns each customer's plan and balance.
func (e *env) run(t *testing.T, s script, name string, rng *rand.Rand, shuffled bool) ([]users.Plan, []int64) {
	ctx := context.Background()
	clerkIDs := make([]string, s.customers)
	custIDs := make([]string, s.customers)
	for c := range s.customers {
		clerkIDs[c] = fmt.Sprintf("user_%s_c%d", name, c)
		custIDs[c] = e.account(clerkIDs[c])
	}
	// Periods end months after base, in the future: an invoice paid after
	// its period ended grants nothing (its credits would expire at once).
	base := time.Now().UTC().Add(24 * time.Hour).Truncate(time.Hour)
	var pending []event
	n := 0
	deliverDue := func(k int) {
		var now, later []event
		for _, ev := range pending {
			if ev.due <= k {
				now = append(now, ev)
			} else {
				later = append(later, ev)
			}
		}
		pending = later
		rng.Shuffle(len(now), func(i, j int) { now[i], now[j] = now[j], now[i] })
		// Up to three deliveries at once: the customer's lock orders them.
		for len(now) > 0 {
			batch := now[:min(len(now), 1+rng.IntN(3))]
			now = now[len(batch):]
			var wg sync.WaitGroup
			for _, ev := range batch {
				wg.Go(func() {
					if code, out := e.deliver(ev.payload); code != http.StatusOK {
						t.Errorf("%s: delivery answered %d %v", name, code, out)
					}
				})
			}
			wg.Wait()
		}
	}
	for k, o := range s.ops {
		sub := stripetest.Sub{
			ID: fmt.Sprintf("sub_%s_c%d_%d", name, o.cust, o.sub), Customer: custIDs[o.cust], Status: o.status,
			Items: []stripetest.Item{{PriceID: o.price, Quantity: 1, PeriodEnd: base.AddDate(0, o.period, 0)}},
		}
		e.fake.PutSub(sub)
		for _, typ := range o.events {
			n++
			// Four events a second: many share their timestamp.
			created := base.Unix() + int64(n/4)
			var obj map[string]any
			switch typ {
			case billing.EventInvoicePaid, billing.EventInvoicePaymentFailed:
				obj = stripetest.InvoiceJSON(fmt.Sprintf("in_%s_%d", name, n), sub, o.invReason, false)
			default:
				obj = stripetest.SubJSON(sub)
			}
			ev := event{payload: stripetest.EventJSON(fmt.Sprintf("evt_%s_%d", name, n), typ, created, obj), due: k}
			if shuffled {
				ev.due = k + rng.IntN(len(s.ops)/2+1)
				if rng.IntN(4) == 0 { // a duplicate, delivered at another time
					pending = append(pending, event{payload: ev.payload, due: k + rng.IntN(len(s.ops)+1)})
				}
			}
			pending = append(pending, ev)
		}
		deliverDue(k)
	}
	deliverDue(len(s.ops) * 3)
	plans := make([]users.Plan, s.customers)
	creds := make([]int64, s.customers)
	for c, id := range clerkIDs {
		a, err := e.users.GetAccount(ctx, users.AccountRef{ClerkUserID: id})
		if err != nil {
			t.Fatal(err)
		}
		plans[c], creds[c] = a.Plan, a.Credits
	}
	return plans, creds
}

// orderMismatches runs nSeeds random histories against the endpoint over
// domain (made for the env), once in order and once shuffled, and counts
// the customers whose shuffled run ends elsewhere than the in-order run.
// The in-order run must match the script's own expectation.
func orderMismatches(t *testing.T, nSeeds int, domain func(*env) stripehook.Domain) int {
	mismatches := 0
	for seed := range nSeeds {
		// One subtest a seed: its database and pools close when it ends,
		// so the seeds do not hold connections for the whole test.
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(seed), 0x57121e))
			s := randomScript(rng, 3, 14)
			e := newEnv(t)
			e.serve(domain(e))
			inPlan, inCred := e.run(t, s, fmt.Sprintf("s%din", seed), rng, false)
			for c := range s.customers {
				if inPlan[c] != s.wantPlan[c] || inCred[c] != s.wantCred[c] {
					t.Fatalf("seed %d customer %d: in order ends at %s with %d credits, the history gives %s with %d",
						seed, c, inPlan[c], inCred[c], s.wantPlan[c], s.wantCred[c])
				}
			}
			shPlan, shCred := e.run(t, s, fmt.Sprintf("s%dsh", seed), rng, true)
			for c := range s.customers {
				if shPlan[c] != inPlan[c] || shCred[c] != inCred[c] {
					t.Logf("seed %d customer %d: shuffled delivery ends at %s with %d credits, in order at %s with %d",
						seed, c, shPlan[c], shCred[c], inPlan[c], inCred[c])
					mismatches++
				}
			}
		})
	}
	return mismatches
}

// TestDeliveryOrderDoesNotMatter: random subscription histories (create,
// trials, incomplete starts, upgrades, downgrades, failed payments and
// recoveries, unpaid, cancellation, resubscription, renewals with
// invoice.paid) delivered shuffled, duplicated, concurrently and with
// same-second timestamps end every account at the plan and balance that
// delivering them once in order gives; each invoice grants once.
func TestDeliveryOrderDoesNotMatter(t *testing.T) {
	if m := orderMismatches(t, *propertySeeds, func(e *env) stripehook.Domain { return e.billing }); m != 0 {
		t.Errorf("%d customers ended elsewhere than in-order delivery puts them", m)
	}
}

// TestLastEventWinsFails keeps the property test honest: a handler that
// applies each event's own subscription state (the last delivered wins)
// passes in order and fails shuffled.
func TestLastEventWinsFails(t *testing.T) {
	if m := orderMismatches(t, *propertySeeds, func(e *env) stripehook.Domain { return lastEventWins{e} }); m == 0 {
		t.Error("a last-event-wins handler passed the shuffled deliveries: the property test cannot tell")
	}
}

// lastEventWins is the naive handler: the plan is what the delivered
// event's subscription says, the allowance is granted per invoice.
type lastEventWins struct{ e *env }

func (h lastEventWins) ApplyEvent(ctx context.Context, ev billing.Event) (string, error) {
	var link billing.Link
	links, err := h.e.st.Billing().ListCustomers(ctx, "", 1000)
	if err != nil {
		return "", err
	}
	for _, l := range links {
		if l.CustomerID == ev.CustomerID {
			link = l
		}
	}
	switch {
	case ev.Subscription != nil:
		plan := users.PlanFree
		if ev.Type != billing.EventSubscriptionDeleted && billing.StatusGivesPlan(ev.Subscription.Status) {
			plan = planOfPrice[ev.Subscription.Items[0].PriceID]
		}
		_, err := h.e.users.SetPlan(ctx, users.SetPlanInput{ClerkUserID: link.Ref.ClerkUserID, Plan: plan,
			IdempotencyKey: "naive:" + ev.ID, Service: "naive"})
		return "applied", err
	case ev.Type == billing.EventInvoicePaid:
		_, err := h.e.users.GrantCredits(ctx, users.CreditChange{ClerkUserID: link.Ref.ClerkUserID,
			Amount: creditsOfPrice[ev.Invoice.Lines[0].PriceID], IdempotencyKey: "stripe:invoice:" + ev.Invoice.ID, Service: "naive"})
		return "applied", err
	}
	return "ignored", nil
}
