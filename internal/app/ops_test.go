package app_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/testdb"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestMetricsExposeEverySeries(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	ctx := context.Background()
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_m"}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Client.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_m", Amount: 3, IdempotencyKey: "k1"}); err != nil {
		t.Fatal(err)
	}
	// A replay moves no credits and must not be counted again.
	if _, err := in.Client.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_m", Amount: 3, IdempotencyKey: "k1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Client.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: "user_m", Amount: 5, IdempotencyKey: "k2"}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", in.HTTPURL+"/v1/users/user_m", nil)
	req.Header.Set("Authorization", "Bearer "+apptest.ServiceToken)
	if resp, err := in.HTTPClient(t).Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("REST GetUser: %v %v", resp, err)
	}
	body := clerkhook.SampleEvent("user.created", clerkhook.SampleUser{ID: "user_hooked", UpdatedAt: time.Now()})
	h, _ := clerkhook.SignHeaders(apptest.WebhookSecret, "msg_metrics", time.Now(), body)
	hreq, _ := http.NewRequest("POST", in.WebhookURL, strings.NewReader(string(body)))
	hreq.Header = h
	if resp, err := http.DefaultClient.Do(hreq); err != nil || resp.StatusCode != 200 {
		t.Fatalf("webhook: %v %v", resp, err)
	}
	forged, _ := http.NewRequest("POST", in.WebhookURL, strings.NewReader(string(body)))
	forged.Header = h.Clone()
	forged.Header.Set("svix-id", "msg_forged")
	if resp, err := http.DefaultClient.Do(forged); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forged webhook: %v %v", resp, err)
	}

	code, metrics := get(t, in.OpsURL+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="DeductCredits",grpc_service="userd.v1.UserService",grpc_type="unary"} 2`,
		`grpc_server_handling_seconds_bucket{grpc_method="EnsureUser"`,
		`userd_http_requests_total{code="200",listener="api",method="get"} 1`,
		`userd_http_requests_total{code="200",listener="webhook",method="post"} 1`,
		`userd_webhook_events_total{outcome="created",type="user.created"} 1`,
		`userd_webhook_rejected_total{reason="bad_signature"} 1`,
		`userd_credits_total{kind="deduct"} 3`,
		`userd_credits_total{kind="grant"} 5`,
		`userd_credits_total{kind="initial"} 20`,
		`userd_users_created_total{source="api"} 1`,
		`userd_users_created_total{source="webhook"} 1`,
		`userd_db_pool_connections{state="idle"}`,
		`userd_db_pool_max_connections 16`,
		`go_goroutines`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestHealthFollowsTheDatabase cuts the database connection: gRPC health
// turns NOT_SERVING and /readyz 503 while /healthz stays 200; both recover
// once the database is back.
func TestHealthFollowsTheDatabase(t *testing.T) {
	t.Parallel()
	in, proxy := apptest.StartBehindProxy(t, nil)
	hc := healthpb.NewHealthClient(in.Conn)
	waitFor := func(want healthpb.HealthCheckResponse_ServingStatus, ready int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "userd.v1.UserService"})
			code, _ := get(t, in.OpsURL+"/readyz")
			if err == nil && resp.GetStatus() == want && code == ready {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("health %v (err %v), /readyz %d; want %v and %d", resp.GetStatus(), err, code, want, ready)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor(healthpb.HealthCheckResponse_SERVING, http.StatusOK)
	proxy.Cut()
	start := time.Now()
	waitFor(healthpb.HealthCheckResponse_NOT_SERVING, http.StatusServiceUnavailable)
	t.Logf("NOT_SERVING %s after the cut", time.Since(start).Round(time.Millisecond))
	if code, _ := get(t, in.OpsURL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz during the outage: %d, want 200 (the process is alive)", code)
	}
	proxy.Restore()
	start = time.Now()
	waitFor(healthpb.HealthCheckResponse_SERVING, http.StatusOK)
	t.Logf("SERVING %s after the restore", time.Since(start).Round(time.Millisecond))
}

// TestReadinessFollowsSchemaVersion: a replica started on a schema a newer
// release has migrated (a rolling deploy) starts and stays ready; on a
// schema older than its own newest expand migration it is not ready, and
// ready again once migrated; its post-deploy migrations do not count.
func TestReadinessFollowsSchemaVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testdb.URL(t)
	pool := testdb.Connect(t, url)
	m, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	versions, err := database.NewStore(database.DialectPostgres, goose.DefaultTablename)
	if err != nil {
		t.Fatal(err)
	}
	latest := m.Latest()
	// The next release has applied its migration latest+1.
	if err := versions.Insert(ctx, sqlDB, database.InsertRequest{Version: latest + 1}); err != nil {
		t.Fatal(err)
	}

	in := apptest.Start(t, func(c *config.Serve) { c.Database.URL = url }) // auto-migrate on
	readyz := func(want int, reason string) {
		t.Helper()
		code, body := get(t, in.OpsURL+"/readyz")
		if code != want || !strings.Contains(body, reason) {
			t.Errorf("/readyz = %d %s, want %d with %q", code, body, want, reason)
		}
	}
	readyz(http.StatusOK, `"ready"`)
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_newer_schema"}); err != nil {
		t.Errorf("EnsureUser on a newer schema: %v", err)
	}
	if cur, _, err := m.Versions(ctx); err != nil || cur != latest+1 {
		t.Errorf("schema version after the start: %d (%v), want %d untouched", cur, err, latest+1)
	}

	// Only its post-deploy migrations rolled back: still ready (they may
	// be pending while the previous release runs).
	if err := versions.Delete(ctx, sqlDB, latest+1); err != nil {
		t.Fatal(err)
	}
	if err := m.DownTo(ctx, m.Required()); err != nil {
		t.Fatal(err)
	}
	readyz(http.StatusOK, `"ready"`)
	// Rolled back below this binary's newest expand migration: not ready.
	if err := m.DownTo(ctx, m.Required()-1); err != nil {
		t.Fatal(err)
	}
	readyz(http.StatusServiceUnavailable, "is older than this binary")
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	readyz(http.StatusOK, `"ready"`)
}
