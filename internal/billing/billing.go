// Package billing is the domain of Stripe billing: which Stripe customer
// pays for which account, what Stripe's subscriptions, invoices and one-time
// payments do to that account's plan and credits, and the price map that
// says which Stripe price means which plan or credit pack. It changes
// accounts only through the users service (the same calls gRPC makes, each
// idempotent by key in the account's one key space), talks to Stripe only
// through the Stripe interface (internal/stripeapi implements it over
// stripe-go) and to the database only through Store (internal/store). No
// HTTP, no SQL, no protobuf here: the webhook endpoint (internal/stripehook)
// and the gRPC server translate.
//
// Ordering. Stripe documents no order of delivery, retries for three days,
// duplicates, and stamps events with one-second resolution, so no event is
// trusted to say what a subscription is now. Every subscription event (and
// checkout, and failed payment) only names a customer; under a lock of that
// customer the subscriptions are listed from Stripe's API as they are now
// (status=all) and the account is moved to the plan they give. Whatever
// order, duplication or timing the deliveries have, the last one applied
// saw Stripe's latest state. What an event says that does not change —
// an invoice was paid, a payment succeeded, a charge was refunded — is
// applied from the (signed) event itself, exactly once by an idempotency
// key derived from the Stripe object's id.
package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// ServiceName is the service recorded on the ledger entries and plan
// changes billing makes.
const ServiceName = "stripe"

// Grant sources (users.CreditChange.GrantSource): a paid subscription
// period and a credit pack are both purchases; the period's credits expire
// with it, a pack's never.
const (
	SourceInvoice  = users.GrantSourcePurchase
	SourcePurchase = users.GrantSourcePurchase
)

// Metadata keys userd sets on the Stripe customers it creates, and reads on
// customers, Checkout Sessions and subscriptions to find the account.
const (
	MetaAccountID   = "userd_account_id"
	MetaClerkUserID = "userd_clerk_user_id"
	MetaClerkOrgID  = "userd_clerk_org_id"
)

// Link is a Stripe customer linked to an account.
type Link struct {
	CustomerID string
	AccountID  uuid.UUID
	// Ref names the account to the users service.
	Ref users.AccountRef
	// PlanSeq counts the plan changes billing applied for the customer.
	PlanSeq int64
}

// Customer is a Stripe customer as the API returns it.
type Customer struct {
	ID       string
	Email    string
	Metadata map[string]string
	Deleted  bool
}

// Subscription is a Stripe subscription as the API returns it now.
type Subscription struct {
	ID         string
	CustomerID string
	Status     string
	Items      []SubscriptionItem
	Metadata   map[string]string
}

// SubscriptionItem is one price of a subscription (basil API versions keep
// the current period on the item).
type SubscriptionItem struct {
	PriceID   string
	Quantity  int64
	PeriodEnd time.Time
}

// LineItem is one line of a Checkout Session.
type LineItem struct {
	PriceID  string
	Quantity int64
}

// NewCustomer is what CreateCustomer creates.
type NewCustomer struct {
	Email          string
	Name           string
	Metadata       map[string]string
	IdempotencyKey string
}

// Stripe is what billing needs of Stripe's API.
type Stripe interface {
	CreateCustomer(ctx context.Context, c NewCustomer) (Customer, error)
	GetCustomer(ctx context.Context, id string) (Customer, error)
	// ListSubscriptions returns every subscription of a customer, whatever
	// its status (status=all).
	ListSubscriptions(ctx context.Context, customerID string) ([]Subscription, error)
	// ListCheckoutLineItems returns the lines of a Checkout Session.
	ListCheckoutLineItems(ctx context.Context, sessionID string) ([]LineItem, error)
}

// ErrNotFound is what Stripe answers for an object it does not have.
var ErrNotFound = errors.New("stripe: no such object")

// Accounts is what billing needs of the users service.
type Accounts interface {
	GetAccount(ctx context.Context, ref users.AccountRef) (users.Account, error)
	GrantCredits(ctx context.Context, c users.CreditChange) (users.CreditResult, error)
	DeductCredits(ctx context.Context, c users.CreditChange) (users.CreditResult, error)
	// DeductFromOrganizationForService deducts from an organization's
	// account with no member acting (a refund has none).
	DeductFromOrganizationForService(ctx context.Context, c users.CreditChange) (users.CreditResult, error)
	SetPlan(ctx context.Context, in users.SetPlanInput) (users.SetPlanResult, error)
}

// Store is billing's part of the database.
type Store interface {
	// LinkCustomer links l.CustomerID to l.AccountID unless either is
	// linked already, and returns whether this call linked them, the
	// account the customer is linked to and the customer the account is
	// linked to, after the call.
	LinkCustomer(ctx context.Context, l Link) (linked bool, customerAccount uuid.UUID, accountCustomer string, err error)
	// GetCustomer returns a customer's link (users.ErrNoRow without one).
	GetCustomer(ctx context.Context, customerID string) (Link, error)
	// GetCustomerOfAccount returns an account's link (users.ErrNoRow).
	GetCustomerOfAccount(ctx context.Context, accountID uuid.UUID) (Link, error)
	// ListCustomers returns up to limit links after a customer id.
	ListCustomers(ctx context.Context, after string, limit int32) ([]Link, error)
	// WithCustomerLock runs fn holding the customer's lock (a transaction
	// that fn's Locked writes into, committed when fn returns nil).
	WithCustomerLock(ctx context.Context, customerID string, fn func(ctx context.Context, tx Locked) error) error
	// EventSeen says whether an event id was applied.
	EventSeen(ctx context.Context, eventID string) (bool, error)
	// SaveSubscriptions records a customer's subscriptions as Stripe has
	// them, committed at once (not in the lock's transaction): the
	// catalog's refill reads them (db/migrations/00028_stripe_allowance.sql).
	SaveSubscriptions(ctx context.Context, customerID string, subs []Subscription) error
	// DeleteEventsBefore forgets up to limit applied events.
	DeleteEventsBefore(ctx context.Context, before time.Time, limit int32) (int64, error)

	SetPrice(ctx context.Context, p Price, changedBy string) (changed bool, err error)
	GetPrice(ctx context.Context, priceID string) (Price, error)
	ListPrices(ctx context.Context, after string, limit int32) ([]Price, error)
	ListPriceChanges(ctx context.Context, beforeID int64, limit int32) ([]PriceChange, error)

	GetPayment(ctx context.Context, paymentID string) (Payment, error)
}

// Locked is the customer's locked transaction.
type Locked interface {
	// Customer re-reads the link under the lock.
	Customer(ctx context.Context) (Link, error)
	BumpPlanSeq(ctx context.Context) error
	RecordEvent(ctx context.Context, eventID, eventType string, created time.Time, outcome string) error
	EventSeen(ctx context.Context, eventID string) (bool, error)
	RecordPayment(ctx context.Context, p Payment) error
	MarkPaymentReversed(ctx context.Context, paymentID string) error
}

// Payment is a one-time payment that granted credit packs.
type Payment struct {
	ID         string
	CustomerID string
	Credits    int64
	Reversed   bool
}

// Options configures a Service.
type Options struct {
	Log *slog.Logger
	// Clock is the service's clock (tests); time.Now when nil.
	Clock func() time.Time
	// MaxLocked bounds the applies holding a customer's lock at once
	// (DefaultMaxLocked when 0). Each holds a pool connection for the lock
	// while it calls Stripe's API, and takes another for its writes: keep
	// twice this well below the pool's size, so a slow Stripe cannot take
	// every connection from the calls that need none of it. Applies beyond
	// it wait, holding no connection.
	MaxLocked int
	// LockedTimeout bounds how long one apply holds a customer's lock, its
	// Stripe API calls included (DefaultLockedTimeout when 0): past it the
	// apply fails Unavailable (a delivery is answered 503 and retried by
	// Stripe) and its connection returns to the pool.
	LockedTimeout time.Duration
}

// Defaults of Options.
const (
	DefaultMaxLocked     = 4
	DefaultLockedTimeout = 30 * time.Second
)

// Service applies Stripe's billing to accounts.
type Service struct {
	store    Store
	stripe   Stripe
	accounts Accounts
	log      *slog.Logger
	now      func() time.Time

	// slots is the semaphore of customer-locked applies (Options.MaxLocked).
	slots         chan struct{}
	lockedTimeout time.Duration
	waiting       atomic.Int64
}

// NewService returns a Service. stripe may be nil when no Stripe API key is
// configured: events that need the API then fail Unavailable (Stripe
// retries them), and EnsureBillingCustomer fails FailedPrecondition.
func NewService(store Store, stripe Stripe, accounts Accounts, opts Options) *Service {
	s := &Service{store: store, stripe: stripe, accounts: accounts, log: opts.Log, now: opts.Clock}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if opts.MaxLocked <= 0 {
		opts.MaxLocked = DefaultMaxLocked
	}
	s.slots = make(chan struct{}, opts.MaxLocked)
	s.lockedTimeout = opts.LockedTimeout
	if s.lockedTimeout <= 0 {
		s.lockedTimeout = DefaultLockedTimeout
	}
	return s
}

// MaxLockedFor is Options.MaxLocked for a pool of poolSize connections:
// a quarter of it (each apply may hold two), at least one.
func MaxLockedFor(poolSize int) int { return max(1, poolSize/4) }

// LockStats says how many applies hold a customer's lock now, and how many
// wait for one of the Options.MaxLocked places (holding no connection).
func (s *Service) LockStats() (held, waiting int) {
	return len(s.slots), int(s.waiting.Load())
}

// withCustomerLock runs fn under the customer's lock (Store.WithCustomerLock)
// in one of Options.MaxLocked places, for at most Options.LockedTimeout.
// Every customer-locked apply goes through it: the lock holds a pool
// connection while fn calls Stripe's API.
func (s *Service) withCustomerLock(ctx context.Context, customerID string, fn func(context.Context, Locked) error) error {
	s.waiting.Add(1)
	select {
	case s.slots <- struct{}{}:
		s.waiting.Add(-1)
	case <-ctx.Done():
		s.waiting.Add(-1)
		return apperr.Unavailable(fmt.Errorf("wait to apply stripe customer %s: %w", customerID, ctx.Err()))
	}
	defer func() { <-s.slots }()
	lctx, cancel := context.WithTimeout(ctx, s.lockedTimeout)
	defer cancel()
	err := s.store.WithCustomerLock(lctx, customerID, fn)
	if err != nil && ctx.Err() == nil && errors.Is(lctx.Err(), context.DeadlineExceeded) {
		return apperr.Unavailable(fmt.Errorf("stripe customer %s held its lock longer than %s (Stripe's API slow?): %w", customerID, s.lockedTimeout, err))
	}
	return err
}

// errNoAPI is the error of work that needs Stripe's API without a key.
func errNoAPI() error {
	return &apperr.Error{Kind: apperr.KindFailedPrecondition, Message: "no Stripe API key is configured (STRIPE_SECRET_KEY)"}
}
