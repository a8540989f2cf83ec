package userdclient_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
	"github.com/userd/userd/userdclient"
)

// TestWatchFollowsARestart: a provisioning consumer on Watch sees every
// plan change once, in order, while userd is stopped (changes go on in the
// database) and started again on the same address: Watch reconnects by
// itself and resumes from its cursor.
func TestWatchFollowsARestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts userd: not in -short (make test-fast)")
	}
	t.Parallel()
	url := testdb.URL(t)
	var addr string
	sameDB := func(c *config.Serve) {
		c.Database.URL = url
		if addr != "" {
			c.GRPCAddr = addr
		}
	}
	setPlan := func(t *testing.T, c *userdclient.Client, plan userdv1.Plan, key string) {
		t.Helper()
		if _, err := c.SetPlan(context.Background(), &userdv1.SetPlanRequest{ClerkUserId: "user_w", Plan: plan, IdempotencyKey: key}); err != nil {
			t.Fatal(err)
		}
	}

	var (
		mu      sync.Mutex
		plans   []string
		cursors []string
		seen    = map[int64]bool{}
		dups    int
	)
	got := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), plans...) }
	waitFor := func(t *testing.T, n int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for len(got()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d plan changes within a minute, want %d: %v", len(got()), n, got())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	watchErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	t.Run("FirstUserd", func(t *testing.T) {
		in := apptest.Start(t, sameDB)
		addr = in.App.GRPCAddr().String()
		c := dial(t, in, userdclient.WithToken(apptest.ServiceToken))
		if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_w"}); err != nil {
			t.Fatal(err)
		}
		// The consumer's own connection outlives this userd.
		consumer, err := userdclient.New(addr, userdclient.WithInsecure(), userdclient.WithToken(apptest.ServiceToken))
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			defer consumer.Close()
			watchErr <- consumer.Watch(ctx, &userdv1.WatchUserEventsRequest{
				Start: userdv1.WatchStart_WATCH_START_OLDEST,
				Kinds: []userdv1.UserEventKind{userdv1.UserEventKind_USER_EVENT_KIND_PLAN_CHANGED},
			}, userdclient.WatchHandler{
				Event: func(_ context.Context, ev *userdv1.UserEvent) error {
					mu.Lock()
					defer mu.Unlock()
					if seen[ev.GetId()] {
						dups++
					}
					seen[ev.GetId()] = true
					plans = append(plans, ev.GetPlanChange().GetIdempotencyKey()+":"+ev.GetPlanChange().GetPlan().String())
					return nil
				},
				Cursor: func(c string) error { mu.Lock(); defer mu.Unlock(); cursors = append(cursors, c); return nil },
			})
		}()
		setPlan(t, c, userdv1.Plan_PLAN_PRO, "p1")
		waitFor(t, 1)
	})
	// No userd runs; the plan changes in the database.
	pool := testdb.Connect(t, url)
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10})
	if _, err := svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_w", Plan: users.PlanEnterprise, IdempotencyKey: "p2"}); err != nil {
		t.Fatal(err)
	}
	// userd comes back on the same address.
	var in *apptest.Instance
	for range 50 { // the port may take a moment to be free again
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	in = apptest.Start(t, sameDB)
	setPlan(t, dial(t, in, userdclient.WithToken(apptest.ServiceToken)), userdv1.Plan_PLAN_FREE, "p3")
	waitFor(t, 3)
	cancel()
	if err := <-watchErr; !errors.Is(err, context.Canceled) {
		t.Errorf("Watch ended with %v, want context.Canceled", err)
	}
	if want := "[p1:PLAN_PRO p2:PLAN_ENTERPRISE p3:PLAN_FREE]"; fmt.Sprint(got()) != want || dups != 0 {
		t.Errorf("plan changes %v (%d duplicates), want %s once each", got(), dups, want)
	}
	if len(cursors) == 0 {
		t.Error("the Cursor handler was never called")
	}
}

// TestWatchErrors: what retrying cannot fix ends Watch: a handler's error,
// an expired cursor (IsCursorExpired, with where the feed now starts).
func TestWatchErrors(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	c := dial(t, in, userdclient.WithToken(apptest.ServiceToken))
	ctx := context.Background()
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_e"}); err != nil {
		t.Fatal(err)
	}
	var first string
	stop := errors.New("stop")
	err := c.Watch(ctx, &userdv1.WatchUserEventsRequest{Start: userdv1.WatchStart_WATCH_START_OLDEST}, userdclient.WatchHandler{
		Event: func(_ context.Context, ev *userdv1.UserEvent) error { first = ev.GetCursor(); return stop },
	})
	if !errors.Is(err, stop) || first == "" {
		t.Fatalf("a handler's error: Watch returned %v", err)
	}
	if _, err := c.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: "user_e", Amount: 1, IdempotencyKey: "g"}); err != nil {
		t.Fatal(err)
	}
	if _, err := feed.Prune(ctx, in.Store, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	err = c.Watch(ctx, &userdv1.WatchUserEventsRequest{Cursor: first}, userdclient.WatchHandler{
		Event: func(context.Context, *userdv1.UserEvent) error { return nil },
	})
	if !userdclient.IsCursorExpired(err) || userdclient.OldestCursor(err) == "" {
		t.Errorf("expired cursor: %v (oldest %q)", err, userdclient.OldestCursor(err))
	}
}
