package app

import (
	"context"
	"time"

	"github.com/userd/userd/internal/clerksync"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/lifecycle"
)

// backgroundTasks lists everything that runs beside the servers. Every
// such task goes here, through one lifecycle.Group, and nowhere else: the
// group is started before the servers serve and stopped, and waited for,
// after they have stopped and before the pool closes (run.go). Jobs to
// come (allowance refills, expiry, billing) are added the same way; one
// that must run once per fleet takes a database lock, as the Clerk sync
// does (store.RunClerkSync).
//
// They stop in the reverse order: the credit write batches and the Clerk
// event batches, which requests start, are added first so that they end
// last.
func (a *App) backgroundTasks() *lifecycle.Group {
	g := lifecycle.NewGroup(a.log)
	// First, so that it stops last: every task below, and every call the
	// servers took, may still queue credit and plan writes.
	g.Add("credit write batches", lifecycle.OnStop(a.store.Stop))
	g.Add("Clerk event batches", lifecycle.OnStop(a.users.Stop))
	g.Add("database monitor", lifecycle.Loop(a.monitorDatabase))
	if a.standbys != nil {
		g.Add("standby lag probe", lifecycle.Loop(a.standbys.Run))
	}
	g.Add("change feed poller", lifecycle.Loop(a.feed.Run))
	if a.cfg.FeedRetention > 0 {
		g.Add("change feed pruning", a.pruner("change feed events", a.cfg.FeedRetention,
			func(ctx context.Context, before time.Time) (int64, error) { return feed.Prune(ctx, a.store, before) }))
	}
	if a.webhook != nil && a.cfg.WebhookRetention > 0 {
		g.Add("webhook message id pruning", a.pruner("webhook message ids", a.cfg.WebhookRetention, a.users.ForgetWebhookEvents))
	}
	if a.cfg.AllowanceInterval > 0 {
		g.Add("grant expiry and allowance refills", a.allowanceJob(a.cfg.AllowanceInterval))
	}
	if a.webhook != nil && a.cfg.StripeEventRetention > 0 {
		g.Add("stripe event id pruning", a.pruner("stripe event ids", a.cfg.StripeEventRetention, a.billing.ForgetEvents))
	}
	if p := a.periodicClerkSync(); p != nil {
		g.Add("periodic Clerk sync", lifecycle.Loop(p.Run))
	}
	return g
}

// periodicClerkSync is the periodic reconcile with Clerk, or nil when it is
// off. A run in progress at shutdown stops at its next call; its lock is
// released and its result recorded before the pool closes.
func (a *App) periodicClerkSync() *clerksync.Periodic {
	if a.cfg.SyncInterval <= 0 || a.clerkAPI == nil {
		return nil
	}
	a.log.Info("periodic Clerk sync on", "interval", a.cfg.SyncInterval.String(),
		"delete_missing", a.cfg.SyncDeleteMissing, "rate_limit", a.clerkAPI.RateLimit().String())
	return &clerksync.Periodic{
		Interval: a.cfg.SyncInterval,
		Lock:     a.store,
		Clerk:    a.clerkAPI,
		Domain:   a.users,
		Options: clerksync.Options{
			DeleteMissing:  a.cfg.SyncDeleteMissing,
			MaxDeleteShare: a.cfg.MaxDeleteShare,
			Organizations:  true,
			Retry:          ClerkRetryPolicy(a.cfg.ClerkAPI),
			MaxRunTime:     a.cfg.SyncMaxRunTime,
		},
		Log:      a.log,
		Recorder: a.metrics,
	}
}

// allowanceJob expires due grants and grants due allowances every
// interval, on one replica at a time (store.RunAllowanceJob: the Clerk
// sync's lock mechanism, its own key); a replica that finds the lock held
// skips the round. Each run catches up with everything due (after
// downtime: expiries on time-order, and the current period's allowance).
func (a *App) allowanceJob(interval time.Duration) lifecycle.Service {
	return lifecycle.Every(interval, func(ctx context.Context) {
		_, err := a.store.RunAllowanceJob(ctx, func(ctx context.Context) {
			run, err := a.users.RunAllowances(ctx, 0)
			switch {
			case ctx.Err() != nil:
			case err != nil:
				a.log.Warn("grant expiry and allowance refills", "err", err)
			case run.Accounts > 0:
				a.log.Info("grant expiry and allowance refills", "accounts", run.Accounts,
					"expired", run.Expired, "granted", run.Granted)
			}
		})
		if err != nil && ctx.Err() == nil {
			a.log.Warn("grant expiry and allowance refills: lock", "err", err)
		}
	})
}
