package clerksync_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/clerksync"
	"github.com/userd/userd/internal/clerktest"
)

// Issue 18, items 3 and 4: a hostile (or broken) Backend API cannot stall a
// sync. Each test bounds itself with a context far beyond what the sync
// needs, so that on a userd without the bounds it fails instead of hanging
// the suite; the assertion is on the error the sync stops with, never on
// speed.

// testBound is how long a hostile sync may run before the test gives up:
// the sync itself is expected to stop long before.
const testBound = 2 * time.Minute

func (e *env) syncCtx(t *testing.T, opts clerksync.Options) (clerksync.Summary, error) {
	t.Helper()
	if opts.Retry == (clerksync.RetryPolicy{}) {
		opts.Retry = fastRetry
	}
	if opts.MaxDeleteShare == 0 {
		opts.MaxDeleteShare = 0.1
	}
	ctx, cancel := context.WithTimeout(context.Background(), testBound)
	defer cancel()
	sum, _, err := clerksync.RunExclusive(ctx, e.st, 0, e.api, e.svc, opts)
	if ctx.Err() != nil {
		t.Fatalf("the sync was still running after %s: %v", testBound, err)
	}
	return sum, err
}

// TestSyncStopsOnCyclingPages: pages that cycle A → B → C → A (not only an
// immediate repeat) stop the run with an error naming the cycle.
func TestSyncStopsOnCyclingPages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	e.fake.AddUsers("cyc", 1000, time.Now().Add(-time.Hour))
	e.fake.CycleAfter.Store(300) // pages of 100: A, B, C, A, ...
	sum, err := e.syncCtx(t, clerksync.Options{PageSize: 100})
	if err == nil || !strings.Contains(err.Error(), "pages cycle") {
		t.Fatalf("err = %v, want the pages' cycle named", err)
	}
	if sum.Listed != 300 {
		t.Errorf("listed %d users, want the 300 of one cycle", sum.Listed)
	}
}

// TestSyncStopsOnEndlessPages: a listing that never ends (and never
// repeats a cursor) stops once it has listed more users than Clerk's count
// at the start can explain.
func TestSyncStopsOnEndlessPages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	e.fake.AddUsers("end", 100, time.Now().Add(-time.Hour))
	e.fake.Endless.Store(true)
	sum, err := e.syncCtx(t, clerksync.Options{PageSize: 500, DryRun: true})
	if err == nil || !strings.Contains(err.Error(), "more than the 100 Clerk counted") {
		t.Fatalf("err = %v, want the count named", err)
	}
	if sum.Listed > 2*100+10_000+500 {
		t.Errorf("listed %d users", sum.Listed)
	}
}

// TestRetryAfterIsCapped: a 429 asking to wait 27 h 46 min 40 s is waited
// for at most MaxRetryAfter (the longest honoured), and the run goes on.
func TestRetryAfterIsCapped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	e.fake.AddUsers("ra", 50, time.Now().Add(-time.Hour))
	e.fake.InjectFaults(1, clerktest.Fault{Status: 429, RetryAfter: 100_000})
	logs := &syncBuffer{}
	retry := fastRetry
	retry.MaxRetryAfter = 20 * time.Millisecond
	sum, err := e.syncCtx(t, clerksync.Options{Retry: retry, Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil || sum.Created != 50 {
		t.Fatalf("sync: %+v, %v", sum.Counts, err)
	}
	if l := logs.String(); !strings.Contains(l, "wait=20ms asked=27h46m40s") {
		t.Errorf("log does not show the cut Retry-After:\n%s", l)
	}
}

// TestRetryTimeIsBounded: a call that keeps failing is retried for at
// most MaxElapsed, however many attempts remain.
func TestRetryTimeIsBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	e.fake.AddUsers("rt", 10, time.Now().Add(-time.Hour))
	e.fake.InjectFaults(1, manyFaults(100_000, clerktest.Fault{Status: 429, RetryAfter: 1})...)
	retry := clerksync.RetryPolicy{Attempts: 1 << 30, Initial: time.Millisecond, Max: time.Millisecond,
		MaxRetryAfter: 10 * time.Millisecond, MaxElapsed: 300 * time.Millisecond}
	_, err := e.syncCtx(t, clerksync.Options{Retry: retry})
	if err == nil || !strings.Contains(err.Error(), "count users in Clerk failed") || !strings.Contains(err.Error(), "429") {
		t.Fatalf("err = %v, want the 429s named", err)
	}
}

// TestRunDeadlineStopsTheRunAndReleasesTheLock: a run past MaxRunTime
// stops with an error naming the setting, and the fleet-wide lock is free
// at once for the next run.
func TestRunDeadlineStopsTheRunAndReleasesTheLock(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	e.fake.AddUsers("dl", 10, time.Now().Add(-time.Hour))
	e.fake.InjectFaults(1, manyFaults(100_000, clerktest.Fault{Status: 503})...)
	retry := clerksync.RetryPolicy{Attempts: 1 << 30, Initial: time.Millisecond, Max: 5 * time.Millisecond, MaxElapsed: time.Hour}
	_, err := e.syncCtx(t, clerksync.Options{Retry: retry, MaxRunTime: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "USERD_CLERK_SYNC_MAX_RUN_TIME") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the run time limit named", err)
	}
	e.fake.ClearFaults()
	sum, err := e.syncCtx(t, clerksync.Options{})
	if err != nil || sum.Created != 10 {
		t.Fatalf("the next run: %+v, %v (want the lock free and the users created)", sum.Counts, err)
	}
}

func manyFaults(n int, f clerktest.Fault) []clerktest.Fault {
	out := make([]clerktest.Fault, n)
	for i := range out {
		out[i] = f
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for the sync's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestUnstorableUsersFailAlone (issue 18, item 5): users the Backend API
// answers with text PostgreSQL cannot hold (NUL bytes) fail alone, each
// reported; the rest of their page is applied.
func TestUnstorableUsersFailAlone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	start := time.Now().Add(-time.Hour)
	e.fake.AddUsers("ok", 30, start)
	for i, u := range []clerkhook.SampleUser{
		{ID: "user_nulfirst", FirstName: "a\x00b"},
		{ID: "user_nullast", LastName: "\x00"},
		{ID: "user_nulemail", Email: "nul\x00@example.com"},
		{ID: "user_nulimage", ImageURL: "https://img.example.com/\x00"},
	} {
		u.UpdatedAt = start.Add(time.Duration(i) * time.Second)
		e.fake.SetUser(u)
	}
	var out bytes.Buffer
	sum, err := e.syncCtx(t, clerksync.Options{Out: &out})
	if err != nil || sum.Created != 30 || sum.Failed != 4 {
		t.Fatalf("sync: %+v, %v; want 30 created and 4 failed", sum.Counts, err)
	}
	for _, id := range []string{"user_nulfirst", "user_nullast", "user_nulemail", "user_nulimage"} {
		if !strings.Contains(out.String(), "fail "+id+" (") {
			t.Errorf("%s not reported failed:\n%s", id, out.String())
		}
	}
	if n := len(e.userdRows(t)); n != 30 {
		t.Errorf("userd has %d users, want 30", n)
	}
}
