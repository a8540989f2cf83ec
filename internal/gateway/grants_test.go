package gateway_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/userd/userd/internal/apptest"
)

// TestGrantsAndCatalogOverREST: the routes of issue 21 — the plan catalog
// (read by everyone, set by services), a grant that expires, and an
// account's grants (an end user: its own).
func TestGrantsAndCatalogOverREST(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	svc := apptest.ServiceToken
	alice := b.clerk.UserToken("user_alice")
	if r := b.call(t, "GET", "/v1/plan-catalog", alice, nil); r.status != http.StatusOK || len(asList(r.body["plans"])) != 0 {
		t.Fatalf("empty catalog: %d %v", r.status, r.body)
	}
	if r := b.call(t, "PUT", "/v1/plan-catalog/PLAN_PRO", alice, map[string]any{"allowance": 5}); r.status != http.StatusForbidden {
		t.Errorf("end user sets the catalog: %d %v, want 403", r.status, r.body)
	}
	r := b.call(t, "PUT", "/v1/plan-catalog/PLAN_FREE", svc, map[string]any{"allowance": 10, "period": "month", "rolloverCap": 3})
	if r.status != http.StatusOK || field(r.body, "planAllowance", "allowance") != "10" || r.body["changed"] != true ||
		field(r.body, "planAllowance", "updatedBy") != "service:tests" {
		t.Fatalf("set catalog: %d %v", r.status, r.body)
	}
	if r := b.call(t, "PUT", "/v1/plan-catalog/PLAN_FREE", svc, map[string]any{"allowance": 10, "period": "year"}); r.status != http.StatusBadRequest {
		t.Errorf("bad period: %d %v, want 400", r.status, r.body)
	}
	r = b.call(t, "GET", "/v1/plan-catalog", alice, nil)
	if r.status != http.StatusOK || len(asList(r.body["plans"])) != 1 {
		t.Errorf("catalog: %d %v", r.status, r.body)
	}
	// Alice signs up now: the FREE allowance with her account, in place of
	// the sign-up credits.
	if r := b.call(t, "POST", "/v1/users/me:ensure", alice, map[string]any{}); r.status != http.StatusOK {
		t.Fatalf("ensure: %d %v", r.status, r.body)
	}
	expires := time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
	r = b.call(t, "POST", "/v1/users/user_alice/credits:grant", svc,
		map[string]any{"amount": 25, "idempotencyKey": "promo", "expiresAt": expires, "grantSource": "BONUS"})
	if r.status != http.StatusOK || r.body["balance"] != "35" {
		t.Fatalf("grant with expiry: %d %v", r.status, r.body)
	}
	r = b.call(t, "POST", "/v1/users/user_alice/credits:grant", svc,
		map[string]any{"amount": 25, "idempotencyKey": "late", "expiresAt": "2001-01-01T00:00:00Z"})
	if r.status != http.StatusBadRequest {
		t.Errorf("grant expiring in the past: %d %v, want 400", r.status, r.body)
	}
	r = b.call(t, "GET", "/v1/users/me/grants", alice, nil)
	grants := asList(r.body["grants"])
	if r.status != http.StatusOK || r.body["balance"] != "35" || r.body["nonExpiringCredits"] != "0" || len(grants) != 2 ||
		r.body["nextRefillAmount"] != "10" || r.body["nextRefillTime"] == nil {
		t.Fatalf("grants: %d %v", r.status, r.body)
	}
	// Soonest expiry first: the promo (2 days), then the allowance (a month).
	if g, _ := grants[0].(map[string]any); g["source"] != "BONUS" || g["remaining"] != "25" {
		t.Errorf("first grant: %v, want the promo", grants[0])
	}
	if r := b.call(t, "GET", "/v1/users/user_bob/grants", alice, nil); r.status != http.StatusNotFound {
		t.Errorf("another user's grants: %d %v, want 404", r.status, r.body)
	}
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}
