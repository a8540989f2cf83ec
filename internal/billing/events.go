package billing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// Event types billing applies; others are acknowledged and ignored.
const (
	EventCheckoutCompleted      = "checkout.session.completed"
	EventCheckoutAsyncSucceeded = "checkout.session.async_payment_succeeded"
	EventSubscriptionCreated    = "customer.subscription.created"
	EventSubscriptionUpdated    = "customer.subscription.updated"
	EventSubscriptionDeleted    = "customer.subscription.deleted"
	EventSubscriptionPaused     = "customer.subscription.paused"
	EventSubscriptionResumed    = "customer.subscription.resumed"
	EventInvoicePaid            = "invoice.paid"
	EventInvoicePaymentFailed   = "invoice.payment_failed"
	EventChargeRefunded         = "charge.refunded"
	EventDisputeClosed          = "charge.dispute.closed"
)

// HandledEvents are the event types to subscribe the Stripe endpoint to.
var HandledEvents = []string{
	EventCheckoutCompleted, EventCheckoutAsyncSucceeded,
	EventSubscriptionCreated, EventSubscriptionUpdated, EventSubscriptionDeleted,
	EventSubscriptionPaused, EventSubscriptionResumed,
	EventInvoicePaid, EventInvoicePaymentFailed,
	EventChargeRefunded, EventDisputeClosed,
}

// Event is a verified Stripe event, translated by the webhook endpoint.
// Exactly one of the object fields is set for a handled type.
type Event struct {
	ID      string
	Type    string
	Created time.Time
	// CustomerID is the customer the event's object belongs to.
	CustomerID string

	Checkout *CheckoutSession
	Invoice  *Invoice
	Charge   *Charge
	Dispute  *Dispute
	// Subscription is the payload's subscription: only its customer (and
	// metadata, to link) are used; its state is fetched from the API.
	Subscription *Subscription
}

// CheckoutSession is the part of a Checkout Session billing reads.
type CheckoutSession struct {
	ID                string
	Mode              string // payment | subscription | setup
	PaymentStatus     string // paid | unpaid | no_payment_required
	ClientReferenceID string
	Metadata          map[string]string
	PaymentIntentID   string
}

// Invoice is the part of an invoice billing reads (basil shape: the
// subscription under parent.subscription_details, periods on the lines).
type Invoice struct {
	ID             string
	BillingReason  string
	SubscriptionID string
	Lines          []InvoiceLine
}

// InvoiceLine is one line of an invoice.
type InvoiceLine struct {
	PriceID   string
	Quantity  int64
	PeriodEnd time.Time
	Proration bool
	// Amount is the line's signed amount in the smallest currency unit:
	// a proration that credits unused time back is negative.
	Amount int64
}

// Charge is the part of a charge billing reads (charge.refunded).
type Charge struct {
	ID              string
	PaymentIntentID string
	// Refunded is true once the whole amount was refunded.
	Refunded bool
}

// Dispute is the part of a dispute billing reads (charge.dispute.closed).
type Dispute struct {
	ID              string
	PaymentIntentID string
	Status          string // won | lost | warning_closed | ...
}

// Outcomes of ApplyEvent.
const (
	OutcomeApplied   = "applied"
	OutcomeDuplicate = "duplicate"
	OutcomeIgnored   = "ignored"
)

// Handled says whether billing applies events of this type.
func Handled(eventType string) bool {
	for _, t := range HandledEvents {
		if t == eventType {
			return true
		}
	}
	return false
}

// ApplyEvent applies one verified event exactly once: an event id already
// applied changes nothing (OutcomeDuplicate), and every effect is keyed by
// the Stripe object it comes from, so a crash between the effect and the
// event's record is repaired by Stripe's redelivery. The event id is
// recorded only after every effect committed; nothing is acknowledged
// before. Errors: FailedPrecondition for an event that cannot be applied
// now (a customer linked to no account, an unmapped price: Stripe retries
// it), InvalidArgument for one that never can, others as the users
// service's.
func (s *Service) ApplyEvent(ctx context.Context, ev Event) (string, error) {
	if !Handled(ev.Type) {
		return OutcomeIgnored, nil
	}
	if ev.Dispute != nil && ev.CustomerID == "" && ev.Dispute.PaymentIntentID != "" {
		// A dispute names no customer: the purchase it disputes does.
		p, err := s.store.GetPayment(ctx, ev.Dispute.PaymentIntentID)
		if err != nil && !errors.Is(err, users.ErrNoRow) {
			return "", fmt.Errorf("read payment: %w", err)
		}
		ev.CustomerID = p.CustomerID
	}
	if ev.CustomerID == "" {
		// Guest checkouts and charges without a customer pay for no account.
		return OutcomeIgnored, nil
	}
	if !customerIDPattern.MatchString(ev.CustomerID) {
		return "", apperr.InvalidArgument(apperr.FieldViolation{Field: "customer", Description: "is not a Stripe customer id"})
	}
	seen, err := s.store.EventSeen(ctx, ev.ID)
	if err != nil {
		return "", fmt.Errorf("read stripe event: %w", err)
	}
	if seen {
		return OutcomeDuplicate, nil
	}
	var clientRef string
	var meta map[string]string
	switch {
	case ev.Checkout != nil:
		clientRef, meta = ev.Checkout.ClientReferenceID, ev.Checkout.Metadata
	case ev.Subscription != nil:
		meta = ev.Subscription.Metadata
	}
	if _, err := s.resolveLink(ctx, ev.CustomerID, clientRef, meta); err != nil {
		return "", err
	}
	outcome := OutcomeApplied
	err = s.withCustomerLock(ctx, ev.CustomerID, func(ctx context.Context, tx Locked) error {
		// Again under the lock: a concurrent delivery of the same event
		// may have applied it while this one waited.
		if seen, err := tx.EventSeen(ctx, ev.ID); err != nil || seen {
			if seen {
				outcome = OutcomeDuplicate
			}
			return err
		}
		link, err := tx.Customer(ctx)
		if err != nil {
			return fmt.Errorf("read stripe customer: %w", err)
		}
		what, err := s.apply(ctx, tx, link, ev)
		if err != nil {
			return err
		}
		return tx.RecordEvent(ctx, ev.ID, ev.Type, ev.Created, what)
	})
	if err != nil {
		return "", err
	}
	return outcome, nil
}

// apply does an event's work under the customer's lock and says what it
// did (recorded with the event).
func (s *Service) apply(ctx context.Context, tx Locked, link Link, ev Event) (string, error) {
	switch ev.Type {
	case EventInvoicePaid:
		if ev.Invoice == nil {
			return "", invalidEvent("invoice")
		}
		return s.grantInvoice(ctx, link, *ev.Invoice)
	case EventCheckoutCompleted, EventCheckoutAsyncSucceeded:
		if ev.Checkout == nil {
			return "", invalidEvent("checkout session")
		}
		if ev.Checkout.Mode == "payment" {
			return s.grantPurchase(ctx, tx, link, *ev.Checkout)
		}
		what, _, err := s.syncPlan(ctx, tx, link, false)
		return what, err
	case EventChargeRefunded:
		if ev.Charge == nil {
			return "", invalidEvent("charge")
		}
		if !ev.Charge.Refunded {
			return "partial_refund_kept", nil
		}
		return s.reversePurchase(ctx, tx, link, ev.Charge.PaymentIntentID)
	case EventDisputeClosed:
		if ev.Dispute == nil {
			return "", invalidEvent("dispute")
		}
		if ev.Dispute.Status != "lost" {
			return "dispute_" + ev.Dispute.Status, nil
		}
		return s.reversePurchase(ctx, tx, link, ev.Dispute.PaymentIntentID)
	default: // subscription events, invoice.payment_failed
		what, _, err := s.syncPlan(ctx, tx, link, false)
		return what, err
	}
}

func invalidEvent(object string) error {
	return apperr.InvalidArgument(apperr.FieldViolation{Field: "data.object", Description: "is not a " + object})
}

// grantInvoice grants a paid subscription invoice's allowance, once per
// invoice (key stripe:invoice:<id>), expiring at the end of its lines'
// period:
//   - each line of a PLAN price that is not a proration: the entry's
//     credits per unit (the period's allowance);
//   - the proration lines of a mid-period change (an upgrade paid at once,
//     proration_behavior=always_invoice, or prorations carried into the
//     next invoice): the credits of the lines Stripe charges for (amount >
//     0, the new plan for the rest of the period) minus those of the lines
//     it credits back (amount < 0, the old plan's unused time), when that
//     is positive: an upgrade grants the difference between the new and
//     the old plan's credits; a downgrade grants nothing and takes nothing
//     back.
//
// Lines whose period is over when the invoice is applied grant nothing
// (their credits would expire as they are granted).
func (s *Service) grantInvoice(ctx context.Context, link Link, inv Invoice) (string, error) {
	if inv.SubscriptionID == "" {
		return "not_a_subscription_invoice", nil
	}
	now := s.now()
	var full, diff int64
	var expires time.Time
	over := false
	for _, l := range inv.Lines {
		if l.PriceID == "" {
			continue
		}
		p, err := s.store.GetPrice(ctx, l.PriceID)
		if errors.Is(err, users.ErrNoRow) {
			return "", &apperr.Error{Kind: apperr.KindFailedPrecondition,
				Message: fmt.Sprintf("invoice %s has price %s, which the Stripe price map does not have (SetStripePrice)", inv.ID, l.PriceID)}
		}
		if err != nil {
			return "", fmt.Errorf("read price map: %w", err)
		}
		if p.Kind != KindPlan || p.Credits == 0 {
			continue
		}
		if !l.PeriodEnd.After(now) {
			over = true
			continue
		}
		n := p.Credits * max(l.Quantity, 1)
		switch {
		case !l.Proration:
			full += n
		case l.Amount > 0:
			diff += n
		case l.Amount < 0:
			diff -= n
		default:
			continue
		}
		if l.PeriodEnd.After(expires) {
			expires = l.PeriodEnd
		}
	}
	credits := full + max(diff, 0)
	if credits == 0 {
		if over {
			// Paid (or delivered) after its period ended. Not an error,
			// or Stripe would retry it for days.
			return "allowance_period_over", nil
		}
		return "no_allowance", nil
	}
	res, err := s.accounts.GrantCredits(ctx, users.CreditChange{
		ClerkUserID: link.Ref.ClerkUserID, ClerkOrgID: link.Ref.ClerkOrgID, Amount: credits,
		IdempotencyKey: "stripe:invoice:" + inv.ID,
		Reason:         "stripe invoice " + inv.ID,
		Service:        ServiceName,
		ExpiresAt:      expires,
		GrantSource:    SourceInvoice,
	})
	if err != nil {
		return "", fmt.Errorf("grant invoice allowance: %w", err)
	}
	switch {
	case res.Replayed:
		return "allowance_already_granted", nil
	case full == 0:
		return "upgrade_allowance_granted", nil
	}
	return "allowance_granted", nil
}

// grantPurchase grants the credit packs a paid one-time Checkout Session
// bought, never expiring, once per payment (key stripe:payment:<payment
// intent, or the session id>). Lines of prices that are not packs are
// ignored; an unpaid session (delayed payment methods) waits for
// checkout.session.async_payment_succeeded.
func (s *Service) grantPurchase(ctx context.Context, tx Locked, link Link, cs CheckoutSession) (string, error) {
	if cs.PaymentStatus != "paid" {
		return "awaiting_payment", nil
	}
	if s.stripe == nil {
		return "", apperr.Unavailable(errNoAPI())
	}
	lines, err := s.stripe.ListCheckoutLineItems(ctx, cs.ID)
	if err != nil {
		return "", fmt.Errorf("list line items of %s: %w", cs.ID, err)
	}
	var credits int64
	for _, l := range lines {
		p, err := s.store.GetPrice(ctx, l.PriceID)
		if errors.Is(err, users.ErrNoRow) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("read price map: %w", err)
		}
		if p.Kind == KindPack {
			credits += p.Credits * max(l.Quantity, 1)
		}
	}
	if credits == 0 {
		return "no_packs", nil
	}
	payment := cs.PaymentIntentID
	if payment == "" {
		payment = cs.ID
	}
	res, err := s.accounts.GrantCredits(ctx, users.CreditChange{
		ClerkUserID: link.Ref.ClerkUserID, ClerkOrgID: link.Ref.ClerkOrgID, Amount: credits,
		IdempotencyKey: "stripe:payment:" + payment,
		Reason:         "stripe purchase " + payment,
		Service:        ServiceName,
		GrantSource:    SourcePurchase,
	})
	if err != nil {
		return "", fmt.Errorf("grant purchase: %w", err)
	}
	if err := tx.RecordPayment(ctx, Payment{ID: payment, CustomerID: link.CustomerID, Credits: credits}); err != nil {
		return "", fmt.Errorf("record payment: %w", err)
	}
	if res.Replayed {
		return "purchase_already_granted", nil
	}
	return "purchase_granted", nil
}

// reversePurchase takes back what a refunded (in full) or lost-disputed
// payment granted: the pack's credits, or the whole balance when less is
// left (never negative), once per payment (key stripe:reversal:<payment>,
// shared by refund and dispute). Payments that granted no pack (a
// subscription's) take nothing back: their allowance expires with its
// period.
func (s *Service) reversePurchase(ctx context.Context, tx Locked, link Link, paymentID string) (string, error) {
	if paymentID == "" {
		return "no_payment", nil
	}
	p, err := s.store.GetPayment(ctx, paymentID)
	if errors.Is(err, users.ErrNoRow) {
		return "not_a_purchase", nil
	}
	if err != nil {
		return "", fmt.Errorf("read payment: %w", err)
	}
	if p.Reversed {
		return "already_reversed", nil
	}
	if err := s.deductUpTo(ctx, link, p.Credits, paymentID); err != nil {
		return "", err
	}
	if err := tx.MarkPaymentReversed(ctx, paymentID); err != nil {
		return "", fmt.Errorf("mark payment reversed: %w", err)
	}
	return "purchase_reversed", nil
}

// deductUpTo deducts amount, or the whole balance when less is left, with
// the reversal's key.
func (s *Service) deductUpTo(ctx context.Context, link Link, amount int64, paymentID string) error {
	for attempt := 0; ; attempt++ {
		acct, err := s.accounts.GetAccount(ctx, link.Ref)
		if err != nil {
			return fmt.Errorf("read account: %w", err)
		}
		n := min(amount, acct.Credits)
		if n <= 0 {
			return nil
		}
		c := users.CreditChange{
			ClerkUserID: link.Ref.ClerkUserID, Amount: n,
			IdempotencyKey: "stripe:reversal:" + paymentID,
			Reason:         "stripe refund or dispute of " + paymentID,
			Service:        ServiceName,
		}
		if link.Ref.ClerkOrgID != "" {
			// An organization's purchase: no member spends, the service
			// takes back (the ledger entry names the service alone).
			c.ClerkUserID, c.ClerkOrgID = "", link.Ref.ClerkOrgID
			_, err = s.accounts.DeductFromOrganizationForService(ctx, c)
		} else {
			_, err = s.accounts.DeductCredits(ctx, c)
		}
		switch kind := apperr.KindOf(err); {
		case err == nil:
			return nil
		case kind == apperr.KindInsufficientCredits && attempt < 5:
			// Spent meanwhile: read the balance again.
			continue
		case kind == apperr.KindConflict:
			// The key took another amount (an attempt whose mark did not
			// commit): the reversal happened.
			return nil
		default:
			return fmt.Errorf("reverse purchase: %w", err)
		}
	}
}

// ForgetEvents forgets the ids of events applied before a time, in
// batches, and says how many. An event delivered again after that is
// applied again: harmless, since every effect is keyed.
func (s *Service) ForgetEvents(ctx context.Context, before time.Time) (int64, error) {
	const batch = 1000
	var total int64
	for {
		n, err := s.store.DeleteEventsBefore(ctx, before, batch)
		total += n
		if err != nil {
			return total, fmt.Errorf("forget stripe events: %w", err)
		}
		if n < batch {
			return total, nil
		}
	}
}
