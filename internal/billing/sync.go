package billing

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// CustomerLister lists every customer of the Stripe account.
type CustomerLister interface {
	ListCustomers(ctx context.Context, fn func(Customer) error) error
}

// EventLister lists the Stripe account's events of the handled types
// created at or after since, oldest first; err is an event that cannot be
// read (its ID and Type are set).
type EventLister interface {
	ListEvents(ctx context.Context, since time.Time, fn func(ev Event, err error) error) error
}

// Lister is what Sync lists from Stripe.
type Lister interface {
	CustomerLister
	EventLister
}

// EventRetention is how long Stripe keeps events: the furthest back
// Sync can replay.
const EventRetention = 30 * 24 * time.Hour

// SyncOptions configures Sync.
type SyncOptions struct {
	// DryRun changes nothing: it says what would change.
	DryRun bool
	// Out, if set, gets one line per customer whose account changes (or
	// would), and per failure.
	Out io.Writer
	// Progress, if set, is called after each customer and event.
	Progress func(SyncSummary)
	// Since is how far back Stripe's events are replayed (ApplyEvent, as
	// the webhook): events created at or after now - Since. 0 replays
	// none; at most EventRetention.
	Since time.Duration
}

// SyncSummary counts what Sync did.
type SyncSummary struct {
	// Listed customers of the Stripe account; Unlinked those no account
	// claims (neither linked nor naming one in their metadata).
	Listed, Unlinked int
	// Changed and Unchanged accounts; Failed customers (logged).
	Changed, Unchanged, Failed int
	// Events listed; Replayed those applied now (in a dry run: not
	// applied before, so they would be), AlreadyApplied those applied
	// before (delivered, or a previous sync), EventsIgnored those that pay
	// for no account, EventsFailed those that could not be applied
	// (logged).
	Events, Replayed, AlreadyApplied, EventsIgnored, EventsFailed int
}

// Sync lists every customer of the Stripe account and converges each
// linked one's account on its subscriptions as Stripe has them now
// (status=all), exactly as a webhook delivery would: the backfill after
// hooking up Stripe, and the repair of events missed while userd was down.
// Customers whose metadata names an account (made by EnsureBillingCustomer)
// are linked first. A failed customer is counted, logged and skipped.
//
// Then, with opts.Since, it replays the events Stripe listed since then
// (oldest first) through ApplyEvent, exactly as their webhook deliveries
// would have applied them: events already applied change nothing (their
// ids are recorded), and each effect is keyed, so a period's allowance, a
// pack or a reversal missed while userd was down is applied once, and a
// delivery after the replay is a duplicate.
func (s *Service) Sync(ctx context.Context, lister Lister, opts SyncOptions) (SyncSummary, error) {
	var sum SyncSummary
	if s.stripe == nil {
		return sum, errNoAPI()
	}
	if opts.Since < 0 || opts.Since > EventRetention {
		return sum, fmt.Errorf("events can be replayed from up to 720h back (Stripe keeps them 30 days), not %s", opts.Since)
	}
	if err := s.syncCustomers(ctx, lister, opts, &sum); err != nil || opts.Since == 0 {
		return sum, err
	}
	err := lister.ListEvents(ctx, s.now().Add(-opts.Since), func(ev Event, err error) error {
		sum.Events++
		defer func() {
			if opts.Progress != nil {
				opts.Progress(sum)
			}
		}()
		if err == nil && opts.DryRun {
			err = s.replayDry(ctx, ev, opts, &sum)
		} else if err == nil {
			err = s.replay(ctx, ev, opts, &sum)
		}
		if err != nil {
			sum.EventsFailed++
			s.line(opts.Out, "fail event %s %s: %v", ev.ID, ev.Type, err)
			s.log.Warn("stripe sync: cannot replay event", "stripe_event", ev.ID, "type", ev.Type, "err", err)
		}
		return ctx.Err()
	})
	return sum, err
}

// replay applies one listed event as its delivery would.
func (s *Service) replay(ctx context.Context, ev Event, opts SyncOptions, sum *SyncSummary) error {
	outcome, err := s.ApplyEvent(ctx, ev)
	var ae *apperr.Error
	if errors.As(err, &ae) && ae.Reason == reasonNotLinked {
		// The customers were converged first, so a customer still linked
		// to no account is another product's on the same Stripe account:
		// its delivery is refused so that Stripe retries it (it may be
		// linked later); the replay has nothing to apply.
		sum.EventsIgnored++
		return nil
	}
	if err != nil {
		return err
	}
	switch outcome {
	case OutcomeApplied:
		sum.Replayed++
		s.line(opts.Out, "event %s %s %s", ev.ID, ev.Type, ev.CustomerID)
	case OutcomeDuplicate:
		sum.AlreadyApplied++
	default:
		sum.EventsIgnored++
	}
	return nil
}

// replayDry says what replay would do, changing nothing.
func (s *Service) replayDry(ctx context.Context, ev Event, opts SyncOptions, sum *SyncSummary) error {
	if !Handled(ev.Type) || ev.CustomerID == "" && ev.Dispute == nil {
		sum.EventsIgnored++
		return nil
	}
	seen, err := s.store.EventSeen(ctx, ev.ID)
	if err != nil {
		return fmt.Errorf("read stripe event: %w", err)
	}
	if seen {
		sum.AlreadyApplied++
		return nil
	}
	sum.Replayed++
	s.line(opts.Out, "event %s %s %s", ev.ID, ev.Type, ev.CustomerID)
	return nil
}

// syncCustomers converges every listed customer's plan.
func (s *Service) syncCustomers(ctx context.Context, lister CustomerLister, opts SyncOptions, sum *SyncSummary) error {
	return lister.ListCustomers(ctx, func(c Customer) error {
		sum.Listed++
		defer func() {
			if opts.Progress != nil {
				opts.Progress(*sum)
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
}

func (s *Service) line(w io.Writer, format string, args ...any) {
	if w != nil {
		_, _ = fmt.Fprintf(w, format+"\n", args...)
	}
}
