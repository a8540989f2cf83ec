package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/feed"
)

// TestWatch: userctl watch prints plan changes as they come and keeps its
// cursor in a file, so that the next run resumes after the last event it
// printed; an expired cursor is exit code 9.
func TestWatch(t *testing.T) {
	in := apptest.Start(t, nil)
	t.Setenv("USERD_ADDR", in.App.GRPCAddr().String())
	t.Setenv("USERD_TOKEN", apptest.ServiceToken)
	t.Setenv("USERD_PLAINTEXT", "true")
	ctx := context.Background()
	setPlan := func(plan userdv1.Plan, key string) {
		t.Helper()
		if _, err := in.Client.SetPlan(ctx, &userdv1.SetPlanRequest{ClerkUserId: "user_watch", Plan: plan, IdempotencyKey: key}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_watch"}); err != nil {
		t.Fatal(err)
	}
	setPlan(userdv1.Plan_PLAN_PRO, "p1")
	cursorFile := filepath.Join(t.TempDir(), "cursor")

	r := userctl("--json", "watch", "--kind", "plan", "--from-oldest", "--count", "1", "--cursor-file", cursorFile)
	var ev struct {
		ID         string `json:"id"`
		Cursor     string `json:"cursor"`
		Kind       string `json:"kind"`
		PlanChange struct{ Plan, IdempotencyKey string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &ev); r.code != exitOK || err != nil ||
		ev.Kind != "USER_EVENT_KIND_PLAN_CHANGED" || ev.PlanChange.Plan != "PLAN_PRO" || ev.PlanChange.IdempotencyKey != "p1" {
		t.Fatalf("watch --json: %d %v %q %s", r.code, err, r.stdout, r.stderr)
	}
	if saved, err := os.ReadFile(cursorFile); err != nil || strings.TrimSpace(string(saved)) != ev.Cursor {
		t.Fatalf("cursor file: %q, %v; want %s", saved, err, ev.Cursor)
	}

	setPlan(userdv1.Plan_PLAN_ENTERPRISE, "p2")
	setPlan(userdv1.Plan_PLAN_FREE, "p3")
	r = userctl("watch", "user_watch", "--kind", "plan,credits", "--cursor-file", cursorFile, "--count", "2")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != exitOK || len(lines) != 2 || !strings.Contains(lines[0], "PRO -> ENTERPRISE") || !strings.Contains(lines[1], "ENTERPRISE -> FREE") {
		t.Fatalf("resumed watch: %d %q %s", r.code, r.stdout, r.stderr)
	}

	if r := userctl("watch", "--kind", "exploded"); r.code != exitUsage {
		t.Errorf("unknown kind: exit %d, %s", r.code, r.stderr)
	}
	if _, err := feed.Prune(ctx, in.Store, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if r := userctl("watch", "--cursor", ev.Cursor); r.code != exitCursorExpired || !strings.Contains(r.stderr, "CURSOR_EXPIRED") {
		t.Errorf("expired cursor: exit %d, %s", r.code, r.stderr)
	}
}
