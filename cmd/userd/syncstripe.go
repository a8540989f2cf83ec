package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/userd/userd/internal/app"
	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/users"
)

type syncStripeCmd struct {
	config.Database `embed:""`
	config.Log      `embed:""`
	config.Users    `embed:""`
	config.Stripe   `embed:""`

	DryRun   bool          `name:"dry-run" help:"Change nothing: print what would change, one line per customer (link, plan) and per event not applied yet, and the counts."`
	Progress string        `default:"auto" enum:"auto,lines,none" help:"Progress report on stderr: lines (one every 10 s), none, or auto (lines)."`
	Since    time.Duration `default:"720h" help:"Replay Stripe's events of the handled types created this far back (at most 720h: Stripe keeps events 30 days), as their webhook deliveries would have applied them; 0 replays none."`
}

func (c *syncStripeCmd) Help() string {
	return `Lists every customer of the Stripe account of STRIPE_SECRET_KEY and converges the
account of each linked one (or of one whose metadata names an account, which it links)
on its subscriptions as Stripe has them now, listed with status=all: the plan their
statuses and prices give (the price map, SetStripePrice). Then it lists Stripe's events
of the handled types created in the last --since (30 days, all Stripe keeps) and applies
each one not applied yet exactly as its webhook delivery would (oldest first): a paid
invoice's allowance, a credit pack, a refund missed while userd was down are applied
once; events already applied change nothing, and a delivery after the sync is a
duplicate. Everything runs under the same per-customer lock as webhook deliveries, so it
is safe while userd serves. Run it after hooking up Stripe, and after userd was down
longer than Stripe retries (three days). Listed events must be in the pinned API
version's release train (the account's default API version). Calls are rate limited
(USERD_STRIPE_API_RATE) and retried (USERD_STRIPE_API_MAX_RETRY_TIME). Exit status: 0
when no customer and no event failed (events of customers no account claims are
counted, not failed), 1 otherwise.`
}

func (c *syncStripeCmd) Run() error {
	for _, err := range []error{c.Database.Validate(), c.Log.Validate(), c.Users.Validate(), c.Stripe.Validate()} {
		if err != nil {
			return err
		}
	}
	if c.Since < 0 || c.Since > billing.EventRetention {
		return fmt.Errorf("--since must be between 0 and 720h (Stripe keeps events 30 days), got %s", c.Since)
	}
	if c.StripeSecretKey == "" {
		return errors.New("STRIPE_SECRET_KEY (--stripe-secret-key) is required: the sync lists customers and subscriptions with Stripe's API")
	}
	log := newLogger(os.Stderr, c.Log)
	ctx := signalContext(log)
	db, err := openMigrated(ctx, c.Database, log)
	if err != nil {
		return err
	}
	defer db.Close()
	st := store.New(db.Pool, store.Options{})
	us := users.NewService(st, users.Options{InitialCredits: c.InitialCredits, OrgInitialCredits: c.OrgInitialCredits})
	defer func() { _ = us.Stop(ctx) }()
	api, err := app.NewStripeAPI(c.Stripe)
	if err != nil {
		return err
	}
	svc := billing.NewService(st.Billing(), api, us, billing.Options{Log: log, MaxLocked: billing.MaxLockedFor(int(c.MaxConns))})
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	var progress func(billing.SyncSummary)
	if c.Progress != "none" {
		progress = progressLines(os.Stderr, 10*time.Second)
	}
	log.Info("stripe sync starting", "api", c.StripeAPIURL, "rate", c.StripeAPIRate, "dry_run", c.DryRun, "since", c.Since)
	start := time.Now()
	sum, err := svc.Sync(ctx, api, billing.SyncOptions{DryRun: c.DryRun, Out: out, Progress: progress, Since: c.Since})
	fmt.Fprintln(os.Stderr, stripeSummaryLine(sum, time.Since(start), c.DryRun))
	if err != nil {
		return err
	}
	if sum.Failed > 0 || sum.EventsFailed > 0 {
		return fmt.Errorf("%d customers and %d events could not be applied (the log names them); rerun to retry them", sum.Failed, sum.EventsFailed)
	}
	return nil
}

// progressLines reports progress at most every interval.
func progressLines(w io.Writer, every time.Duration) func(billing.SyncSummary) {
	var mu sync.Mutex
	last := time.Now()
	return func(s billing.SyncSummary) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) < every {
			return
		}
		last = time.Now()
		fmt.Fprintf(w, "stripe sync: %d customers listed, %d changed, %d unchanged, %d unlinked, %d failed; %d events listed, %d replayed, %d failed\n",
			s.Listed, s.Changed, s.Unchanged, s.Unlinked, s.Failed, s.Events, s.Replayed, s.EventsFailed)
	}
}

func stripeSummaryLine(s billing.SyncSummary, took time.Duration, dryRun bool) string {
	verb, replayed := "changed", "replayed"
	if dryRun {
		verb, replayed = "would change", "would be replayed"
	}
	return fmt.Sprintf("stripe sync done in %s: %d customers, %d accounts %s, %d unchanged, %d customers linked to no account, %d failed; "+
		"%d events, %d %s, %d applied before, %d for no account, %d failed",
		took.Round(time.Millisecond), s.Listed, s.Changed, verb, s.Unchanged, s.Unlinked, s.Failed,
		s.Events, s.Replayed, replayed, s.AlreadyApplied, s.EventsIgnored, s.EventsFailed)
}
