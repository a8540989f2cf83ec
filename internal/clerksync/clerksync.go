// Package clerksync mirrors every Clerk user into userd: it pages through
// Clerk's Backend API (GET /v1/users, 500 at a time, with Clerk's cursor)
// and applies each user through the domain's versioned path — the one
// webhook events take — so a sync and webhooks can run at the same time in
// any order: an older state never overwrites a newer one and a deletion is
// final. With DeleteMissing it also marks deleted the live users Clerk no
// longer has, behind a safety stop. `userd sync-clerk` runs it once; `userd
// serve` may run it periodically (Periodic), one replica at a time.
package clerksync

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/clerk"
	"github.com/userd/userd/internal/upstream"
	"github.com/userd/userd/internal/users"
)

// Clerk is the part of Clerk's Backend API a sync uses (*clerk.API).
type Clerk interface {
	CountUsers(ctx context.Context) (int64, error)
	ListUsers(ctx context.Context, limit int, startingAfter string) ([]clerk.User, error)
	GetUser(ctx context.Context, id string) (users.ClerkUser, error)
}

// Domain is the part of the users service a sync uses (*users.Service).
type Domain interface {
	SyncClerkUsers(ctx context.Context, states []users.ClerkUser, dryRun bool) ([]users.SyncResult, error)
	LiveClerkUserIDs(ctx context.Context, after string, limit int) ([]string, error)
	DeleteMissingClerkUsers(ctx context.Context, clerkUserIDs []string) ([]users.SyncResult, error)
}

// Options configure a run.
type Options struct {
	// DryRun writes nothing; Out gets what would change.
	DryRun bool
	// DeleteMissing marks deleted the live users Clerk no longer has,
	// each confirmed missing with GET /v1/users/{id} first.
	DeleteMissing bool
	// MaxDeleteShare is the safety stop of DeleteMissing: more users
	// missing than this share of the live users refuses to delete any
	// (unless Force). A wrong secret key, naming another or an empty
	// instance, looks exactly like everyone missing.
	MaxDeleteShare float64
	// Force deletes past MaxDeleteShare.
	Force bool
	// Organizations also syncs organizations and their memberships,
	// after the users (see syncOrganizations); an instance without the
	// organizations feature is skipped. The Clerk and Domain given to Run
	// must then implement OrgClerk and OrgDomain.
	Organizations bool
	// PageSize is the users per request (default and most: 500).
	PageSize int
	// Retry bounds the retries of one failing call, to Clerk or to the
	// database; zero values take the defaults (upstream.Policy).
	Retry RetryPolicy
	// MaxRunTime bounds the whole run (0: no bound): past it the run
	// stops with an error, keeping what it applied. With the bounds of
	// Retry it bounds how long a run holds the fleet-wide sync lock.
	MaxRunTime time.Duration
	// Progress is told about each page; nil reports nothing.
	Progress Progress
	// Out gets one line per change made (or, with DryRun, that would be
	// made): "create user_...", "update ...", "delete ...", and "fail
	// ... (reason)". Only Clerk ids, never personal data. Nil: none.
	Out io.Writer
	// Log gets warnings (failed users, retries); nil: none.
	Log *slog.Logger
	// Recorder counts outcomes (metrics); nil: none.
	Recorder Recorder
}

// RetryPolicy bounds the retries of one call (upstream.Policy): its
// attempts, the longest Retry-After honoured and the total time.
type RetryPolicy = upstream.Policy

// Counts tally a run's users by outcome. In a dry run they count what
// would happen.
type Counts struct {
	// Listed is how many users Clerk listed.
	Listed int64
	// Created and Updated were written; Unchanged already had Clerk's
	// state; Stale had a newer one (a webhook overtook the listing);
	// IgnoredDeleted are deleted in userd and stay so (a deletion is
	// final); Deleted were missing from Clerk and marked deleted; Failed
	// could not be applied (see the log).
	Created, Updated, Unchanged, Stale, IgnoredDeleted, Deleted, Failed int64
	// Missing is how many live users were missing from the listing
	// (DeleteMissing only); those confirmed missing are Deleted.
	Missing int64
}

func (c *Counts) add(o users.EventOutcome) {
	switch o {
	case users.OutcomeCreated:
		c.Created++
	case users.OutcomeUpdated:
		c.Updated++
	case users.OutcomeUnchanged:
		c.Unchanged++
	case users.OutcomeStale:
		c.Stale++
	case users.OutcomeUserDeleted:
		c.IgnoredDeleted++
	case users.OutcomeDeleted:
		c.Deleted++
	default:
		c.Failed++
	}
}

// Summary is the result of a run.
type Summary struct {
	Counts
	// Total is how many users Clerk counted when the run started.
	Total    int64
	DryRun   bool
	Duration time.Duration
	// Refused is set when DeleteMissing stopped at MaxDeleteShare.
	Refused bool
	// LiveBefore is how many users were live in userd when the run
	// started (DeleteMissing only): the base of MaxDeleteShare.
	LiveBefore int64
	// Orgs and Memberships count the organizations and memberships
	// (Options.Organizations); OrgsNotEnabled is set when the instance
	// has no organizations feature, OrgsLiveBefore is the base of
	// MaxDeleteShare for organizations.
	Orgs, Memberships Counts
	OrgsNotEnabled    bool
	OrgsLiveBefore    int64
}

// UsersPerSecond is the listing rate of the run.
func (s Summary) UsersPerSecond() float64 {
	if s.Duration <= 0 {
		return 0
	}
	return float64(s.Listed) / s.Duration.Seconds()
}

// ErrRefused is returned when DeleteMissing would delete more than
// MaxDeleteShare of the live users.
var ErrRefused = errors.New("refused to delete missing users")

// Progress is told how a run goes.
type Progress interface {
	// Update is called after each page with the counts so far and Clerk's
	// total (0 when unknown).
	Update(c Counts, total int64)
	// Done is called once, at the end.
	Done(s Summary, err error)
}

// Recorder counts outcomes; telemetry.Metrics implements it.
type Recorder interface {
	// ClerkSyncUsers counts n users of a run with the outcome (created,
	// updated, unchanged, stale, ignored_deleted, deleted, failed).
	ClerkSyncUsers(outcome string, n int64)
	// ClerkSyncOrganizations and ClerkSyncMemberships count the
	// organizations and memberships of a run the same way.
	ClerkSyncOrganizations(outcome string, n int64)
	ClerkSyncMemberships(outcome string, n int64)
}

// Run runs one sync: it lists every Clerk user and applies them, then,
// with DeleteMissing, deletes the live users Clerk no longer has. A run
// can be repeated at any time: what it applied is applied again as
// unchanged. A call that keeps failing (Clerk or the database down, the
// secret key refused) stops the run with an error; what was applied
// before stays.
func Run(ctx context.Context, api Clerk, domain Domain, opts Options) (Summary, error) {
	r := &run{api: api, domain: domain, opts: opts}
	r.opts.Retry = opts.Retry.WithDefaults()
	if r.opts.PageSize <= 0 || r.opts.PageSize > clerk.MaxPageSize {
		r.opts.PageSize = clerk.MaxPageSize
	}
	if r.opts.Out == nil {
		r.opts.Out = io.Discard
	}
	if r.opts.Log == nil {
		r.opts.Log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	r.sum.DryRun = opts.DryRun
	if opts.MaxRunTime > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, opts.MaxRunTime, &runTimeError{opts.MaxRunTime})
		defer cancel()
	}
	err := r.run(ctx)
	r.sum.Duration = time.Since(start)
	if r.opts.Progress != nil {
		r.opts.Progress.Done(r.sum, err)
	}
	return r.sum, err
}

type run struct {
	api    Clerk
	domain Domain
	opts   Options
	sum    Summary

	// live is, with DeleteMissing, the sorted hashes of the Clerk ids of
	// the users live in userd when the run started, and listed marks
	// those Clerk listed. Hashes keep this at 9 bytes a user; two ids
	// sharing a hash can only make a missing user look listed — a
	// deletion missed, never a wrong one.
	seed   maphash.Seed
	live   []uint64
	listed []bool
}

func (r *run) run(ctx context.Context) error {
	total, err := retry(ctx, r, "count users in Clerk", r.api.CountUsers)
	if err != nil {
		return err
	}
	r.sum.Total = total
	if r.opts.DeleteMissing {
		if err := r.snapshotLive(ctx); err != nil {
			return err
		}
	}
	if err := r.listAndApply(ctx); err != nil {
		return err
	}
	if r.opts.DeleteMissing {
		if err := r.deleteMissing(ctx); err != nil {
			return err
		}
	}
	if r.opts.Organizations {
		return r.syncOrganizations(ctx)
	}
	return nil
}

// page is one page of the listing, or the error that ended it.
type page struct {
	users []clerk.User
	err   error
}

// listAndApply fetches the next page while the current one is applied.
func (r *run) listAndApply(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	pages := make(chan page, 1)
	go r.list(ctx, pages)
	defer func() {
		// The lister ends once cancelled and closes pages as it returns:
		// draining them waits for it, so no Clerk call outlives the run.
		cancel()
		for range pages {
		}
	}()
	for p := range pages {
		if p.err != nil {
			return p.err
		}
		if err := r.apply(ctx, p.users); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// list sends the pages of GET /v1/users, oldest user first, and closes
// pages after the last one (or the error that ended the listing).
//
// A Backend API that pages wrongly must not make the run endless: the
// listing stops with an error when a page contains its own cursor (the
// cursor ignored), when a cursor comes back (pages cycling A → B → A,
// however long the cycle), or when it listed more users than Clerk
// counted at the start could explain (see maxListed).
func (r *run) list(ctx context.Context, pages chan<- page) {
	defer close(pages)
	cursor := ""
	// Every cursor used: one id per page, a few KiB for a million users.
	seen := map[string]struct{}{}
	bound := maxListed(r.sum.Total, r.opts.PageSize)
	var listed int64
	for {
		us, err := retry(ctx, r, "list users in Clerk", func(ctx context.Context) ([]clerk.User, error) {
			return r.api.ListUsers(ctx, r.opts.PageSize, cursor)
		})
		listed += int64(len(us))
		var next string
		if err == nil && len(us) > 0 {
			next = us[len(us)-1].ID
		}
		switch {
		case err != nil:
		case cursor != "" && slices.ContainsFunc(us, func(u clerk.User) bool { return u.ID == cursor }):
			// An API that ignores starting_after serves the first page
			// again: without this check the run would never end.
			err = fmt.Errorf("list users in Clerk: the page after user %s contains that user: the Backend API (CLERK_API_URL) ignores starting_after, Clerk's cursor pagination; stopped", cursor)
		case len(us) == r.opts.PageSize && hasKey(seen, next):
			err = fmt.Errorf("list users in Clerk: the pages cycle: the page after user %s ends with user %s again, a page already listed; the Backend API (CLERK_API_URL) pages wrongly; stopped after %d users",
				cursor, next, listed)
		case listed > bound:
			err = fmt.Errorf("list users in Clerk: listed %d users, more than the %d Clerk counted at the start allow (at most %d): the Backend API (CLERK_API_URL) pages wrongly; stopped",
				listed, r.sum.Total, bound)
		}
		select {
		case pages <- page{users: us, err: err}:
		case <-ctx.Done():
			return
		}
		if err != nil || len(us) < r.opts.PageSize {
			return
		}
		seen[cursor] = struct{}{}
		cursor = next
	}
}

func hasKey(m map[string]struct{}, k string) bool {
	_, ok := m[k]
	return ok
}

// maxListed is the most users a listing may return when Clerk counted
// total at its start: users created while it runs are listed too (the
// listing is oldest first), so it allows as many again plus 10,000, and
// a page of slack. A listing past it is not Clerk's.
func maxListed(total int64, pageSize int) int64 {
	return 2*max(total, 0) + 10_000 + int64(pageSize)
}

// apply applies one page and tallies it.
func (r *run) apply(ctx context.Context, page []clerk.User) error {
	states := make([]users.ClerkUser, len(page))
	for i, u := range page {
		states[i] = u.Domain()
		r.markListed(u.ID)
	}
	results, err := retry(ctx, r, "apply users", func(ctx context.Context) ([]users.SyncResult, error) {
		return r.domain.SyncClerkUsers(ctx, states, r.opts.DryRun)
	})
	if err != nil {
		return err
	}
	r.sum.Listed += int64(len(page))
	r.tally(results)
	if r.opts.Progress != nil {
		r.opts.Progress.Update(r.sum.Counts, r.sum.Total)
	}
	return nil
}

// tally counts the users' results, and reports changes and failures.
func (r *run) tally(results []users.SyncResult) { r.tallyInto(&r.sum.Counts, results) }

// tallyInto counts results into c (the run's users, organizations or
// memberships), reports changes and failures, and counts them in the
// metrics of c's kind.
func (r *run) tallyInto(c *Counts, results []users.SyncResult) {
	var page Counts
	for _, res := range results {
		page.add(res.Outcome)
		switch res.Outcome {
		case users.OutcomeCreated:
			fmt.Fprintln(r.opts.Out, "create", res.ClerkUserID)
		case users.OutcomeUpdated:
			fmt.Fprintln(r.opts.Out, "update", res.ClerkUserID)
		case users.OutcomeDeleted:
			fmt.Fprintln(r.opts.Out, "delete", res.ClerkUserID)
		case users.OutcomeUnchanged, users.OutcomeStale, users.OutcomeUserDeleted:
		default:
			fmt.Fprintf(r.opts.Out, "fail %s (%s)\n", res.ClerkUserID, res.Reason)
			r.opts.Log.Warn("clerk sync: not applied", "clerk_id", res.ClerkUserID, "outcome", string(res.Outcome), "reason", res.Reason)
		}
	}
	c.Created += page.Created
	c.Updated += page.Updated
	c.Unchanged += page.Unchanged
	c.Stale += page.Stale
	c.IgnoredDeleted += page.IgnoredDeleted
	c.Deleted += page.Deleted
	c.Failed += page.Failed
	if rec := r.recorderOf(c); rec != nil && !r.opts.DryRun {
		for _, o := range []struct {
			name string
			n    int64
		}{
			{"created", page.Created}, {"updated", page.Updated}, {"unchanged", page.Unchanged},
			{"stale", page.Stale}, {"ignored_deleted", page.IgnoredDeleted}, {"deleted", page.Deleted},
			{"failed", page.Failed},
		} {
			if o.n > 0 {
				rec(o.name, o.n)
			}
		}
	}
}

// recorderOf returns the Recorder's method for the counts c, nil without
// a Recorder.
func (r *run) recorderOf(c *Counts) func(outcome string, n int64) {
	rec := r.opts.Recorder
	switch {
	case rec == nil:
		return nil
	case c == &r.sum.Orgs:
		return rec.ClerkSyncOrganizations
	case c == &r.sum.Memberships:
		return rec.ClerkSyncMemberships
	}
	return rec.ClerkSyncUsers
}

// liveIDsPage is how many Clerk ids one query of live users returns.
const liveIDsPage = 10_000

// snapshotLive records which users are live before the listing starts:
// only those can be missing from it. Users created during the run are not
// in the snapshot, so a user created in Clerk and in userd after the
// listing passed its place is never taken for a missing one.
func (r *run) snapshotLive(ctx context.Context) error {
	r.seed = maphash.MakeSeed()
	err := r.eachLiveID(ctx, func(id string) {
		r.live = append(r.live, maphash.String(r.seed, id))
	})
	if err != nil {
		return err
	}
	slices.Sort(r.live)
	r.listed = make([]bool, len(r.live))
	r.sum.LiveBefore = int64(len(r.live))
	return nil
}

func (r *run) markListed(id string) {
	if r.live == nil {
		return
	}
	if i, ok := slices.BinarySearch(r.live, maphash.String(r.seed, id)); ok {
		r.listed[i] = true
	}
}

// wasLiveUnlisted reports whether id was live at the start and not listed.
func (r *run) wasLiveUnlisted(id string) bool {
	i, ok := slices.BinarySearch(r.live, maphash.String(r.seed, id))
	return ok && !r.listed[i]
}

// eachLiveID calls f with the Clerk id of every live user, in id order.
func (r *run) eachLiveID(ctx context.Context, f func(string)) error {
	after := ""
	for {
		ids, err := retry(ctx, r, "list live users", func(ctx context.Context) ([]string, error) {
			return r.domain.LiveClerkUserIDs(ctx, after, liveIDsPage)
		})
		if err != nil {
			return err
		}
		for _, id := range ids {
			f(id)
		}
		if len(ids) < liveIDsPage {
			return nil
		}
		after = ids[len(ids)-1]
	}
}

// deleteBatch is how many confirmed-missing users one call deletes.
const deleteBatch = 500

// deleteMissing deletes the users live at the start that Clerk did not
// list and, asked one by one, does not know: the listing may have missed
// a user (one deleted and another created while it ran shift nothing with a
// cursor, but a deletion is final, so each is confirmed).
func (r *run) deleteMissing(ctx context.Context) error {
	var missing []string
	err := r.eachLiveID(ctx, func(id string) {
		if r.wasLiveUnlisted(id) {
			missing = append(missing, id)
		}
	})
	if err != nil {
		return err
	}
	r.sum.Missing = int64(len(missing))
	if len(missing) == 0 {
		return nil
	}
	allowed := r.opts.MaxDeleteShare * float64(r.sum.LiveBefore)
	if float64(len(missing)) > allowed && !r.opts.Force {
		r.sum.Refused = true
		return fmt.Errorf("%w: %d of the %d live users (%.1f%%) are missing from Clerk, more than the allowed share of %.1f%%. "+
			"A CLERK_SECRET_KEY of another (or an empty) instance looks exactly like this: check the key, "+
			"then rerun with --force (or a larger --max-delete-share) if these users really are gone",
			ErrRefused, len(missing), r.sum.LiveBefore, 100*float64(len(missing))/float64(r.sum.LiveBefore), 100*r.opts.MaxDeleteShare)
	}
	var gone []string
	for _, id := range missing {
		cu, err := retry(ctx, r, "confirm a missing user in Clerk", func(ctx context.Context) (users.ClerkUser, error) {
			return r.api.GetUser(ctx, id)
		})
		switch {
		case apperr.KindOf(err) == apperr.KindNotFound:
			gone = append(gone, id)
		case err != nil:
			return err
		default:
			// Clerk has it after all (the listing missed it): mirror it.
			r.opts.Log.Warn("clerk sync: a user missing from the listing exists in Clerk; applied it", "clerk_user_id", id)
			results, err := retry(ctx, r, "apply users", func(ctx context.Context) ([]users.SyncResult, error) {
				return r.domain.SyncClerkUsers(ctx, []users.ClerkUser{cu}, r.opts.DryRun)
			})
			if err != nil {
				return err
			}
			r.tally(results)
		}
	}
	for chunk := range slices.Chunk(gone, deleteBatch) {
		if r.opts.DryRun {
			results := make([]users.SyncResult, len(chunk))
			for i, id := range chunk {
				results[i] = users.SyncResult{ClerkUserID: id, Outcome: users.OutcomeDeleted}
			}
			r.tally(results)
			continue
		}
		results, err := retry(ctx, r, "delete missing users", func(ctx context.Context) ([]users.SyncResult, error) {
			return r.domain.DeleteMissingClerkUsers(ctx, chunk)
		})
		if err != nil {
			return err
		}
		r.tally(results)
	}
	if r.opts.Progress != nil {
		r.opts.Progress.Update(r.sum.Counts, r.sum.Total)
	}
	return nil
}

// retry calls f until it succeeds, fails for good, or the retry policy
// ends it (upstream.Retry). Transient failures are retried with
// exponential backoff and jitter: Clerk rate limiting (waiting its
// Retry-After, at most Retry.MaxRetryAfter), Clerk's 5xx or garbled
// answers, a Clerk or database connection failing.
func retry[T any](ctx context.Context, r *run, op string, f func(context.Context) (T, error)) (T, error) {
	v, res, err := upstream.Retry(ctx, r.opts.Retry, func(err error) bool {
		return apperr.KindOf(err) == apperr.KindUnavailable
	}, func(w upstream.Wait) {
		if w.Asked > 0 {
			r.opts.Log.Warn("clerk sync: retrying; the Retry-After asked for is cut to the longest honoured (USERD_CLERK_API_MAX_RETRY_AFTER)",
				"op", op, "wait", w.Wait.String(), "asked", w.Asked.String(), "err", w.Err)
			return
		}
		r.opts.Log.Warn("clerk sync: retrying", "op", op, "wait", w.Wait.String(), "err", w.Err)
	}, f)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			// The run's deadline (or its caller) ended it.
			err = cause
		}
		return v, describe(op, res, err)
	}
	return v, nil
}

// runTimeError is the cause of a run ended by Options.MaxRunTime.
type runTimeError struct{ limit time.Duration }

func (e *runTimeError) Error() string {
	return fmt.Sprintf("the run took longer than its limit of %s (USERD_CLERK_SYNC_MAX_RUN_TIME) and stopped; "+
		"what was applied stays, and a rerun continues idempotently", e.limit)
}

func (e *runTimeError) Unwrap() error { return context.DeadlineExceeded }

// describe says what failed in words an operator can act on.
func describe(op string, res upstream.Result, err error) error {
	var serr *clerk.StatusError
	if errors.As(err, &serr) {
		switch serr.StatusCode {
		case 401, 403:
			return fmt.Errorf("%s: Clerk refused CLERK_SECRET_KEY (%d %s): check the key (Clerk dashboard, API keys) and CLERK_API_URL",
				op, serr.StatusCode, serr.Code)
		case 422, 400:
			return fmt.Errorf("%s: Clerk rejected the request (%d %s): %w", op, serr.StatusCode, serr.Code, err)
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", op, err)
	}
	if apperr.KindOf(err) == apperr.KindUnavailable {
		return fmt.Errorf("%s failed %d times in %s, last: %w; what was applied before stays, and a rerun continues idempotently",
			op, res.Attempts, res.Elapsed.Round(time.Millisecond), err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
