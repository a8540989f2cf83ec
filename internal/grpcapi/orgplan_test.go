package grpcapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"google.golang.org/grpc/codes"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
)

// orgPlan is the plan of an organization's account, its balance and
// ledger length, read from the database.
func (w *orgWorld) orgPlan(t *testing.T, org string) (string, int64, int) {
	t.Helper()
	var plan string
	if err := w.in.DB.QueryRow(context.Background(), `SELECT a.plan FROM accounts a
		JOIN organizations o ON o.id = a.organization_id WHERE o.clerk_org_id = $1`, org).Scan(&plan); err != nil {
		t.Fatalf("plan of %s: %v", org, err)
	}
	credits, rows := w.books(t, org)
	return plan, credits, rows
}

// TestOrganizationPlanAndUsage: over gRPC, a service changes an
// organization account's plan with a bonus, and the response carries the
// account; end users (even the organization's admin) and bad requests are
// refused, each leaving the plan and the books as they were; the usage
// summary of the organization's account sums its entries by reason and by
// member, read by members and services and refused to a non-member, an
// impersonation token and a token naming another organization.
func TestOrganizationPlanAndUsage(t *testing.T) {
	t.Parallel()
	w := newOrgWorld(t)
	c := w.in.Client
	svc := context.Background()
	setPlan := func(key string) *userdv1.SetPlanRequest {
		return &userdv1.SetPlanRequest{ClerkOrganizationId: orgA, Plan: userdv1.Plan_PLAN_PRO, BonusCredits: 50, IdempotencyKey: key, Reason: "upgrade"}
	}
	impersonated := w.clerk.Claims(bob)
	impersonated["v"], impersonated["fea"] = 2, "o:credits"
	impersonated["o"] = map[string]any{"id": orgA, "rol": "member", "per": "spend", "fpm": "1"}
	impersonated["act"] = map[string]any{"sub": "user_2support", "sid": "sess_support", "iss": "https://dashboard.clerk.com"}
	usage := &userdv1.GetUsageSummaryRequest{ClerkOrganizationId: orgA, ByMember: true}

	plan, credits, rows := w.orgPlan(t, orgA)
	for _, r := range []struct {
		name   string
		call   func() error
		code   codes.Code
		reason string
	}{
		{"AdminSetsPlan", func() error {
			_, err := c.SetPlan(as(w.v2(ann, orgA, "admin", "spend", "manage")), setPlan("p1"))
			return err
		},
			codes.PermissionDenied, ""},
		{"AdminSetsPlanV1", func() error {
			_, err := c.SetPlan(as(w.v1(ann, orgA, "org:admin", spendPerm)), setPlan("p2"))
			return err
		},
			codes.PermissionDenied, ""},
		{"ServiceNamesUserToo", func() error {
			req := setPlan("p3")
			req.ClerkUserId = bob
			_, err := c.SetPlan(svc, req)
			return err
		}, codes.InvalidArgument, ""},
		{"NoPlan", func() error {
			req := setPlan("p4")
			req.Plan = userdv1.Plan_PLAN_UNSPECIFIED
			_, err := c.SetPlan(svc, req)
			return err
		}, codes.InvalidArgument, ""},
		{"NoKey", func() error { _, err := c.SetPlan(svc, setPlan("")); return err }, codes.InvalidArgument, ""},
		{"UnknownOrganization", func() error {
			req := setPlan("p5")
			req.ClerkOrganizationId = "org_2nope"
			_, err := c.SetPlan(svc, req)
			return err
		}, codes.NotFound, ""},
		{"NonMemberReadsUsage", func() error { _, err := c.GetUsageSummary(as(w.v2(dan, orgA, "admin")), usage); return err },
			codes.PermissionDenied, "NOT_ORGANIZATION_MEMBER"},
		{"OtherOrganizationUsage", func() error { _, err := c.GetUsageSummary(as(w.v2(bob, orgB, "member")), usage); return err },
			codes.PermissionDenied, "ORGANIZATION_NOT_ACTIVE"},
		{"ImpersonationUsage", func() error { _, err := c.GetUsageSummary(as(w.token(impersonated)), usage); return err },
			codes.PermissionDenied, "IMPERSONATION_NOT_ALLOWED"},
		{"AnotherMembersUsage", func() error {
			_, err := c.GetUsageSummary(as(w.v2(bob, orgA, "member")), &userdv1.GetUsageSummaryRequest{ClerkOrganizationId: orgA, ClerkUserId: ann})
			return err
		}, codes.PermissionDenied, ""},
		{"ByMemberOfPersonal", func() error {
			_, err := c.GetUsageSummary(svc, &userdv1.GetUsageSummaryRequest{ClerkUserId: bob, ByMember: true})
			return err
		}, codes.InvalidArgument, ""},
	} {
		t.Run(r.name, func(t *testing.T) {
			st := wantCode(t, r.call(), r.code)
			if r.reason != "" {
				if ei := errorInfo(st); ei.GetReason() != r.reason {
					t.Errorf("reason %q (%s), want %s", ei.GetReason(), st.Message(), r.reason)
				}
			}
			if p2, c2, n2 := w.orgPlan(t, orgA); p2 != plan || c2 != credits || n2 != rows {
				t.Errorf("org A changed: plan %s, %d credits, %d entries; was %s, %d, %d", p2, c2, n2, plan, credits, rows)
			}
		})
	}

	// A service changes the plan; a retry replays it.
	res, err := c.SetPlan(svc, setPlan("plan-1"))
	if err != nil {
		t.Fatal(err)
	}
	a := res.GetAccount()
	if res.GetUser() != nil || a.GetClerkOrganizationId() != orgA || a.GetPlan() != userdv1.Plan_PLAN_PRO || a.GetCredits() != credits+50 ||
		res.GetPreviousPlan() != userdv1.Plan_PLAN_FREE || res.GetBonusTransaction().GetDelta() != 50 ||
		res.GetBonusTransaction().GetClerkOrganizationId() != orgA || res.GetReplayed() {
		t.Errorf("plan change: %v", res)
	}
	if p2, c2, n2 := w.orgPlan(t, orgA); p2 != "PRO" || c2 != credits+50 || n2 != rows+1 {
		t.Errorf("after the plan change: plan %s, %d credits, %d entries", p2, c2, n2)
	}
	again, err := c.SetPlan(svc, setPlan("plan-1"))
	if err != nil || !again.GetReplayed() || again.GetAccount().GetCredits() != credits+50 {
		t.Errorf("retry: %v, %v", again, err)
	}

	// Bob spends 5 and Ann 3; the summary sums them by member.
	for _, s := range []struct {
		tok, key string
		amount   int64
	}{
		{w.v2(bob, orgA, "member", "spend"), "bob-1", 5},
		{w.v2(ann, orgA, "admin", "spend"), "ann-1", 3},
	} {
		if _, err := c.DeductCredits(as(s.tok), &userdv1.DeductCreditsRequest{ClerkOrganizationId: orgA, Amount: s.amount, IdempotencyKey: s.key, Reason: "render"}); err != nil {
			t.Fatalf("%s: %v", s.key, err)
		}
	}
	for name, ctx := range map[string]context.Context{
		"member without spend permission": as(w.v2(cy, orgA, "member")),
		"service":                         svc,
	} {
		sum, err := c.GetUsageSummary(ctx, usage)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sum.GetBalance() != credits+50-8 || sum.GetSpent() != 8 || sum.GetGranted() != 150 || sum.GetEntryCount() != 4 {
			t.Errorf("%s: totals %v", name, sum)
		}
		byReason := map[string][2]int64{}
		for _, r := range sum.GetReasons() {
			byReason[r.GetReason()] = [2]int64{r.GetSpent(), r.GetGranted()}
		}
		if byReason["render"] != [2]int64{8, 0} || byReason["purchase"] != [2]int64{0, 100} || byReason["upgrade"] != [2]int64{0, 50} {
			t.Errorf("%s: by reason %v", name, byReason)
		}
		byMember := map[string][3]int64{}
		for _, m := range sum.GetByMember() {
			byMember[m.GetClerkUserId()] = [3]int64{m.GetSpent(), m.GetGranted(), m.GetEntryCount()}
		}
		want := map[string][3]int64{bob: {5, 0, 1}, ann: {3, 0, 1}, "": {0, 150, 2}}
		if len(byMember) != len(want) {
			t.Errorf("%s: by member %v, want %v", name, byMember, want)
		}
		for m, v := range want {
			if byMember[m] != v {
				t.Errorf("%s: member %q: %v, want %v", name, m, byMember[m], v)
			}
		}
	}
	// Without by_member, none.
	sum, err := c.GetUsageSummary(svc, &userdv1.GetUsageSummaryRequest{ClerkOrganizationId: orgA})
	if err != nil || len(sum.GetByMember()) != 0 || sum.GetSpent() != 8 {
		t.Errorf("without by_member: %v, %v", sum, err)
	}
}

// TestOrganizationPlanAndUsageREST: over REST, an end user's plan change
// of its organization is 403 and changes nothing, a service's is 200 with
// the account; the organization's usage by member is readable by a member.
func TestOrganizationPlanAndUsageREST(t *testing.T) {
	t.Parallel()
	w := newOrgWorld(t)
	do := func(method, tok, path, key string, body any) (int, map[string]any) {
		t.Helper()
		var rd *bytes.Reader
		if body != nil {
			raw, _ := json.Marshal(body)
			rd = bytes.NewReader(raw)
		} else {
			rd = bytes.NewReader(nil)
		}
		req, _ := http.NewRequest(method, w.in.HTTPURL+path, rd)
		req.Header.Set("Authorization", "Bearer "+tok)
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := w.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	plan, credits, rows := w.orgPlan(t, orgA)
	code, out := do(http.MethodPost, w.v2(ann, orgA, "admin", "spend", "manage"), "/v1/organizations/"+orgA+"/plan", "rest-p1",
		map[string]any{"plan": "PLAN_ENTERPRISE", "bonusCredits": "10"})
	if code != http.StatusForbidden {
		t.Errorf("admin's plan change: %d %v, want 403", code, out)
	}
	if p2, c2, n2 := w.orgPlan(t, orgA); p2 != plan || c2 != credits || n2 != rows {
		t.Errorf("the refused plan change changed org A: %s %d %d", p2, c2, n2)
	}
	code, out = do(http.MethodPost, apptest.ServiceToken, "/v1/organizations/"+orgA+"/plan", "rest-p2",
		map[string]any{"plan": "PLAN_ENTERPRISE", "bonusCredits": "10"})
	acct, _ := out["account"].(map[string]any)
	if code != http.StatusOK || acct["plan"] != "PLAN_ENTERPRISE" || acct["clerkOrganizationId"] != orgA || out["user"] != nil {
		t.Fatalf("service's plan change: %d %v", code, out)
	}
	if p2, c2, _ := w.orgPlan(t, orgA); p2 != "ENTERPRISE" || c2 != credits+10 {
		t.Errorf("after the plan change: %s %d", p2, c2)
	}
	if code, out := do(http.MethodPost, w.v2(bob, orgA, "member", "spend"), "/v1/organizations/"+orgA+"/credits:deduct", "rest-bob",
		map[string]any{"amount": "4"}); code != http.StatusOK {
		t.Fatalf("bob's spend: %d %v", code, out)
	}
	code, out = do(http.MethodGet, w.v2(cy, orgA, "member"), "/v1/organizations/"+orgA+"/usage?byMember=true", "", nil)
	if code != http.StatusOK {
		t.Fatalf("usage: %d %v", code, out)
	}
	found := false
	members, _ := out["byMember"].([]any)
	for _, m := range members {
		m, _ := m.(map[string]any)
		if m["clerkUserId"] == bob {
			found = m["spent"] == "4" && m["entryCount"] == "1"
		}
	}
	if !found || out["spent"] != "4" {
		t.Errorf("usage by member: %v", out)
	}
	code, out = do(http.MethodGet, w.v2(dan, orgA, "member"), "/v1/organizations/"+orgA+"/usage?byMember=true", "", nil)
	if code != http.StatusForbidden {
		t.Errorf("non-member's usage: %d %v, want 403", code, out)
	}
}
