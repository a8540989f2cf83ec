package clerksync_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/clerk"
	"github.com/userd/userd/internal/clerksync"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// fastRetry keeps tests from sleeping through real backoff; a 429's
// Retry-After is still waited for in full.
var fastRetry = clerksync.RetryPolicy{Attempts: 8, Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}

// testRate is the Backend API limit of tests: Clerk's production limit
// scaled down from 1000 per 10 s, so that keeping to it costs no real time.
var testRate = clerk.RateLimit{Requests: 1000, Window: 100 * time.Millisecond}

type env struct {
	fake *clerktest.Clerk
	api  *clerk.API
	pool *pgxpool.Pool
	st   *store.Store
	svc  *users.Service
}

func newEnv(t *testing.T, limit clerk.RateLimit) *env {
	t.Helper()
	fake := clerktest.New(t)
	api, err := clerk.NewAPI(clerk.APIConfig{URL: fake.APIURL(), SecretKey: clerktest.SecretKey, RateLimit: limit})
	if err != nil {
		t.Fatal(err)
	}
	pool := testdb.Pool(t)
	st := store.New(pool, store.Options{})
	return &env{fake: fake, api: api, pool: pool, st: st, svc: users.NewService(st, users.Options{InitialCredits: users.DefaultInitialCredits})}
}

func (e *env) sync(t *testing.T, opts clerksync.Options) (clerksync.Summary, error) {
	t.Helper()
	if opts.Retry == (clerksync.RetryPolicy{}) {
		opts.Retry = fastRetry
	}
	if opts.MaxDeleteShare == 0 {
		opts.MaxDeleteShare = 0.1
	}
	sum, _, err := clerksync.RunExclusive(context.Background(), e.st, 0, e.api, e.svc, opts)
	return sum, err
}

// row is what userd stores of a user.
type row struct {
	Email, First, Last, Image string
	Version                   int64
	Deleted                   bool
}

// userdRows reads every user row.
func (e *env) userdRows(t *testing.T) map[string]row {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT clerk_user_id, coalesce(email, ''), coalesce(first_name, ''),
		coalesce(last_name, ''), coalesce(image_url, ''), coalesce(clerk_updated_at, 0), deleted_at IS NOT NULL FROM users`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]row{}
	for rows.Next() {
		var id string
		var r row
		if err := rows.Scan(&id, &r.Email, &r.First, &r.Last, &r.Image, &r.Version, &r.Deleted); err != nil {
			t.Fatal(err)
		}
		out[id] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checksum digests every row of users and the ledger, updated_at
// included: equal checksums mean nothing was written in between.
func (e *env) checksum(t *testing.T) string {
	t.Helper()
	var sum string
	err := e.pool.QueryRow(context.Background(), `SELECT
		(SELECT coalesce(md5(string_agg(row_to_json(u)::text, ',' ORDER BY u.clerk_user_id)), '') FROM users u) ||
		(SELECT coalesce(md5(string_agg(row_to_json(c)::text, ',' ORDER BY c.id)), '') FROM credit_transactions c)`).Scan(&sum)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// checkMirrors asserts that userd holds exactly Clerk's users: every live
// Clerk user live with Clerk's state, every other user deleted.
func (e *env) checkMirrors(t *testing.T) {
	t.Helper()
	got := e.userdRows(t)
	live := map[string]bool{}
	for _, u := range e.fake.LiveStates() {
		live[u.ID] = true
		want := row{Email: u.Email, First: u.FirstName, Last: u.LastName, Image: u.ImageURL, Version: u.UpdatedAt.UnixMilli()}
		if got[u.ID] != want {
			t.Errorf("%s: userd has %+v, Clerk %+v", u.ID, got[u.ID], want)
		}
	}
	for id, r := range got {
		if !live[id] && !r.Deleted {
			t.Errorf("%s is live in userd but not in Clerk", id)
		}
	}
	var bad int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM accounts a
		WHERE a.credits <> (SELECT coalesce(sum(delta), 0) FROM credit_transactions c WHERE c.user_id = a.id)`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	if bad != 0 {
		t.Errorf("%d users' balances differ from their ledger", bad)
	}
}

// TestFirstSyncMirrorsEveryUserAndASecondChangesNothing: 10,000 users in
// Clerk are mirrored by a first sync, each with its initial credits in the
// ledger; a second sync lists them all again and writes nothing.
func TestFirstSyncMirrorsEveryUserAndASecondChangesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("syncs 10,000 users: not in -short (make test-fast)")
	}
	t.Parallel()
	e := newEnv(t, testRate)
	e.fake.AddUsers("first", 10_000, time.Now().Add(-time.Hour))

	sum, err := e.sync(t, clerksync.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first sync: %s", clerksync.SummaryLine(sum, nil))
	want := clerksync.Counts{Listed: 10_000, Created: 10_000}
	if sum.Counts != want || sum.Total != 10_000 {
		t.Errorf("first sync counts %+v (total %d), want %+v", sum.Counts, sum.Total, want)
	}
	e.checkMirrors(t)
	var initial int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM credit_transactions WHERE kind = 'INITIAL' AND delta = 10`).Scan(&initial); err != nil {
		t.Fatal(err)
	}
	if initial != 10_000 {
		t.Errorf("%d initial ledger entries, want 10000", initial)
	}
	// The listing went page by page with the cursor (one count, 20 pages
	// of 500 and the empty 21st is not needed: the 20th is full, so one
	// more request finds nothing).
	if n := len(e.fake.Requests()); n != 22 {
		t.Errorf("%d Backend API requests, want 22 (count + 21 pages)", n)
	}

	before := e.checksum(t)
	sum, err = e.sync(t, clerksync.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second sync: %s", clerksync.SummaryLine(sum, nil))
	if want := (clerksync.Counts{Listed: 10_000, Unchanged: 10_000}); sum.Counts != want {
		t.Errorf("second sync counts %+v, want %+v", sum.Counts, want)
	}
	if after := e.checksum(t); after != before {
		t.Error("the second sync wrote to users or the ledger")
	}
}

// TestSyncUpdatesOnlyNewerStates: a user changed in Clerk is updated; one
// userd holds a newer state of (a webhook overtook the listing) is left
// alone; one deleted in userd stays deleted.
func TestSyncUpdatesOnlyNewerStates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	t0 := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	us := e.fake.AddUsers("upd", 30, t0)
	if _, err := e.sync(t, clerksync.Options{}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	changed := us[0]
	changed.LastName, changed.UpdatedAt = "Changed", t0.Add(time.Minute)
	e.fake.SetUser(changed)
	newer := us[1]
	newer.FirstName, newer.UpdatedAt = "FromWebhook", t0.Add(2*time.Minute)
	if _, err := e.svc.ApplyClerkUser(ctx, users.ClerkEvent{MessageID: "msg_newer", Type: "user.updated", User: users.ClerkUser{
		ID: newer.ID, Email: newer.Email, FirstName: newer.FirstName, LastName: newer.LastName, ImageURL: newer.ImageURL,
		UpdatedAt: newer.UpdatedAt.UnixMilli(),
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.DeleteClerkUser(ctx, "msg_del", "user.deleted", us[2].ID); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	dry, err := e.sync(t, clerksync.Options{DryRun: true, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	want := clerksync.Counts{Listed: 30, Updated: 1, Unchanged: 27, Stale: 1, IgnoredDeleted: 1}
	if dry.Counts != want {
		t.Errorf("dry run counts %+v, want %+v", dry.Counts, want)
	}
	if got := out.String(); got != "update "+changed.ID+"\n" {
		t.Errorf("dry run printed %q, want only the update", got)
	}
	if got := e.userdRows(t)[changed.ID].Last; got == "Changed" {
		t.Error("the dry run changed a user")
	}

	sum, err := e.sync(t, clerksync.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Counts != want {
		t.Errorf("counts %+v, want %+v", sum.Counts, want)
	}
	rows := e.userdRows(t)
	if rows[changed.ID].Last != "Changed" || rows[newer.ID].First != "FromWebhook" || !rows[us[2].ID].Deleted {
		t.Errorf("after the sync: changed %+v, newer %+v, deleted %+v", rows[changed.ID], rows[newer.ID], rows[us[2].ID])
	}
}

// TestSyncRetriesAndKeepsToTheRateLimit: with the Backend API answering
// 429 (with Retry-After) and 5xx now and then, a sync of 3,000 users in
// pages of 100 completes; it waits out each Retry-After, and never sends
// more requests in a window than the instance's limit allows (the fake
// counts and would answer 429 itself). internal/clerk's
// TestRequestsKeepToTheRateLimit drives the limiter harder.
func TestSyncRetriesAndKeepsToTheRateLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("measures the rate limit over time: not in -short (make test-fast)")
	}
	t.Parallel()
	// Clerk's development limit scaled down: 40 requests per second.
	limit := clerk.RateLimit{Requests: 40, Window: time.Second}
	e := newEnv(t, limit)
	e.fake.AddUsers("rate", 3000, time.Now().Add(-time.Hour))
	e.fake.SetRateLimit(limit.Requests, limit.Window)
	e.fake.InjectFaults(3,
		clerktest.Fault{Status: 429, RetryAfter: 1},
		clerktest.Fault{Status: 503},
		clerktest.Fault{Status: 500},
		clerktest.Fault{Status: 429, RetryAfter: 1},
		clerktest.Fault{Status: 502},
	)
	sum, err := e.sync(t, clerksync.Options{PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", clerksync.SummaryLine(sum, nil))
	if want := (clerksync.Counts{Listed: 3000, Created: 3000}); sum.Counts != want {
		t.Errorf("counts %+v, want %+v", sum.Counts, want)
	}
	e.checkMirrors(t)

	reqs := e.fake.Requests()
	injected := 0
	for i, r := range reqs {
		if r.RateLimited {
			t.Errorf("request %d (%s) exceeded the rate limit", i, r.Path)
		}
		if !r.Injected {
			continue
		}
		injected++
		if r.Status == 429 && i+1 < len(reqs) {
			if wait := reqs[i+1].At.Sub(r.At); wait < time.Second {
				t.Errorf("request %d came %s after a 429 with Retry-After: 1", i+1, wait)
			}
		}
	}
	if injected != 5 {
		t.Errorf("%d injected failures were served, want 5", injected)
	}
	if peak := clerktest.PeakRequests(reqs, limit.Window); peak > limit.Requests {
		t.Errorf("%d requests within %s, limit %d", peak, limit.Window, limit.Requests)
	}
	t.Logf("%d requests, at most %d within %s (limit %d)", len(reqs), clerktest.PeakRequests(reqs, limit.Window), limit.Window, limit.Requests)
}

// TestPersistentFailureStopsTheRun: a Backend API that keeps failing stops
// the run with an error saying so; a refused key stops it at once.
func TestPersistentFailureStopsTheRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	e.fake.AddUsers("fail", 600, time.Now().Add(-time.Hour))
	faults := make([]clerktest.Fault, 10)
	for i := range faults {
		faults[i] = clerktest.Fault{Status: 503}
	}
	e.fake.InjectFaults(1, faults...)
	_, err := e.sync(t, clerksync.Options{Retry: clerksync.RetryPolicy{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond}})
	if err == nil || !strings.Contains(err.Error(), "failed 3 times") || !strings.Contains(err.Error(), "503") {
		t.Fatalf("err = %v, want a stop after 3 attempts naming the 503", err)
	}

	wrongKey, err := clerk.NewAPI(clerk.APIConfig{URL: e.fake.APIURL(), SecretKey: "sk_test_wrong", RateLimit: testRate})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = clerksync.RunExclusive(context.Background(), e.st, 0, wrongKey, e.svc, clerksync.Options{Retry: fastRetry})
	if err == nil || !strings.Contains(err.Error(), "CLERK_SECRET_KEY") {
		t.Fatalf("err = %v, want it to name CLERK_SECRET_KEY", err)
	}
}

// TestSyncRefusesAnAPIThatIgnoresTheCursor: a Backend API serving the
// first page again for every cursor would make the listing endless; the
// run stops instead.
func TestSyncRefusesAnAPIThatIgnoresTheCursor(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	e.fake.AddUsers("cur", 1200, time.Now().Add(-time.Hour))
	e.fake.IgnoreCursor.Store(true)
	_, err := e.sync(t, clerksync.Options{})
	if err == nil || !strings.Contains(err.Error(), "starting_after") {
		t.Fatalf("err = %v, want it to name starting_after", err)
	}
}

// TestDeleteMissing: users deleted in Clerk whose user.deleted never
// arrived are deleted (erased, tombstoned, ledger kept) — exactly those;
// a dry run only lists them; an instance without users (a wrong key) is
// refused, and --force goes ahead.
func TestDeleteMissing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	us := e.fake.AddUsers("dm", 1000, time.Now().Add(-time.Hour))
	if _, err := e.sync(t, clerksync.Options{}); err != nil {
		t.Fatal(err)
	}
	gone := map[string]bool{}
	for i := 0; i < len(us); i += 20 { // 50 users, 5%
		e.fake.DeleteUser(us[i].ID)
		gone[us[i].ID] = true
	}

	before := e.checksum(t)
	var out bytes.Buffer
	dry, err := e.sync(t, clerksync.Options{DeleteMissing: true, DryRun: true, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if dry.Missing != 50 || dry.Deleted != 50 || strings.Count(out.String(), "delete ") != 50 {
		t.Errorf("dry run: missing %d, deleted %d, printed %d deletions", dry.Missing, dry.Deleted, strings.Count(out.String(), "delete "))
	}
	if e.checksum(t) != before {
		t.Fatal("the dry run wrote")
	}

	sum, err := e.sync(t, clerksync.Options{DeleteMissing: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := (clerksync.Counts{Listed: 950, Unchanged: 950, Missing: 50, Deleted: 50}); sum.Counts != want {
		t.Errorf("counts %+v, want %+v", sum.Counts, want)
	}
	rows := e.userdRows(t)
	for _, u := range us {
		r := rows[u.ID]
		switch {
		case gone[u.ID] && (!r.Deleted || r.Email != "" || r.First != "" || r.Last != "" || r.Image != ""):
			t.Errorf("%s missing from Clerk: %+v, want deleted and erased", u.ID, r)
		case !gone[u.ID] && r.Deleted:
			t.Errorf("%s is in Clerk but was deleted", u.ID)
		}
	}
	e.checkMirrors(t)

	// A key of an instance without users: everyone looks missing.
	empty := clerktest.New(t)
	emptyAPI, err := clerk.NewAPI(clerk.APIConfig{URL: empty.APIURL(), SecretKey: clerktest.SecretKey, RateLimit: testRate})
	if err != nil {
		t.Fatal(err)
	}
	before = e.checksum(t)
	sum, _, err = clerksync.RunExclusive(context.Background(), e.st, 0, emptyAPI, e.svc,
		clerksync.Options{DeleteMissing: true, MaxDeleteShare: 0.1, Retry: fastRetry})
	if !errors.Is(err, clerksync.ErrRefused) || !sum.Refused || sum.Missing != 950 || sum.Deleted != 0 {
		t.Fatalf("empty instance: err %v, summary %+v; want refused", err, sum)
	}
	t.Logf("refusal: %v", err)
	if e.checksum(t) != before {
		t.Fatal("the refused run wrote")
	}
	if n := len(empty.Requests()); n != 2 {
		t.Errorf("the refused run made %d requests, want 2 (count, one page): no user was looked up", n)
	}

	// Forced, each user is confirmed missing and deleted.
	sum, _, err = clerksync.RunExclusive(context.Background(), e.st, 0, emptyAPI, e.svc,
		clerksync.Options{DeleteMissing: true, MaxDeleteShare: 0.1, Force: true, Retry: fastRetry})
	if err != nil || sum.Deleted != 950 {
		t.Fatalf("forced: err %v, summary %+v", err, sum)
	}
	for id, r := range e.userdRows(t) {
		if !r.Deleted {
			t.Errorf("%s still live after the forced run", id)
		}
	}
}

// TestDeleteMissingConfirmsEachUser: a user the listing misses but Clerk
// has (asked by id) is applied, not deleted.
func TestDeleteMissingConfirmsEachUser(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	us := e.fake.AddUsers("conf", 100, time.Now().Add(-time.Hour))
	if _, err := e.sync(t, clerksync.Options{}); err != nil {
		t.Fatal(err)
	}
	// A listing that misses one user: the API lists 99, GET knows all.
	hidden := us[42]
	listing := &hidingClerk{API: e.api, hide: hidden.ID}
	sum, _, err := clerksync.RunExclusive(context.Background(), e.st, 0, listing, e.svc,
		clerksync.Options{DeleteMissing: true, MaxDeleteShare: 0.1, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Missing != 1 || sum.Deleted != 0 || sum.Unchanged != 100 {
		t.Errorf("summary %+v: want 1 missing, confirmed present, none deleted", sum.Counts)
	}
	if e.userdRows(t)[hidden.ID].Deleted {
		t.Error("a user Clerk has was deleted")
	}
}

// hidingClerk lists every user but one.
type hidingClerk struct {
	*clerk.API
	hide string
}

func (h *hidingClerk) ListUsers(ctx context.Context, limit int, after string) ([]clerk.User, error) {
	us, err := h.API.ListUsers(ctx, limit, after)
	out := us[:0:0]
	for _, u := range us {
		if u.ID != h.hide {
			out = append(out, u)
		}
	}
	return out, err
}

// TestOneSyncAtATime: while a sync holds the lock another is refused as
// busy; a periodic run that is not due yet does not start.
func TestOneSyncAtATime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	e.fake.AddUsers("lock", 10, time.Now().Add(-time.Hour))
	ctx := context.Background()
	holding, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, _, err := e.st.RunClerkSync(ctx, 0, func(context.Context) string {
			close(holding)
			<-release
			return clerksync.ResultOK
		})
		done <- err
	}()
	<-holding
	if _, _, err := clerksync.RunExclusive(ctx, e.st, 0, e.api, e.svc, clerksync.Options{Retry: fastRetry}); !errors.Is(err, clerksync.ErrBusy) {
		t.Errorf("second sync while one runs: %v, want ErrBusy", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	sum, ran, err := clerksync.RunExclusive(ctx, e.st, 0, e.api, e.svc, clerksync.Options{Retry: fastRetry})
	if err != nil || !ran || sum.Created != 10 {
		t.Fatalf("sync after the first ended: ran %v, %+v, %v", ran, sum.Counts, err)
	}
	if _, ran, err := clerksync.RunExclusive(ctx, e.st, time.Hour, e.api, e.svc, clerksync.Options{Retry: fastRetry}); err != nil || ran {
		t.Errorf("a run within the interval: ran %v, err %v; want not due", ran, err)
	}
	var result string
	if err := e.pool.QueryRow(ctx, `SELECT last_result FROM clerk_sync_state`).Scan(&result); err != nil || result != "ok" {
		t.Errorf("clerk_sync_state.last_result = %q, %v", result, err)
	}
}
