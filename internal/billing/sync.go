package billing

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/userd/userd/internal/users"
)

// CustomerLister lists every customer of the Stripe account.
type CustomerLister interface {
	ListCustomers(ctx context.Context, fn func(Customer) error) error
}

// SyncOptions configures Sync.
type SyncOptions struct {
	// DryRun changes nothing: it says what would change.
	DryRun bool
	// Out, if set, gets one line per customer whose account changes (or
	// would), and per failure.
	Out io.Writer
	// Progress, if set, is called after each customer.
	Progress func(SyncSummary)
}

// SyncSummary counts what Sync did.
type SyncSummary struct {
	// Listed customers of the Stripe account; Unlinked those no account
	// claims (neither linked nor naming one in their metadata).
	Listed, Unlinked int
	// Changed and Unchanged accounts; Failed customers (logged).
	Changed, Unchanged, Failed int
}

// Sync lists every customer of the Stripe account and converges each
// linked one's account on its subscriptions as Stripe has them now
// (status=all), exactly as a webhook delivery would: the backfill after
// hooking up Stripe, and the repair of events missed while userd was down.
// Customers whose metadata names an account (made by EnsureBillingCustomer)
// are linked first. A failed customer is counted, logged and skipped.
func (s *Service) Sync(ctx context.Context, lister CustomerLister, opts SyncOptions) (SyncSummary, error) {
	var sum SyncSummary
	if s.stripe == nil {
		return sum, errNoAPI()
	}
	err := lister.ListCustomers(ctx, func(c Customer) error {
		sum.Listed++
		defer func() {
			if opts.Progress != nil {
				opts.Progress(sum)
			}
		}()
		if c.Deleted {
			return nil
		}
		link, err := s.store.GetCustomer(ctx, c.ID)
		switch {
		case errors.Is(err, users.ErrNoRow):
			ref, ok := refFromHints("", c.Metadata)
			if !ok {
				sum.Unlinked++
				return nil
			}
			if opts.DryRun {
				s.line(opts.Out, "link %s %s%s", c.ID, ref.ClerkUserID, ref.ClerkOrgID)
				return nil
			}
			if link, err = s.resolveLink(ctx, c.ID, "", c.Metadata); err != nil {
				sum.Failed++
				s.line(opts.Out, "fail %s: %v", c.ID, err)
				s.log.Warn("stripe sync: cannot link customer", "customer", c.ID, "err", err)
				return ctx.Err()
			}
		case err != nil:
			return fmt.Errorf("read stripe customer: %w", err)
		}
		what, plan, err := s.SyncCustomer(ctx, link.CustomerID, opts.DryRun)
		if err != nil {
			sum.Failed++
			s.line(opts.Out, "fail %s: %v", c.ID, err)
			s.log.Warn("stripe sync: cannot converge customer", "customer", c.ID, "err", err)
			return ctx.Err()
		}
		if what == "plan_changed" {
			sum.Changed++
			s.line(opts.Out, "plan %s %s%s %s", c.ID, link.Ref.ClerkUserID, link.Ref.ClerkOrgID, plan)
		} else {
			sum.Unchanged++
		}
		return nil
	})
	return sum, err
}

func (s *Service) line(w io.Writer, format string, args ...any) {
	if w != nil {
		_, _ = fmt.Fprintf(w, format+"\n", args...)
	}
}
