package clerk_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/clerk"
	"github.com/userd/userd/internal/clerktest"
)

func newAPI(t *testing.T, fake *clerktest.Clerk, limit clerk.RateLimit) *clerk.API {
	t.Helper()
	api, err := clerk.NewAPI(clerk.APIConfig{URL: fake.APIURL(), SecretKey: clerktest.SecretKey, RateLimit: limit})
	if err != nil {
		t.Fatal(err)
	}
	return api
}

func TestInstanceRateLimit(t *testing.T) {
	t.Parallel()
	for key, want := range map[string]clerk.RateLimit{
		"sk_live_abc": {Requests: 1000, Window: 10 * time.Second},
		"sk_test_abc": {Requests: 100, Window: 10 * time.Second},
		"sk_other":    {Requests: 100, Window: 10 * time.Second},
	} {
		if got := clerk.InstanceRateLimit(key); got != want {
			t.Errorf("%s: %v, want %v", key, got, want)
		}
		api, err := clerk.NewAPI(clerk.APIConfig{URL: clerk.DefaultAPIURL, SecretKey: key})
		if err != nil || api.RateLimit() != want {
			t.Errorf("NewAPI(%s): limit %v, %v", key, api.RateLimit(), err)
		}
	}
	if _, err := clerk.NewAPI(clerk.APIConfig{URL: clerk.DefaultAPIURL, RateLimit: clerk.RateLimit{Requests: 3, Window: time.Second}}); err == nil {
		t.Error("a budget of 3 requests was accepted")
	}
}

// TestRequestsKeepToTheRateLimit: many goroutines sharing one client never
// make more requests in any window than the limit, which the fake enforces
// exactly as Clerk does (it would answer 429).
func TestRequestsKeepToTheRateLimit(t *testing.T) {
	t.Parallel()
	// A window long next to the scheduling jitter of a busy test machine
	// (requests released in step may arrive bunched).
	limit := clerk.RateLimit{Requests: 40, Window: time.Second}
	fake := clerktest.New(t)
	fake.SetRateLimit(limit.Requests, limit.Window)
	us := fake.AddUsers("rl", 8, time.Now().Add(-time.Hour))
	api := newAPI(t, fake, limit)
	var wg sync.WaitGroup
	for _, u := range us {
		wg.Go(func() {
			for range 12 {
				if _, err := api.GetUser(context.Background(), u.ID); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	reqs := fake.Requests()
	peak := clerktest.PeakRequests(reqs, limit.Window)
	t.Logf("%d requests, at most %d within %s", len(reqs), peak, limit.Window)
	if peak > limit.Requests {
		t.Errorf("%d requests within %s, limit %d", peak, limit.Window, limit.Requests)
	}
	for _, r := range reqs {
		if r.RateLimited {
			t.Fatal("the fake answered 429: the limit was exceeded")
		}
	}
}

// TestListUsersPagesWithTheCursor: pages of GET /v1/users, oldest first,
// each after the last user of the one before, cover every user once; a
// user created during the listing comes last.
func TestListUsersPagesWithTheCursor(t *testing.T) {
	t.Parallel()
	fake := clerktest.New(t)
	t0 := time.Now().Add(-time.Hour)
	us := fake.AddUsers("pg", 1234, t0)
	api := newAPI(t, fake, clerk.RateLimit{Requests: 1000, Window: 100 * time.Millisecond})
	ctx := context.Background()
	if n, err := api.CountUsers(ctx); err != nil || n != 1234 {
		t.Fatalf("CountUsers = %d, %v", n, err)
	}
	var got []string
	cursor := ""
	for page := 0; ; page++ {
		p, err := api.ListUsers(ctx, 500, cursor)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range p {
			got = append(got, u.ID)
		}
		if page == 0 {
			// Created after the listing started: listed last.
			fake.AddUsers("late", 1, time.Now())
		}
		if len(p) < 500 {
			break
		}
		cursor = p[len(p)-1].ID
	}
	if len(got) != 1235 {
		t.Fatalf("listed %d users, want 1235", len(got))
	}
	for i, u := range us {
		if got[i] != u.ID {
			t.Fatalf("user %d is %s, want %s (creation order)", i, got[i], u.ID)
		}
	}
	if got[1234] != "user_late000000" {
		t.Errorf("last listed %s, want the late user", got[1234])
	}
}

// TestBackendAPIErrors: how answers other than 200 come out.
func TestBackendAPIErrors(t *testing.T) {
	t.Parallel()
	fake := clerktest.New(t)
	fake.AddUsers("err", 1, time.Now())
	api := newAPI(t, fake, clerk.RateLimit{Requests: 1000, Window: 100 * time.Millisecond})
	ctx := context.Background()

	_, err := api.GetUser(ctx, "user_nobody")
	if apperr.KindOf(err) != apperr.KindNotFound {
		t.Errorf("unknown user: %v, want NotFound", err)
	}
	fake.InjectFaults(1, clerktest.Fault{Status: 429, RetryAfter: 7}, clerktest.Fault{Status: 503})
	for _, want := range []struct {
		status int
		after  time.Duration
	}{{429, 7 * time.Second}, {503, 0}} {
		_, err := api.ListUsers(ctx, 10, "")
		var serr *clerk.StatusError
		if apperr.KindOf(err) != apperr.KindUnavailable || !errors.As(err, &serr) ||
			serr.StatusCode != want.status || serr.RetryAfter != want.after || !serr.Temporary() {
			t.Errorf("%d: %v, want Unavailable with a StatusError (retry after %s)", want.status, err, want.after)
		}
	}
	bad, err := clerk.NewAPI(clerk.APIConfig{URL: fake.APIURL(), SecretKey: "sk_test_wrong"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.ListUsers(ctx, 10, "")
	var serr *clerk.StatusError
	if !errors.As(err, &serr) || serr.StatusCode != 401 || serr.Code != "authentication_invalid" || serr.Temporary() ||
		apperr.KindOf(err) == apperr.KindUnavailable {
		t.Errorf("wrong key: %v, want a permanent 401 authentication_invalid", err)
	}
	if _, err := api.ListUsers(ctx, 501, ""); err == nil {
		t.Error("a page of 501 was asked for")
	}
	if got := fmt.Sprint(serr); got != "clerk list users: 401 Unauthorized (authentication_invalid)" {
		t.Errorf("message %q", got)
	}
}
