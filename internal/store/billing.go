package store

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/users"
)

// Billing is billing.Store over the same pool as Store.
type Billing struct{ s *Store }

var _ billing.Store = Billing{}

// Billing returns the store of Stripe billing.
func (s *Store) Billing() Billing { return Billing{s: s} }

func linkOf(c sqlcdb.StripeCustomer) billing.Link {
	return billing.Link{
		CustomerID: c.CustomerID, AccountID: c.AccountID, PlanSeq: c.PlanSeq,
		Ref: users.AccountRef{ClerkUserID: deref(c.ClerkUserID), ClerkOrgID: deref(c.ClerkOrgID)},
	}
}

func (b Billing) LinkCustomer(ctx context.Context, l billing.Link) (bool, uuid.UUID, string, error) {
	for attempt := 0; ; attempt++ {
		row, err := b.s.q.LinkStripeCustomer(ctx, b.s.db, sqlcdb.LinkStripeCustomerParams{
			CustomerID: l.CustomerID, AccountID: l.AccountID,
			ClerkUserID: nullable(l.Ref.ClerkUserID), ClerkOrgID: nullable(l.Ref.ClerkOrgID),
		})
		if err != nil {
			return false, uuid.UUID{}, "", translate(fmt.Errorf("link stripe customer: %w", err))
		}
		// A concurrent link committed while the insert waited: read again,
		// in a new snapshot.
		if row.CustomerAccountID == uuid.Nil && attempt < 3 {
			continue
		}
		return row.Inserted, row.CustomerAccountID, row.AccountCustomerID, nil
	}
}

func (b Billing) GetCustomer(ctx context.Context, customerID string) (billing.Link, error) {
	c, err := b.s.q.GetStripeCustomer(ctx, b.s.db, customerID)
	if err != nil {
		return billing.Link{}, translate(fmt.Errorf("get stripe customer: %w", err))
	}
	return linkOf(c), nil
}

func (b Billing) GetCustomerOfAccount(ctx context.Context, accountID uuid.UUID) (billing.Link, error) {
	c, err := b.s.q.GetStripeCustomerOfAccount(ctx, b.s.db, accountID)
	if err != nil {
		return billing.Link{}, translate(fmt.Errorf("get stripe customer of account: %w", err))
	}
	return linkOf(c), nil
}

func (b Billing) ListCustomers(ctx context.Context, after string, limit int32) ([]billing.Link, error) {
	rows, err := b.s.q.ListStripeCustomers(ctx, b.s.db, sqlcdb.ListStripeCustomersParams{After: after, RowLimit: limit})
	if err != nil {
		return nil, translate(fmt.Errorf("list stripe customers: %w", err))
	}
	out := make([]billing.Link, len(rows))
	for i, r := range rows {
		out[i] = linkOf(r)
	}
	return out, nil
}

// WithCustomerLock holds a transaction on a connection of its own, with
// the customer's advisory transaction lock, while fn runs: fn's calls of
// the users service take other connections (their own one-round-trip
// writes), and fn's Locked writes commit with the lock's release. The wait
// for the lock is bounded by the session's lock_timeout, the connection
// by the pool's acquire timeout.
func (b Billing) WithCustomerLock(ctx context.Context, customerID string, fn func(context.Context, billing.Locked) error) error {
	conn, err := b.s.acquire(ctx)
	if err != nil {
		return translate(fmt.Errorf("lock stripe customer: %w", err))
	}
	defer conn.Release()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := b.s.q.LockStripeCustomer(ctx, tx, customerID); err != nil {
			return fmt.Errorf("lock stripe customer: %w", err)
		}
		return fn(ctx, locked{q: b.s.q, tx: tx, customerID: customerID})
	})
	return translate(err)
}

func (b Billing) EventSeen(ctx context.Context, eventID string) (bool, error) {
	seen, err := b.s.q.StripeEventSeen(ctx, b.s.db, eventID)
	return seen, translate(err)
}

// SaveSubscriptions upserts each subscription in its own statement on the
// pool (each commits at once; a retry rewrites the same rows).
func (b Billing) SaveSubscriptions(ctx context.Context, customerID string, subs []billing.Subscription) error {
	for _, s := range subs {
		p := sqlcdb.UpsertStripeSubscriptionParams{SubscriptionID: s.ID, CustomerID: customerID, Status: s.Status}
		if len(s.Items) > 0 {
			p.PriceID = nullable(s.Items[0].PriceID)
			if !s.Items[0].PeriodEnd.IsZero() {
				end := s.Items[0].PeriodEnd
				p.PeriodEnd = &end
			}
		}
		if err := b.s.q.UpsertStripeSubscription(ctx, b.s.db, p); err != nil {
			return translate(fmt.Errorf("record stripe subscription %s: %w", s.ID, err))
		}
	}
	return nil
}

func (b Billing) DeleteEventsBefore(ctx context.Context, before time.Time, limit int32) (int64, error) {
	n, err := b.s.q.DeleteStripeEventsBefore(ctx, b.s.db, sqlcdb.DeleteStripeEventsBeforeParams{Before: before, RowLimit: limit})
	return n, translate(err)
}

func (b Billing) SetPrice(ctx context.Context, p billing.Price, changedBy string) (bool, error) {
	changed, err := b.s.q.SetStripePrice(ctx, b.s.db, sqlcdb.SetStripePriceParams{
		PriceID: p.PriceID, Kind: p.Kind, Plan: nullable(string(p.Plan)), Credits: p.Credits, ChangedBy: changedBy,
	})
	if err != nil {
		return false, translate(fmt.Errorf("set stripe price: %w", err))
	}
	return changed, nil
}

func priceOf(r sqlcdb.StripePriceMap) billing.Price {
	return billing.Price{PriceID: r.PriceID, Kind: r.Kind, Plan: users.Plan(deref(r.Plan)), Credits: r.Credits,
		UpdatedAt: r.UpdatedAt, UpdatedBy: r.UpdatedBy}
}

func (b Billing) GetPrice(ctx context.Context, priceID string) (billing.Price, error) {
	r, err := b.s.q.GetStripePrice(ctx, b.s.db, priceID)
	if err != nil {
		return billing.Price{}, translate(fmt.Errorf("get stripe price: %w", err))
	}
	return priceOf(r), nil
}

func (b Billing) ListPrices(ctx context.Context, after string, limit int32) ([]billing.Price, error) {
	rows, err := b.s.q.ListStripePrices(ctx, b.s.db, sqlcdb.ListStripePricesParams{After: after, RowLimit: limit})
	if err != nil {
		return nil, translate(fmt.Errorf("list stripe prices: %w", err))
	}
	out := make([]billing.Price, len(rows))
	for i, r := range rows {
		out[i] = priceOf(r)
	}
	return out, nil
}

func (b Billing) ListPriceChanges(ctx context.Context, beforeID int64, limit int32) ([]billing.PriceChange, error) {
	rows, err := b.s.q.ListStripePriceChanges(ctx, b.s.db, sqlcdb.ListStripePriceChangesParams{BeforeID: beforeID, RowLimit: limit})
	if err != nil {
		return nil, translate(fmt.Errorf("list stripe price changes: %w", err))
	}
	out := make([]billing.PriceChange, len(rows))
	for i, r := range rows {
		c := billing.PriceChange{ID: r.ID, PriceID: r.PriceID, Kind: r.Kind, Plan: users.Plan(deref(r.Plan)),
			Credits: r.Credits, ChangedBy: r.ChangedBy, ChangedAt: r.ChangedAt}
		if r.PreviousKind != nil {
			c.Previous = &billing.Price{PriceID: r.PriceID, Kind: *r.PreviousKind, Plan: users.Plan(deref(r.PreviousPlan)),
				Credits: deref(r.PreviousCredits)}
		}
		out[i] = c
	}
	return out, nil
}

func (b Billing) GetPayment(ctx context.Context, paymentID string) (billing.Payment, error) {
	r, err := b.s.q.GetStripePayment(ctx, b.s.db, paymentID)
	if err != nil {
		return billing.Payment{}, translate(fmt.Errorf("get stripe payment: %w", err))
	}
	return billing.Payment{ID: r.PaymentID, CustomerID: r.CustomerID, Credits: r.Credits, Reversed: r.ReversedAt != nil}, nil
}

// locked is billing.Locked over the lock's transaction.
type locked struct {
	q          *sqlcdb.Queries
	tx         pgx.Tx
	customerID string
}

func (l locked) Customer(ctx context.Context) (billing.Link, error) {
	c, err := l.q.GetStripeCustomer(ctx, l.tx, l.customerID)
	if err != nil {
		return billing.Link{}, translate(fmt.Errorf("get stripe customer: %w", err))
	}
	return linkOf(c), nil
}

func (l locked) BumpPlanSeq(ctx context.Context) error {
	return translate(l.q.BumpStripePlanSeq(ctx, l.tx, l.customerID))
}

func (l locked) RecordEvent(ctx context.Context, eventID, eventType string, created time.Time, outcome string) error {
	return translate(l.q.RecordStripeEvent(ctx, l.tx, sqlcdb.RecordStripeEventParams{
		EventID: eventID, Type: eventType, Created: created, Outcome: outcome,
	}))
}

func (l locked) EventSeen(ctx context.Context, eventID string) (bool, error) {
	seen, err := l.q.StripeEventSeen(ctx, l.tx, eventID)
	return seen, translate(err)
}

func (l locked) RecordPayment(ctx context.Context, p billing.Payment) error {
	return translate(l.q.RecordStripePayment(ctx, l.tx, sqlcdb.RecordStripePaymentParams{
		PaymentID: p.ID, CustomerID: p.CustomerID, Credits: p.Credits,
	}))
}

func (l locked) MarkPaymentReversed(ctx context.Context, paymentID string) error {
	return translate(l.q.MarkStripePaymentReversed(ctx, l.tx, paymentID))
}
