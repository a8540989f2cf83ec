package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/feed"
)

// ndjson is an open REST watch stream.
type ndjson struct {
	resp  *http.Response
	lines chan map[string]any
	done  chan error
}

// openWatch GETs a watch route; the stream is read in the background until
// the test ends.
func (b bundle) openWatch(t *testing.T, path, token string) *ndjson {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.in.HTTPURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	s := &ndjson{resp: resp, lines: make(chan map[string]any, 1000), done: make(chan error, 1)}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				s.done <- fmt.Errorf("line %q is not JSON: %w", sc.Text(), err)
				return
			}
			s.lines <- m
		}
		s.done <- sc.Err()
	}()
	return s
}

// next returns the next line that has key under "result" (event or
// heartbeat), skipping others.
func (s *ndjson) next(t *testing.T, key string) map[string]any {
	t.Helper()
	for {
		select {
		case m := <-s.lines:
			if e := m["error"]; e != nil {
				t.Fatalf("stream error: %v", e)
			}
			if v, ok := field(m, "result", key).(map[string]any); ok {
				return v
			}
		case err := <-s.done:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(time.Minute):
			t.Fatalf("no %s within a minute", key)
		}
	}
}

// TestWatchOverREST: the frontend's live balance. An end user watches its
// own events (and nobody else's: others are not found, everyone is
// forbidden); a service watches anything; errors before the stream are
// ordinary responses with userd's statuses.
func TestWatchOverREST(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	alice := b.clerk.UserToken("user_alice")
	if r := b.call(t, "POST", "/v1/users/me:ensure", alice, nil); r.status != http.StatusOK {
		t.Fatalf("ensure alice: %d %v", r.status, r.body)
	}
	if r := b.call(t, "POST", "/v1/users/me:ensure", b.clerk.UserToken("user_bob"), nil); r.status != http.StatusOK {
		t.Fatalf("ensure bob: %d %v", r.status, r.body)
	}
	for _, tc := range []struct {
		path, token string
		status      int
	}{
		{"/v1/events:watch", alice, http.StatusForbidden},
		{"/v1/users/user_bob/events:watch", alice, http.StatusNotFound},
		{"/v1/users/me/events:watch", "", http.StatusUnauthorized},
		{"/v1/users/me/events:watch", apptest.ServiceToken, http.StatusBadRequest},
		{"/v1/users/me/events:watch?cursor=bogus", alice, http.StatusBadRequest},
		{"/v1/users/me/events:watch?kinds=USER_EVENT_KIND_EXPLODED", alice, http.StatusBadRequest},
	} {
		s := b.openWatch(t, tc.path, tc.token)
		if s.resp.StatusCode != tc.status || s.resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("GET %s: %d %s, want %d application/json", tc.path, s.resp.StatusCode, s.resp.Header.Get("Content-Type"), tc.status)
		}
		s.resp.Body.Close()
	}

	mine := b.openWatch(t, "/v1/users/me/events:watch", alice)
	if mine.resp.StatusCode != http.StatusOK || mine.resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("own watch: %d %s", mine.resp.StatusCode, mine.resp.Header.Get("Content-Type"))
	}
	if c, _ := mine.next(t, "heartbeat")["cursor"].(string); c == "" {
		t.Error("the first heartbeat has no cursor")
	}
	plans := b.openWatch(t, "/v1/events:watch?kinds=USER_EVENT_KIND_PLAN_CHANGED", apptest.ServiceToken)
	plans.next(t, "heartbeat")

	ctx := context.Background()
	c := b.in.Client
	if _, err := c.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: "user_bob", Amount: 5, IdempotencyKey: "b1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_alice", Amount: 3, IdempotencyKey: "a1", Reason: "render"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetPlan(ctx, &userdv1.SetPlanRequest{ClerkUserId: "user_bob", Plan: userdv1.Plan_PLAN_PRO, IdempotencyKey: "p1"}); err != nil {
		t.Fatal(err)
	}
	// "Now" is the replica's position, which may be just before alice's
	// own creation: skip to the deduction.
	ev := mine.next(t, "event")
	for field(ev, "kind") == "USER_EVENT_KIND_USER_CREATED" || field(ev, "creditTransaction", "kind") == "TRANSACTION_KIND_INITIAL" {
		ev = mine.next(t, "event")
	}
	if field(ev, "kind") != "USER_EVENT_KIND_CREDITS_CHANGED" || field(ev, "clerkUserId") != "user_alice" ||
		field(ev, "creditTransaction", "balanceAfter") != "7" || field(ev, "creditTransaction", "reason") != "render" {
		t.Errorf("alice's first event: %v", ev)
	}
	pl := plans.next(t, "event")
	if field(pl, "kind") != "USER_EVENT_KIND_PLAN_CHANGED" || field(pl, "planChange", "plan") != "PLAN_PRO" || field(pl, "clerkUserId") != "user_bob" {
		t.Errorf("plan event: %v", pl)
	}

	// An expired cursor is 410 Gone, with the reason and where to start.

	if n, err := feed.Prune(ctx, b.in.Store, time.Now().Add(time.Hour)); err != nil || n == 0 {
		t.Fatalf("prune: %d, %v", n, err)
	}
	if _, err := c.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: "user_alice", Amount: 1, IdempotencyKey: "a2"}); err != nil {
		t.Fatal(err)
	}
	r := b.call(t, "GET", "/v1/users/me/events:watch?cursor="+feed.LegacyCursor(feed.Position{Xid: 1, ID: 1}), alice, nil)
	details, _ := r.body["details"].([]any)
	reason := ""
	for _, d := range details {
		if dm, ok := d.(map[string]any); ok && dm["reason"] != nil {
			reason, _ = dm["reason"].(string)
		}
	}
	if r.status != http.StatusGone || reason != "CURSOR_EXPIRED" {
		t.Errorf("expired cursor: %d %v, want 410 with reason CURSOR_EXPIRED", r.status, r.body)
	}

}

// TestRESTWatchOutlivesTheListenerTimeouts: the HTTP API listener cuts
// requests after 30 s of reading or writing; a watch stream must stay open
// past that (heartbeats every second here), and still deliver events.
func TestRESTWatchOutlivesTheListenerTimeouts(t *testing.T) {
	if testing.Short() {
		t.Skip("outlives the 30 s listener timeouts, by design: not in -short (make test-fast)")
	}
	t.Parallel()
	b := setup(t, func(c *config.Serve, _ *clerktest.Clerk) { c.FeedHeartbeat = time.Second })
	s := b.openWatch(t, "/v1/events:watch", apptest.ServiceToken)
	deadline := time.Now().Add(35 * time.Second)
	beats := 0
	for time.Now().Before(deadline) {
		s.next(t, "heartbeat")
		beats++
	}
	if _, err := b.in.Client.EnsureUser(context.Background(), &userdv1.EnsureUserRequest{ClerkUserId: "user_late"}); err != nil {
		t.Fatal(err)
	}
	if ev := s.next(t, "event"); field(ev, "clerkUserId") != "user_late" {
		t.Errorf("after 35 s: %v", ev)
	}
	t.Logf("%d heartbeats in 35 s", beats)
}
