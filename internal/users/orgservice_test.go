package users_test

import (
	"context"
	"testing"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// TestDeductFromOrganizationForService: a backend service deducts from an
// organization's account with no member acting (the ledger entry has no
// actor, names the service), once per key, never below zero; every bad
// input is refused with a clear error and the balance untouched.
func TestDeductFromOrganizationForService(t *testing.T) {
	e := setupOrgs(t, time.Now())
	ctx := context.Background()
	e.newOrg(t, "org_svc", 100, member{clerkUserID: "user_svc_member"})
	ok := users.CreditChange{ClerkOrgID: "org_svc", Service: "stripe", Amount: 30, IdempotencyKey: "svc-1", Reason: "refund"}
	for _, tc := range []struct {
		name  string
		edit  func(*users.CreditChange)
		field string
		kind  apperr.Kind
	}{
		{"NoOrganization", func(c *users.CreditChange) { c.ClerkOrgID = "" }, "clerk_org_id", apperr.KindInvalidArgument},
		{"AMember", func(c *users.CreditChange) { c.ClerkUserID = "user_svc_member" }, "clerk_user_id", apperr.KindInvalidArgument},
		{"NoService", func(c *users.CreditChange) { c.Service = "" }, "service", apperr.KindInvalidArgument},
		{"ZeroAmount", func(c *users.CreditChange) { c.Amount = 0 }, "amount", apperr.KindInvalidArgument},
		{"NegativeAmount", func(c *users.CreditChange) { c.Amount = -5 }, "amount", apperr.KindInvalidArgument},
		{"Action", func(c *users.CreditChange) { c.Action = "render" }, "action", apperr.KindInvalidArgument},
		{"Permission", func(c *users.CreditChange) { c.RequiredPermission = "org:credits:spend" }, "required_permission", apperr.KindInvalidArgument},
		{"NoKey", func(c *users.CreditChange) { c.IdempotencyKey = "" }, "idempotency_key", apperr.KindInvalidArgument},
		{"Expiry", func(c *users.CreditChange) { c.ExpiresAt = time.Now().Add(time.Hour) }, "expires_at", apperr.KindInvalidArgument},
		{"UnknownOrganization", func(c *users.CreditChange) { c.ClerkOrgID = "org_nobody" }, "", apperr.KindNotFound},
		{"MoreThanTheBalance", func(c *users.CreditChange) { c.Amount = 101 }, "", apperr.KindInsufficientCredits},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			c.IdempotencyKey = "bad-" + tc.name
			tc.edit(&c)
			_, err := e.svc.DeductFromOrganizationForService(ctx, c)
			if apperr.KindOf(err) != tc.kind {
				t.Fatalf("err %v, want kind %v", err, tc.kind)
			}
			if tc.field != "" {
				ae, _ := apperr.As(err)
				if ae == nil || len(ae.Violations) == 0 || ae.Violations[0].Field != tc.field {
					t.Errorf("violations %+v, want %s", ae, tc.field)
				}
			}
			if a, err := e.svc.GetAccount(ctx, users.AccountRef{ClerkOrgID: "org_svc"}); err != nil || a.Credits != 100 {
				t.Errorf("balance %d (%v) after a refused deduction, want 100", a.Credits, err)
			}
		})
	}
	for range 2 {
		if _, err := e.svc.DeductFromOrganizationForService(ctx, ok); err != nil {
			t.Fatal(err)
		}
	}
	if a, _ := e.svc.GetAccount(ctx, users.AccountRef{ClerkOrgID: "org_svc"}); a.Credits != 70 {
		t.Errorf("balance %d, want 70 (deducted once)", a.Credits)
	}
	var actorless bool
	var service string
	if err := e.pool.QueryRow(ctx, `SELECT actor_user_id IS NULL, service FROM credit_transactions WHERE idempotency_key = 'svc-1'`).Scan(&actorless, &service); err != nil {
		t.Fatal(err)
	}
	if !actorless || service != "stripe" {
		t.Errorf("ledger entry: no actor %v, service %q; want no actor, stripe", actorless, service)
	}
}
