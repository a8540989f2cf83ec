package stripeapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v82"

	"github.com/userd/userd/internal/billing"
)

// TranslateEvent turns a verified (webhook) or fetched (ListEvents) Stripe event into billing's terms, reading
// the object with stripe-go's types (the pinned API version's shapes: an
// invoice's subscription under parent.subscription_details, periods on
// the lines). Types billing does not handle translate to their id and type
// only.
func TranslateEvent(e stripe.Event) (billing.Event, error) {
	ev := billing.Event{ID: e.ID, Type: string(e.Type), Created: time.Unix(e.Created, 0).UTC()}
	if !billing.Handled(ev.Type) {
		return ev, nil
	}
	raw := e.Data.Raw
	switch ev.Type {
	case billing.EventCheckoutCompleted, billing.EventCheckoutAsyncSucceeded:
		var cs stripe.CheckoutSession
		if err := decode(raw, &cs, "checkout.session"); err != nil {
			return ev, err
		}
		ev.CustomerID = customerID(cs.Customer)
		ev.Checkout = &billing.CheckoutSession{
			ID: cs.ID, Mode: string(cs.Mode), PaymentStatus: string(cs.PaymentStatus),
			ClientReferenceID: cs.ClientReferenceID, Metadata: cs.Metadata,
		}
		if cs.PaymentIntent != nil {
			ev.Checkout.PaymentIntentID = cs.PaymentIntent.ID
		}
	case billing.EventInvoicePaid:
		var inv stripe.Invoice
		if err := decode(raw, &inv, "invoice"); err != nil {
			return ev, err
		}
		ev.CustomerID = customerID(inv.Customer)
		ev.Invoice = &billing.Invoice{ID: inv.ID, BillingReason: string(inv.BillingReason)}
		if inv.Parent != nil && inv.Parent.SubscriptionDetails != nil && inv.Parent.SubscriptionDetails.Subscription != nil {
			ev.Invoice.SubscriptionID = inv.Parent.SubscriptionDetails.Subscription.ID
		}
		if inv.Lines != nil {
			if inv.Lines.HasMore {
				return ev, fmt.Errorf("invoice %s has more lines than its event carries", inv.ID)
			}
			for _, l := range inv.Lines.Data {
				line := billing.InvoiceLine{Quantity: l.Quantity, Amount: l.Amount}
				if l.Pricing != nil && l.Pricing.PriceDetails != nil {
					line.PriceID = l.Pricing.PriceDetails.Price
				}
				if l.Period != nil && l.Period.End > 0 {
					line.PeriodEnd = time.Unix(l.Period.End, 0).UTC()
				}
				if l.Parent != nil && l.Parent.SubscriptionItemDetails != nil {
					line.Proration = l.Parent.SubscriptionItemDetails.Proration
				}
				ev.Invoice.Lines = append(ev.Invoice.Lines, line)
			}
		}
	case billing.EventInvoicePaymentFailed:
		var inv stripe.Invoice
		if err := decode(raw, &inv, "invoice"); err != nil {
			return ev, err
		}
		ev.CustomerID = customerID(inv.Customer)
	case billing.EventChargeRefunded:
		var ch stripe.Charge
		if err := decode(raw, &ch, "charge"); err != nil {
			return ev, err
		}
		ev.CustomerID = customerID(ch.Customer)
		ev.Charge = &billing.Charge{ID: ch.ID, Refunded: ch.Refunded}
		if ch.PaymentIntent != nil {
			ev.Charge.PaymentIntentID = ch.PaymentIntent.ID
		}
	case billing.EventDisputeClosed:
		var d stripe.Dispute
		if err := decode(raw, &d, "dispute"); err != nil {
			return ev, err
		}
		// A dispute names no customer: billing finds it by the payment.
		ev.Dispute = &billing.Dispute{ID: d.ID, Status: string(d.Status)}
		if d.PaymentIntent != nil {
			ev.Dispute.PaymentIntentID = d.PaymentIntent.ID
		}
	default: // customer.subscription.*
		var s stripe.Subscription
		if err := decode(raw, &s, "subscription"); err != nil {
			return ev, err
		}
		sub := Subscription(&s)
		ev.CustomerID = sub.CustomerID
		ev.Subscription = &sub
	}
	return ev, nil
}

// CompatibleVersion says whether an event's API version is of the release
// train userd is pinned to (Stripe makes no breaking change within one):
// "2025-08-27.basil" and "2025-09-30.basil" are, "2025-10-29.clover" is not.
func CompatibleVersion(v string) bool {
	_, train, ok := strings.Cut(v, ".")
	_, pinned, _ := strings.Cut(APIVersion, ".")
	return ok && train == pinned && pinned != "preview"
}

// ListEvents calls fn with every event of the types billing handles
// created at or after since, oldest first, and with a translation error
// for an event that cannot be read (another API version's shape, a
// malformed object). Stripe lists newest first, a page (100) at a time,
// each page one rate-limited, retried call; the events are collected and
// handed over in reverse so that a purchase is applied before its refund,
// as delivery in order would. Stripe keeps events 30 days.
func (c *Client) ListEvents(ctx context.Context, since time.Time, fn func(billing.Event, error) error) error {
	type listed struct {
		ev  billing.Event
		err error
	}
	var all []listed
	// A listing that hands back an event it already listed (a page that
	// ignores starting_after) would page forever, holding every event it
	// read: it fails instead, before anything is applied.
	seen := map[string]bool{}
	after := ""
	for {
		page, err := call(ctx, c, func(ctx context.Context) ([]*stripe.Event, error) {
			p := &stripe.EventListParams{CreatedRange: &stripe.RangeQueryParams{GreaterThanOrEqual: since.Unix()}}
			for _, t := range billing.HandledEvents {
				p.Types = append(p.Types, stripe.String(t))
			}
			p.Limit = stripe.Int64(100)
			p.Single = true
			if after != "" {
				p.StartingAfter = stripe.String(after)
			}
			var out []*stripe.Event
			for e, err := range c.sc.V1Events.List(ctx, p) {
				if err != nil {
					return nil, err
				}
				out = append(out, e)
			}
			return out, nil
		})
		if err != nil {
			return err
		}
		for _, e := range page {
			if seen[e.ID] {
				return fmt.Errorf("the event listing loops (Stripe listed event %s twice, paging after %q): nothing was replayed", e.ID, after)
			}
			seen[e.ID] = true
			ev := billing.Event{ID: e.ID, Type: string(e.Type), Created: time.Unix(e.Created, 0).UTC()}
			if !CompatibleVersion(e.APIVersion) {
				all = append(all, listed{ev, fmt.Errorf("event %s is rendered in Stripe API version %q, not %s's release train: set the account's default API version (Stripe dashboard, Developers) or resend it to the webhook endpoint", e.ID, e.APIVersion, APIVersion)})
				continue
			}
			ev, err := TranslateEvent(*e)
			all = append(all, listed{ev, err})
		}
		if len(page) < 100 {
			break
		}
		after = page[len(page)-1].ID
	}
	for i := len(all) - 1; i >= 0; i-- {
		if err := fn(all[i].ev, all[i].err); err != nil {
			return err
		}
	}
	return nil
}

func decode(raw json.RawMessage, v any, object string) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("data.object is not a %s: %w", object, err)
	}
	var o struct {
		Object string `json:"object"`
	}
	_ = json.Unmarshal(raw, &o)
	if o.Object != object {
		return fmt.Errorf("data.object is a %q, not a %s", o.Object, object)
	}
	return nil
}

func customerID(c *stripe.Customer) string {
	if c == nil {
		return ""
	}
	return c.ID
}
