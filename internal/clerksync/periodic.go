package clerksync

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Locker runs a sync while holding the database lock that lets one run at
// a time go on across replicas and commands (*store.Store implements it).
type Locker interface {
	// RunClerkSync calls run under the lock and records its result,
	// unless another session holds the lock (busy) or a run started less
	// than minInterval ago (neither started nor busy).
	RunClerkSync(ctx context.Context, minInterval time.Duration, run func(context.Context) string) (started, busy bool, err error)
}

// Results of a run, as recorded in clerk_sync_state and counted in
// userd_clerk_sync_runs_total.
const (
	ResultOK      = "ok"
	ResultFailed  = "failed"
	ResultRefused = "refused"
	// ResultBusy and ResultNotDue are runs that did not start: another
	// was going on, or the last one started less than an interval ago.
	ResultBusy   = "busy"
	ResultNotDue = "not_due"
)

// ErrBusy is returned when another sync holds the lock.
var ErrBusy = errors.New("another Clerk sync is running (a userd replica's periodic reconcile, or another userd sync-clerk); try again when it is done")

// ResultOf names the result of a run that ended with err.
func ResultOf(err error) string {
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, ErrRefused):
		return ResultRefused
	}
	return ResultFailed
}

// RunExclusive is Run under lock: it returns ErrBusy, without running,
// while another sync runs, and ran == false when the last run started less
// than minInterval ago.
func RunExclusive(ctx context.Context, lock Locker, minInterval time.Duration, api Clerk, domain Domain, opts Options) (sum Summary, ran bool, err error) {
	started, busy, lerr := lock.RunClerkSync(ctx, minInterval, func(ctx context.Context) string {
		sum, err = Run(ctx, api, domain, opts)
		return ResultOf(err)
	})
	switch {
	case lerr != nil:
		return sum, started, errors.Join(err, lerr)
	case busy:
		return sum, false, ErrBusy
	}
	return sum, started, err
}

// RunRecorder counts runs; telemetry.Metrics implements it.
type RunRecorder interface {
	Recorder
	// ClerkSyncRun counts a run by result; d is its duration (0 for
	// busy and not_due).
	ClerkSyncRun(result string, d time.Duration)
}

// Periodic reconciles every Interval inside `userd serve`. Every replica
// runs one; the lock lets one run at a time go on, and a replica whose
// turn comes less than 90% of an interval after any run started skips
// it, so a fleet runs about one sync per interval, not one per replica.
type Periodic struct {
	Interval time.Duration
	Lock     Locker
	Clerk    Clerk
	Domain   Domain
	// Options of each run; Progress, Log and Recorder are set by Run.
	Options  Options
	Log      *slog.Logger
	Recorder RunRecorder
}

// progressEvery is how often a periodic run logs its progress.
const progressEvery = 30 * time.Second

// Run runs a sync at once, then every Interval, until ctx ends.
func (p *Periodic) Run(ctx context.Context) {
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	for {
		p.once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Periodic) once(ctx context.Context) {
	opts := p.Options
	opts.Progress = NewLog(p.Log, progressEvery)
	opts.Log = p.Log
	if p.Recorder != nil {
		opts.Recorder = p.Recorder
	}
	start := time.Now()
	sum, ran, err := RunExclusive(ctx, p.Lock, p.Interval*9/10, p.Clerk, p.Domain, opts)
	if ctx.Err() != nil {
		return
	}
	result := ResultOf(err)
	switch {
	case errors.Is(err, ErrBusy):
		result = ResultBusy
		p.Log.Debug("clerk sync skipped: another replica is running it")
	case err == nil && !ran:
		result = ResultNotDue
		p.Log.Debug("clerk sync skipped: the last run started less than an interval ago")
	case err != nil && !sum.Refused && sum.Duration == 0:
		// Failed before a run started (the lock's database call).
		p.Log.Warn("clerk sync could not start", "err", err)
	}
	var d time.Duration
	if ran {
		d = time.Since(start)
	}
	if p.Recorder != nil {
		p.Recorder.ClerkSyncRun(result, d)
	}
}
