package clerksync_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerk"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/clerksync"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// deliver posts one event to userd's webhook, signed as Svix signs, and
// retries a 5xx as Svix would.
func deliver(t *testing.T, in *apptest.Instance, msgID, typ string, u clerkhook.SampleUser) {
	t.Helper()
	body := clerkhook.SampleEvent(typ, u)
	for attempt := 0; ; attempt++ {
		h, err := clerkhook.SignHeaders(apptest.WebhookSecret, msgID, time.Now(), body)
		if err != nil {
			t.Error(err)
			return
		}
		req, _ := http.NewRequest(http.MethodPost, in.WebhookURL, bytes.NewReader(body))
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			return
		case resp.StatusCode < 500 || attempt == 5:
			t.Errorf("%s %s: %d", typ, msgID, resp.StatusCode)
			return
		}
	}
}

// TestSyncRacingWebhooksConverges: while a sync lists and applies 2,000
// users, Clerk keeps changing, deleting and creating users and delivers
// each change as a webhook. Whatever the interleaving, userd ends with
// Clerk's final state, and a second sync finds nothing to do.
func TestSyncRacingWebhooksConverges(t *testing.T) {
	if testing.Short() {
		t.Skip("a race under load: not in -short (make test-fast)")
	}
	t.Parallel()
	dbURL := testdb.URL(t)
	in := apptest.Start(t, func(c *config.Serve) { c.Database.URL = dbURL })
	fake := clerktest.New(t)
	api, err := clerk.NewAPI(clerk.APIConfig{URL: fake.APIURL(), SecretKey: clerktest.SecretKey, RateLimit: testRate})
	if err != nil {
		t.Fatal(err)
	}
	// The sync runs as `userd sync-clerk` would beside a serving userd:
	// its own service over the same database.
	pool := testdb.Connect(t, dbURL)
	st := store.New(pool, store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: users.DefaultInitialCredits})
	t0 := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	us := fake.AddUsers("race", 2000, t0)
	// Some users are in userd already (their user.created arrived).
	for _, u := range us[:300] {
		deliver(t, in, "msg_created_"+u.ID, "user.created", u)
	}

	ctx := context.Background()
	done := make(chan error, 1)
	var raced clerksync.Summary
	go func() {
		var err error
		raced, _, err = clerksync.RunExclusive(ctx, st, 0, api, svc, clerksync.Options{Retry: fastRetry})
		done <- err
	}()
	// Clerk changes while the sync runs: each change is made in Clerk
	// first and then delivered, as Clerk and Svix do.
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	work := make(chan func(), 64)
	for range 8 {
		wg.Go(func() {
			for f := range work {
				f()
			}
		})
	}
	version := t0.Add(time.Hour)
	for i := range 400 {
		u := us[rng.IntN(len(us))]
		version = version.Add(time.Millisecond)
		switch i % 6 {
		case 0: // deleted in Clerk
			fake.DeleteUser(u.ID)
			work <- func() { deliver(t, in, fmt.Sprintf("msg_del_%d", i), "user.deleted", u) }
		case 1: // a new user signs up
			nu := clerkhook.SampleUser{ID: fmt.Sprintf("user_racenew%04d", i), Email: fmt.Sprintf("new%d@example.com", i),
				FirstName: "New", UpdatedAt: version}
			fake.SetUser(nu)
			work <- func() { deliver(t, in, fmt.Sprintf("msg_new_%d", i), "user.created", nu) }
		default: // a profile change
			if _, live := fake.UserState(u.ID); !live {
				continue
			}
			u.LastName, u.Email, u.UpdatedAt = fmt.Sprintf("Changed%d", i), fmt.Sprintf("changed%d.%s", i, u.Email), version
			fake.SetUser(u)
			work <- func() { deliver(t, in, fmt.Sprintf("msg_upd_%d", i), "user.updated", u) }
		}
	}
	close(work)
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// How the sync met the webhooks (stale: a webhook had applied a newer
	// state first; ignored_deleted: a user.deleted had).
	t.Logf("sync racing webhooks: %s", clerksync.SummaryLine(raced, nil))

	e := &env{fake: fake, api: api, pool: pool, st: st, svc: svc}
	e.checkMirrors(t)
	sum, err := e.sync(t, clerksync.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Created != 0 || sum.Updated != 0 || sum.Failed != 0 || sum.Listed != int64(len(fake.LiveUsers())) {
		t.Errorf("a second sync after convergence: %+v", sum.Counts)
	}
}

// TestPeriodicSyncInServe: userd serve with USERD_CLERK_SYNC_INTERVAL
// mirrors Clerk's users at start and counts the run in its metrics; a
// second replica on the same database finds the run not due yet.
func TestPeriodicSyncInServe(t *testing.T) {
	if testing.Short() {
		t.Skip("runs serve with periodic syncs: not in -short (make test-fast)")
	}
	t.Parallel()
	fake := clerktest.New(t)
	fake.AddUsers("per", 300, time.Now().Add(-time.Hour))
	dbURL := testdb.URL(t)
	withSync := func(c *config.Serve) {
		c.SecretKey, c.APIURL, c.SyncInterval = clerktest.SecretKey, fake.APIURL(), time.Hour
		c.Database.URL = dbURL
	}
	in := apptest.Start(t, withSync)
	st := store.New(testdb.Connect(t, dbURL), store.Options{})
	waitForMetric(t, in, `userd_clerk_sync_runs_total{result="ok"} 1`)
	metrics := scrape(t, in)
	for _, want := range []string{
		`userd_clerk_sync_users_total{outcome="created"} 300`,
		`userd_users_created_total{source="sync"} 300`,
		`userd_clerk_sync_last_success_timestamp_seconds `,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, u := range []string{"user_per000000", "user_per000299"} {
		if _, err := st.GetLiveUserByClerkID(context.Background(), u); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}

	second := apptest.Start(t, withSync)
	waitForMetric(t, second, `userd_clerk_sync_runs_total{result="not_due"} 1`)
}

func scrape(t *testing.T, in *apptest.Instance) string {
	t.Helper()
	resp, err := http.Get(in.OpsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitForMetric(t *testing.T, in *apptest.Instance, line string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(scrape(t, in), line) {
		if time.Now().After(deadline) {
			t.Fatalf("/metrics never showed %s:\n%s", line, grep(scrape(t, in), "clerk_sync"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
