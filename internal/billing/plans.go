package billing

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// StatusGivesPlan says what a subscription in a Stripe status does to its
// account's plan: true when the subscription's mapped plan applies. The
// full table (README, "Stripe billing"):
//
//	active              the mapped plan
//	trialing            the mapped plan (a trial is a paid plan for free)
//	past_due            the mapped plan is kept while Stripe retries the payment
//	incomplete          nothing yet: the first payment has not succeeded (23 h)
//	incomplete_expired  nothing: the first payment never succeeded
//	unpaid              nothing: retries ran out ("mark as unpaid" setting)
//	canceled            nothing: canceled, or retries ran out ("cancel" setting)
//	paused              nothing: a trial ended without a payment method
//	(deleted)           nothing: customer.subscription.deleted means canceled
//
// An account whose subscriptions give no plan is FREE; several give the
// highest of their plans.
func StatusGivesPlan(status string) bool {
	switch status {
	case "active", "trialing", "past_due":
		return true
	}
	return false
}

// planRank orders plans for "the highest of their plans".
var planRank = map[users.Plan]int{users.PlanFree: 0, users.PlanPro: 1, users.PlanEnterprise: 2}

// planOf computes the plan a customer's subscriptions give.
func (s *Service) planOf(ctx context.Context, subs []Subscription) (users.Plan, error) {
	plan := users.PlanFree
	for _, sub := range subs {
		if !StatusGivesPlan(sub.Status) {
			continue
		}
		for _, it := range sub.Items {
			p, err := s.store.GetPrice(ctx, it.PriceID)
			if errors.Is(err, users.ErrNoRow) {
				// Never guess a plan: the event fails (4xx, logged) and
				// Stripe retries it until the price is mapped.
				return "", &apperr.Error{Kind: apperr.KindFailedPrecondition,
					Message: fmt.Sprintf("subscription %s has price %s, which the Stripe price map does not have (SetStripePrice)", sub.ID, it.PriceID)}
			}
			if err != nil {
				return "", fmt.Errorf("read price map: %w", err)
			}
			if p.Kind == KindPlan && planRank[p.Plan] > planRank[plan] {
				plan = p.Plan
			}
		}
	}
	return plan, nil
}

// syncPlan fetches the customer's subscriptions from Stripe as they are now,
// records them and moves the account to the plan they give. It runs under
// the customer's lock, so two deliveries never apply two fetches in the
// other order. It returns what it did: "plan_changed" or "plan_unchanged".
func (s *Service) syncPlan(ctx context.Context, tx Locked, link Link, dryRun bool) (string, users.Plan, error) {
	if s.stripe == nil {
		return "", "", apperr.Unavailable(errNoAPI())
	}
	subs, err := s.stripe.ListSubscriptions(ctx, link.CustomerID)
	if err != nil {
		return "", "", fmt.Errorf("list subscriptions of %s: %w", link.CustomerID, err)
	}
	plan, err := s.planOf(ctx, subs)
	if err != nil {
		return "", "", err
	}
	acct, err := s.accounts.GetAccount(ctx, link.Ref)
	if err != nil {
		return "", "", fmt.Errorf("read account: %w", err)
	}
	if dryRun {
		if acct.Plan == plan {
			return "plan_unchanged", plan, nil
		}
		return "plan_changed", plan, nil
	}
	// Recorded and committed before the plan changes: the plan change's
	// refill (a database trigger, in SetPlan's own transaction) reads them
	// to leave a Stripe-billed account's allowance to invoice.paid. Under
	// the customer's lock still, so two fetches never commit out of order.
	if err := s.store.SaveSubscriptions(ctx, link.CustomerID, subs); err != nil {
		return "", "", fmt.Errorf("record subscriptions of %s: %w", link.CustomerID, err)
	}
	if acct.Plan == plan {
		return "plan_unchanged", plan, nil
	}
	// Each change gets a new key (the customer's count of changes and the
	// plan): a retry after a crash replays the same change, and a later
	// return to a plan the account had before is a new change.
	seq := link.PlanSeq
	for attempt := 0; ; attempt++ {
		seq++
		res, err := s.accounts.SetPlan(ctx, users.SetPlanInput{
			ClerkUserID: link.Ref.ClerkUserID, ClerkOrgID: link.Ref.ClerkOrgID, Plan: plan,
			IdempotencyKey: fmt.Sprintf("stripe:plan:%s:%d:%s", link.CustomerID, seq, plan),
			Reason:         "stripe subscription " + statusSummary(subs),
			Service:        ServiceName,
		})
		if err != nil {
			return "", "", fmt.Errorf("set plan %s: %w", plan, err)
		}
		if err := tx.BumpPlanSeq(ctx); err != nil {
			return "", "", err
		}
		// Replayed: the key's change was applied by an attempt whose
		// count did not commit, and the plan moved since (an operator):
		// counted now, the next key applies.
		if !res.Replayed || attempt == 2 {
			break
		}
	}
	return "plan_changed", plan, nil
}

// statusSummary names the subscriptions' statuses for a plan change's
// reason, e.g. "sub_1 active".
func statusSummary(subs []Subscription) string {
	var parts []string
	for _, sub := range subs {
		parts = append(parts, sub.ID+" "+sub.Status)
	}
	slices.Sort(parts)
	out := ""
	for i, p := range parts {
		if i > 0 {
			out += ", "
		}
		if len(out)+len(p) > 200 {
			return out + "..."
		}
		out += p
	}
	if out == "" {
		return "none"
	}
	return out
}

// SyncCustomer converges one linked customer's account on its
// subscriptions as Stripe has them now, under the customer's lock (as a
// webhook delivery does). dryRun changes nothing. It returns
// "plan_changed" or "plan_unchanged" and the plan.
func (s *Service) SyncCustomer(ctx context.Context, customerID string, dryRun bool) (string, users.Plan, error) {
	var what string
	var plan users.Plan
	err := s.withCustomerLock(ctx, customerID, func(ctx context.Context, tx Locked) error {
		link, err := tx.Customer(ctx)
		if err != nil {
			return fmt.Errorf("read stripe customer: %w", err)
		}
		what, plan, err = s.syncPlan(ctx, tx, link, dryRun)
		return err
	})
	return what, plan, err
}
