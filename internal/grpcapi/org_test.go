package grpcapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/config"
)

// orgWorld is a userd with organizations mirrored from signed webhook
// deliveries and a fake Clerk signing session tokens.
type orgWorld struct {
	in    *apptest.Instance
	clerk *clerktest.Clerk
	http  *http.Client
	msg   int
}

const (
	orgA, orgB = "org_2acme", "org_2beta"
	// ann: org_a admin; bob: org_a member with org:credits:spend; cy:
	// org_a member without it; dan: org_b member, not org_a's.
	ann, bob, cy, dan = "user_2ann", "user_2bob", "user_2cy", "user_2dan"
	spendPerm         = "org:credits:spend"
)

func newOrgWorld(t *testing.T) *orgWorld {
	t.Helper()
	fake := clerktest.New(t)
	in := apptest.Start(t, func(c *config.Serve) {
		c.JWKSURL = fake.JWKSURL()
		c.Issuer = fake.Issuer()
		c.AuthorizedParties = clerktest.Party
		c.OrgSpendPermission = spendPerm
	})
	w := &orgWorld{in: in, clerk: fake, http: in.HTTPClient(t)}
	ctx := context.Background()
	for _, u := range []string{ann, bob, cy, dan} {
		if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: u}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().Add(-time.Minute)
	for _, o := range []string{orgA, orgB} {
		w.deliver(t, "organization.created", clerkhook.SampleOrgEvent("organization.created",
			clerkhook.SampleOrg{ID: o, Name: o, UpdatedAt: now}))
	}
	for i, m := range []struct {
		org, user, role string
		perms           []string
	}{
		{orgA, ann, "org:admin", []string{spendPerm, "org:credits:manage"}},
		{orgA, bob, "org:member", []string{spendPerm}},
		{orgA, cy, "org:member", nil},
		{orgB, dan, "org:member", []string{spendPerm}},
	} {
		w.deliver(t, "organizationMembership.created", clerkhook.SampleMembershipEvent("organizationMembership.created",
			clerkhook.SampleMembership{ID: fmt.Sprintf("orgmem_%d", i), Org: clerkhook.SampleOrg{ID: m.org, Name: m.org, UpdatedAt: now},
				UserID: m.user, Role: m.role, Permissions: m.perms, UpdatedAt: now.Add(time.Second)}))
	}
	for _, o := range []string{orgA, orgB} {
		if _, err := in.Client.GrantCredits(ctx, &userdv1.GrantCreditsRequest{
			ClerkOrganizationId: o, Amount: 100, IdempotencyKey: "seed-" + o, Reason: "purchase",
		}); err != nil {
			t.Fatalf("grant to %s: %v", o, err)
		}
	}
	return w
}

// deliver posts a Svix-signed webhook delivery and requires a 200.
func (w *orgWorld) deliver(t *testing.T, typ string, body []byte) {
	t.Helper()
	w.msg++
	h, err := clerkhook.SignHeaders(apptest.WebhookSecret, fmt.Sprintf("msg_org_%d", w.msg), time.Now(), body)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, w.in.WebhookURL, bytes.NewReader(body))
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", typ, resp.StatusCode, raw)
	}
}

// v2 is a session token of sub with Clerk's v2 "o" claim: active
// organization org, role (without "org:"), and the credits feature's
// permissions among spend and manage.
func (w *orgWorld) v2(sub, org, role string, perms ...string) string {
	c := w.clerk.Claims(sub)
	mask := 0
	for _, p := range perms {
		switch p {
		case "spend":
			mask |= 1
		case "manage":
			mask |= 2
		}
	}
	c["v"] = 2
	c["fea"] = "o:credits"
	c["o"] = map[string]any{"id": org, "slg": strings.TrimPrefix(org, "org_"), "rol": role, "per": "spend,manage", "fpm": fmt.Sprint(mask)}
	return w.clerk.Token(c, "kid-1")
}

// v1 is a session token of sub with the v1 org_* claims.
func (w *orgWorld) v1(sub, org, role string, perms ...string) string {
	c := w.clerk.Claims(sub)
	if perms == nil {
		perms = []string{} // Clerk sends [] for a member without permissions
	}
	c["org_id"], c["org_role"], c["org_slug"], c["org_permissions"] = org, role, "x", perms
	return w.clerk.Token(c, "kid-1")
}

func (w *orgWorld) token(claims jwt.MapClaims) string { return w.clerk.Token(claims, "kid-1") }

func as(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// books is an organization account's balance and ledger length.
func (w *orgWorld) books(t *testing.T, org string) (int64, int) {
	t.Helper()
	var credits int64
	var rows int
	err := w.in.DB.QueryRow(context.Background(), `SELECT a.credits,
		(SELECT count(*) FROM credit_transactions t WHERE t.user_id = a.id)
		FROM accounts a JOIN organizations o ON o.id = a.organization_id WHERE o.clerk_org_id = $1`, org).Scan(&credits, &rows)
	if err != nil {
		t.Fatalf("books of %s: %v", org, err)
	}
	return credits, rows
}

// TestOrganizationAuthorization: over gRPC, with tokens carrying Clerk's
// v2 "o" claim or the v1 org_* claims, a non-member, a member without the
// configured permission, a token naming another organization, an
// impersonation token and end users granting or changing the plan are
// refused, each for its reason, and none of it changes the books; a member
// spends; an admin sets a cap that a plain member cannot, and the cap
// refuses a spend beyond it like insufficient credits.
func TestOrganizationAuthorization(t *testing.T) {
	t.Parallel()
	w := newOrgWorld(t)
	c := w.in.Client
	deduct := func(org, key string) *userdv1.DeductCreditsRequest {
		return &userdv1.DeductCreditsRequest{ClerkOrganizationId: org, Amount: 5, IdempotencyKey: key}
	}
	impersonated := w.clerk.Claims(bob)
	impersonated["v"], impersonated["fea"] = 2, "o:credits"
	impersonated["o"] = map[string]any{"id": orgA, "rol": "member", "per": "spend", "fpm": "1"}
	impersonated["act"] = map[string]any{"sub": "user_2support", "sid": "sess_support", "iss": "https://dashboard.clerk.com"}
	malformed := w.clerk.Claims(bob)
	malformed["o"] = map[string]any{"id": orgA, "rol": 7}

	refusals := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason string
	}{
		{"NonMember", func() error {
			_, err := c.DeductCredits(as(w.v2(dan, orgA, "admin", "spend")), deduct(orgA, "r1"))
			return err
		},
			codes.PermissionDenied, "NOT_ORGANIZATION_MEMBER"},
		{"NonMemberV1", func() error {
			_, err := c.DeductCredits(as(w.v1(dan, orgA, "org:admin", spendPerm)), deduct(orgA, "r2"))
			return err
		}, codes.PermissionDenied, "NOT_ORGANIZATION_MEMBER"},
		{"NonMemberReads", func() error {
			_, err := c.GetAccount(as(w.v2(dan, orgA, "admin", "spend")), &userdv1.GetAccountRequest{ClerkOrganizationId: orgA})
			return err
		}, codes.PermissionDenied, "NOT_ORGANIZATION_MEMBER"},
		{"TokenWithoutPermission", func() error { _, err := c.DeductCredits(as(w.v2(cy, orgA, "member")), deduct(orgA, "r3")); return err },
			codes.PermissionDenied, "MISSING_ORGANIZATION_PERMISSION"},
		// The token claims the permission; the mirrored membership lacks
		// it: the database refuses.
		{"MembershipWithoutPermission", func() error {
			_, err := c.DeductCredits(as(w.v2(cy, orgA, "member", "spend")), deduct(orgA, "r4"))
			return err
		}, codes.PermissionDenied, "MISSING_ORGANIZATION_PERMISSION"},
		{"OtherOrganizationActive", func() error {
			_, err := c.DeductCredits(as(w.v2(bob, orgA, "member", "spend")), deduct(orgB, "r5"))
			return err
		}, codes.PermissionDenied, "ORGANIZATION_NOT_ACTIVE"},
		{"NoOrganizationActive", func() error { _, err := c.DeductCredits(as(w.clerk.UserToken(bob)), deduct(orgA, "r6")); return err },
			codes.PermissionDenied, "ORGANIZATION_NOT_ACTIVE"},
		{"Impersonation", func() error { _, err := c.DeductCredits(as(w.token(impersonated)), deduct(orgA, "r7")); return err },
			codes.PermissionDenied, "IMPERSONATION_NOT_ALLOWED"},
		{"ImpersonationReads", func() error {
			_, err := c.GetAccount(as(w.token(impersonated)), &userdv1.GetAccountRequest{ClerkOrganizationId: orgA})
			return err
		}, codes.PermissionDenied, "IMPERSONATION_NOT_ALLOWED"},
		{"AsAnotherMember", func() error {
			req := deduct(orgA, "r8")
			req.ClerkUserId = ann
			_, err := c.DeductCredits(as(w.v2(bob, orgA, "member", "spend")), req)
			return err
		}, codes.PermissionDenied, ""},
		{"EndUserGrants", func() error {
			_, err := c.GrantCredits(as(w.v2(ann, orgA, "admin", "spend", "manage")), &userdv1.GrantCreditsRequest{
				ClerkOrganizationId: orgA, Amount: 5, IdempotencyKey: "r9"})
			return err
		}, codes.PermissionDenied, ""},
		{"ServiceSpendsWithoutMember", func() error { _, err := c.DeductCredits(context.Background(), deduct(orgA, "r11")); return err },
			codes.InvalidArgument, ""},
		{"ServiceSpendsForNonMember", func() error {
			req := deduct(orgA, "r12")
			req.ClerkUserId = dan
			_, err := c.DeductCredits(context.Background(), req)
			return err
		}, codes.PermissionDenied, "NOT_ORGANIZATION_MEMBER"},
		{"MalformedClaim", func() error { _, err := c.DeductCredits(as(w.token(malformed)), deduct(orgA, "r13")); return err },
			codes.Unauthenticated, ""},
		{"MemberSetsCap", func() error {
			_, err := c.SetMemberSpendingCap(as(w.v2(bob, orgA, "member", "spend")), &userdv1.SetMemberSpendingCapRequest{
				ClerkOrganizationId: orgA, MemberClerkUserId: bob, Period: userdv1.UsagePeriod_USAGE_PERIOD_DAY, Cap: 1000})
			return err
		}, codes.PermissionDenied, "MISSING_ORGANIZATION_PERMISSION"},
	}
	credits, rows := w.books(t, orgA)
	creditsB, rowsB := w.books(t, orgB)
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			st := wantCode(t, r.call(), r.code)
			if r.reason != "" {
				if ei := errorInfo(st); ei.GetReason() != r.reason {
					t.Errorf("reason %q (%s), want %s", ei.GetReason(), st.Message(), r.reason)
				}
			}
			if c2, n2 := w.books(t, orgA); c2 != credits || n2 != rows {
				t.Errorf("org A's books changed: %d credits, %d entries; were %d, %d", c2, n2, credits, rows)
			}
			if c2, n2 := w.books(t, orgB); c2 != creditsB || n2 != rowsB {
				t.Errorf("org B's books changed: %d credits, %d entries; were %d, %d", c2, n2, creditsB, rowsB)
			}
		})
	}

	// A member with the permission spends (v2 and v1 tokens); the entry
	// names the member and no service.
	res, err := c.DeductCredits(as(w.v2(bob, orgA, "member", "spend")), deduct(orgA, "bob-1"))
	if err != nil {
		t.Fatal(err)
	}
	if res.GetBalance() != credits-5 || res.GetTransaction().GetClerkOrganizationId() != orgA ||
		res.GetTransaction().GetActorUserId() == "" || res.GetTransaction().GetService() != "" {
		t.Errorf("bob's spend: %v", res)
	}
	if _, err := c.DeductCredits(as(w.v1(ann, orgA, "org:admin", spendPerm)), deduct(orgA, "ann-1")); err != nil {
		t.Fatalf("ann (v1 token): %v", err)
	}

	// Ann, admin, caps Bob at 7 a day; he spent 5 today.
	capRes, err := c.SetMemberSpendingCap(as(w.v2(ann, orgA, "admin")), &userdv1.SetMemberSpendingCapRequest{
		ClerkOrganizationId: orgA, MemberClerkUserId: bob, Period: userdv1.UsagePeriod_USAGE_PERIOD_DAY, Cap: 7})
	if err != nil {
		t.Fatal(err)
	}
	if m := capRes.GetMember(); m.GetCap() != 7 || m.GetSpentThisPeriod() != 5 || m.GetRemainingThisPeriod() != 2 {
		t.Errorf("cap set: %v", m)
	}
	credits, rows = w.books(t, orgA)
	_, err = c.DeductCredits(as(w.v2(bob, orgA, "member", "spend")), deduct(orgA, "bob-2"))
	st := wantCode(t, err, codes.FailedPrecondition)
	if ei := errorInfo(st); ei.GetReason() != "MEMBER_CAP_REACHED" || ei.GetMetadata()["remaining"] != "2" || ei.GetMetadata()["cap"] != "7" {
		t.Errorf("over the cap: %v", st.Details())
	}
	if c2, n2 := w.books(t, orgA); c2 != credits || n2 != rows {
		t.Errorf("a spend over the cap changed the books")
	}

	// What Ann and Bob may read.
	acct, err := c.GetAccount(as(w.v2(bob, orgA, "member", "spend")), &userdv1.GetAccountRequest{ClerkOrganizationId: orgA})
	if err != nil {
		t.Fatal(err)
	}
	if acct.GetAccount().GetCredits() != credits || len(acct.GetAccount().GetMembers()) != 3 {
		t.Errorf("account as bob sees it: %v", acct)
	}
	ledger, err := c.ListCreditTransactions(as(w.v2(ann, orgA, "admin")), &userdv1.ListCreditTransactionsRequest{
		ClerkOrganizationId: orgA, MemberClerkUserId: bob})
	if err != nil {
		t.Fatal(err)
	}
	if txs := ledger.GetTransactions(); len(txs) != 1 || txs[0].GetIdempotencyKey() != "bob-1" || txs[0].GetActorClerkUserId() != bob {
		t.Errorf("bob's entries: %v", txs)
	}
	_, err = c.ListCreditTransactions(as(w.v2(dan, orgA, "member")), &userdv1.ListCreditTransactionsRequest{ClerkOrganizationId: orgA})
	wantCode(t, err, codes.PermissionDenied)

	// The change feed: Dan, a member of org B only, watching his own
	// events from the oldest sees org B's and nothing of org A's; a
	// sentinel on his personal account ends the read.
	if _, err := c.GrantCredits(context.Background(), &userdv1.GrantCreditsRequest{ClerkUserId: dan, Amount: 1, IdempotencyKey: "sentinel"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(as(w.v2(dan, orgB, "member", "spend")), time.Minute)
	defer cancel()
	stream, err := c.WatchUserEvents(ctx, &userdv1.WatchUserEventsRequest{ClerkUserId: "me", Start: userdv1.WatchStart_WATCH_START_OLDEST})
	if err != nil {
		t.Fatal(err)
	}
	sawB := false
	for {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("dan's watch: %v", err)
		}
		ev := msg.GetEvent()
		if ev == nil {
			continue
		}
		switch org := ev.GetClerkOrganizationId(); {
		case org == orgA:
			t.Errorf("dan, not a member of %s, saw its event %v", orgA, ev)
		case org == orgB:
			sawB = true
		case org == "" && ev.GetClerkUserId() != dan:
			t.Errorf("dan saw another user's event %v", ev)
		}
		if ev.GetCreditTransaction().GetIdempotencyKey() == "sentinel" {
			break
		}
	}
	if !sawB {
		t.Errorf("dan saw nothing of %s, which he is a member of", orgB)
	}
}

// TestOrganizationAuthorizationREST: the same rules over REST: a member
// spends (200), a non-member and a token naming another organization are
// 403, a spend beyond the member's cap is 402 with the cap in the details,
// and none of the refusals changes the books.
func TestOrganizationAuthorizationREST(t *testing.T) {
	t.Parallel()
	w := newOrgWorld(t)
	post := func(tok, path, key string, body any) (int, map[string]any) {
		t.Helper()
		raw, _ := json.Marshal(body)
		req, _ := http.NewRequest(http.MethodPost, w.in.HTTPURL+path, bytes.NewReader(raw))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Idempotency-Key", key)
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
	reason := func(out map[string]any) string {
		details, _ := out["details"].([]any)
		for _, d := range details {
			if m, ok := d.(map[string]any); ok && m["reason"] != nil {
				return fmt.Sprint(m["reason"])
			}
		}
		return ""
	}
	credits, rows := w.books(t, orgA)
	for _, r := range []struct {
		name, tok, org, reason string
	}{
		{"NonMember", w.v2(dan, orgA, "admin", "spend"), orgA, "NOT_ORGANIZATION_MEMBER"},
		{"OtherOrganizationActive", w.v2(bob, orgB, "member", "spend"), orgA, "ORGANIZATION_NOT_ACTIVE"},
		{"WithoutPermission", w.v1(cy, orgA, "org:member"), orgA, "MISSING_ORGANIZATION_PERMISSION"},
	} {
		code, out := post(r.tok, "/v1/organizations/"+r.org+"/credits:deduct", "rest-"+r.name, map[string]any{"amount": "3"})
		if code != http.StatusForbidden || reason(out) != r.reason {
			t.Errorf("%s: %d %v, want 403 %s", r.name, code, out, r.reason)
		}
	}
	if c2, n2 := w.books(t, orgA); c2 != credits || n2 != rows {
		t.Errorf("refusals changed the books")
	}
	code, out := post(w.v2(bob, orgA, "member", "spend"), "/v1/organizations/"+orgA+"/credits:deduct", "rest-bob-1", map[string]any{"amount": "3"})
	if code != http.StatusOK {
		t.Fatalf("bob's spend: %d %v", code, out)
	}
	if _, err := w.in.Client.SetMemberSpendingCap(context.Background(), &userdv1.SetMemberSpendingCapRequest{
		ClerkOrganizationId: orgA, MemberClerkUserId: bob, Period: userdv1.UsagePeriod_USAGE_PERIOD_MONTH, Cap: 4}); err != nil {
		t.Fatal(err)
	}
	credits, rows = w.books(t, orgA)
	code, out = post(w.v2(bob, orgA, "member", "spend"), "/v1/organizations/"+orgA+"/credits:deduct", "rest-bob-2", map[string]any{"amount": "3"})
	if code != http.StatusPaymentRequired || reason(out) != "MEMBER_CAP_REACHED" {
		t.Errorf("over the cap: %d %v, want 402 MEMBER_CAP_REACHED", code, out)
	}
	if c2, n2 := w.books(t, orgA); c2 != credits || n2 != rows {
		t.Errorf("the refused spend changed the books")
	}
}
