// Package stripeapi is billing.Stripe over Stripe's API with stripe-go
// (github.com/stripe/stripe-go/v82, pinned to API version
// stripe.APIVersion, "2025-08-27.basil"). Every call goes through one
// client-side rate limiter and internal/upstream's bounded retries
// (stripe-go's own are off, so one policy decides): rate limits (429),
// lock timeouts, 5xx and network errors are retried, creations with an
// idempotency key so a retry never creates twice.
package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/stripe/stripe-go/v82"
	"golang.org/x/time/rate"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/upstream"
)

// APIVersion is the Stripe API version userd speaks: stripe-go's pin. The
// webhook endpoint in the Stripe dashboard must send events of this
// version (see internal/stripehook).
const APIVersion = stripe.APIVersion

// DefaultRate is the default client-side limit of calls per second:
// below Stripe's live-mode limit (100 read and 100 write operations per
// second) with room for the application's own calls, and its test-mode
// limit (25).
const DefaultRate = 20

// Config configures a Client.
type Config struct {
	// SecretKey is the account's secret key ("sk_..." or restricted "rk_...").
	SecretKey string
	// URL replaces https://api.stripe.com (stripe-mock, tests).
	URL string
	// Rate is the calls per second (DefaultRate when 0).
	Rate float64
	// Retry bounds the retries of one call.
	Retry upstream.Policy
	// HTTPClient, if set, makes the requests.
	HTTPClient *http.Client
	// OnRetry, if set, is told about each wait before a retry.
	OnRetry func(upstream.Wait)
}

// Client is billing.Stripe over stripe-go.
type Client struct {
	sc      *stripe.Client
	limiter *rate.Limiter
	retry   upstream.Policy
	onRetry func(upstream.Wait)
}

var _ billing.Stripe = (*Client)(nil)

// New returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.SecretKey == "" {
		return nil, errors.New("STRIPE_SECRET_KEY is empty")
	}
	if cfg.Rate <= 0 {
		cfg.Rate = DefaultRate
	}
	bc := &stripe.BackendConfig{
		MaxNetworkRetries: stripe.Int64(0),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
		HTTPClient:        cfg.HTTPClient,
	}
	if bc.HTTPClient == nil {
		bc.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.URL != "" {
		bc.URL = stripe.String(cfg.URL)
	}
	b := stripe.GetBackendWithConfig(stripe.APIBackend, bc)
	sc := stripe.NewClient(cfg.SecretKey, stripe.WithBackends(&stripe.Backends{API: b, Connect: b, Uploads: b, MeterEvents: b}))
	return &Client{sc: sc, limiter: rate.NewLimiter(rate.Limit(cfg.Rate), max(1, int(cfg.Rate))), retry: cfg.Retry, onRetry: cfg.OnRetry}, nil
}

// call runs f under the rate limiter and the retry policy.
func call[T any](ctx context.Context, c *Client, f func(context.Context) (T, error)) (T, error) {
	v, _, err := upstream.Retry(ctx, c.retry, transient, c.onRetry, func(ctx context.Context) (T, error) {
		if err := c.limiter.Wait(ctx); err != nil {
			var zero T
			return zero, err
		}
		return f(ctx)
	})
	return v, wrap(err)
}

// transient says whether a failed call may succeed when made again.
func transient(err error) bool {
	var se *stripe.Error
	if errors.As(err, &se) {
		return se.HTTPStatusCode == http.StatusTooManyRequests || se.HTTPStatusCode == http.StatusConflict ||
			se.HTTPStatusCode >= 500
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// wrap turns Stripe's "no such object" into billing.ErrNotFound and never
// carries the request's key.
func wrap(err error) error {
	if err == nil {
		return nil
	}
	var se *stripe.Error
	if errors.As(err, &se) {
		if se.HTTPStatusCode == http.StatusNotFound || se.Code == stripe.ErrorCodeResourceMissing {
			return billing.ErrNotFound
		}
		return fmt.Errorf("stripe API: %d %s %s: %s", se.HTTPStatusCode, se.Type, se.Code, se.Msg)
	}
	return fmt.Errorf("stripe API: %w", err)
}

// CreateCustomer creates a customer with an idempotency key.
func (c *Client) CreateCustomer(ctx context.Context, in billing.NewCustomer) (billing.Customer, error) {
	return call(ctx, c, func(ctx context.Context) (billing.Customer, error) {
		p := &stripe.CustomerCreateParams{Metadata: in.Metadata}
		if in.Email != "" {
			p.Email = stripe.String(in.Email)
		}
		if in.Name != "" {
			p.Name = stripe.String(in.Name)
		}
		p.SetIdempotencyKey(in.IdempotencyKey)
		cu, err := c.sc.V1Customers.Create(ctx, p)
		if err != nil {
			return billing.Customer{}, err
		}
		return customer(cu), nil
	})
}

// GetCustomer returns a customer (Deleted when it was deleted).
func (c *Client) GetCustomer(ctx context.Context, id string) (billing.Customer, error) {
	return call(ctx, c, func(ctx context.Context) (billing.Customer, error) {
		cu, err := c.sc.V1Customers.Retrieve(ctx, id, nil)
		if err != nil {
			return billing.Customer{}, err
		}
		return customer(cu), nil
	})
}

func customer(cu *stripe.Customer) billing.Customer {
	return billing.Customer{ID: cu.ID, Email: cu.Email, Metadata: cu.Metadata, Deleted: cu.Deleted}
}

// ListSubscriptions lists every subscription of a customer, whatever its
// status (status=all: the default leaves canceled ones out).
func (c *Client) ListSubscriptions(ctx context.Context, customerID string) ([]billing.Subscription, error) {
	return call(ctx, c, func(ctx context.Context) ([]billing.Subscription, error) {
		p := &stripe.SubscriptionListParams{Customer: stripe.String(customerID), Status: stripe.String("all")}
		p.Limit = stripe.Int64(100)
		var out []billing.Subscription
		for s, err := range c.sc.V1Subscriptions.List(ctx, p) {
			if err != nil {
				return nil, err
			}
			out = append(out, Subscription(s))
		}
		return out, nil
	})
}

// Subscription translates a stripe-go subscription.
func Subscription(s *stripe.Subscription) billing.Subscription {
	out := billing.Subscription{ID: s.ID, Status: string(s.Status), Metadata: s.Metadata}
	if s.Customer != nil {
		out.CustomerID = s.Customer.ID
	}
	if s.Items != nil {
		for _, it := range s.Items.Data {
			item := billing.SubscriptionItem{Quantity: it.Quantity}
			if it.Price != nil {
				item.PriceID = it.Price.ID
			}
			if it.CurrentPeriodEnd > 0 {
				item.PeriodEnd = time.Unix(it.CurrentPeriodEnd, 0).UTC()
			}
			out.Items = append(out.Items, item)
		}
	}
	return out
}

// ListCheckoutLineItems lists the lines of a Checkout Session.
func (c *Client) ListCheckoutLineItems(ctx context.Context, sessionID string) ([]billing.LineItem, error) {
	return call(ctx, c, func(ctx context.Context) ([]billing.LineItem, error) {
		p := &stripe.CheckoutSessionListLineItemsParams{Session: stripe.String(sessionID)}
		p.Limit = stripe.Int64(100)
		var out []billing.LineItem
		for li, err := range c.sc.V1CheckoutSessions.ListLineItems(ctx, p) {
			if err != nil {
				return nil, err
			}
			l := billing.LineItem{Quantity: li.Quantity}
			if li.Price != nil {
				l.PriceID = li.Price.ID
			}
			out = append(out, l)
		}
		return out, nil
	})
}

// ListCustomers calls fn with every customer, a page (100) at a time
// (each page one rate-limited, retried call).
func (c *Client) ListCustomers(ctx context.Context, fn func(billing.Customer) error) error {
	after := ""
	for {
		page, err := call(ctx, c, func(ctx context.Context) ([]billing.Customer, error) {
			p := &stripe.CustomerListParams{}
			p.Limit = stripe.Int64(100)
			p.Single = true
			if after != "" {
				p.StartingAfter = stripe.String(after)
			}
			var out []billing.Customer
			for cu, err := range c.sc.V1Customers.List(ctx, p) {
				if err != nil {
					return nil, err
				}
				out = append(out, customer(cu))
			}
			return out, nil
		})
		if err != nil {
			return err
		}
		for _, cu := range page {
			if err := fn(cu); err != nil {
				return err
			}
		}
		if len(page) < 100 {
			return nil
		}
		after = page[len(page)-1].ID
	}
}
