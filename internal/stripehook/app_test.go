package stripehook_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/stripehook"
	"github.com/userd/userd/internal/stripetest"
)

// TestServedByUserd: a real userd serves POST /webhooks/stripe beside
// Clerk's endpoint, and the billing RPCs over gRPC: a service maps a
// price and gets the account's customer (created through the Stripe API),
// and a signed subscription event moves the account to the mapped plan.
func TestServedByUserd(t *testing.T) {
	fake := stripetest.New(t)
	in := apptest.Start(t, func(c *config.Serve) {
		c.StripeWebhookSecrets = secret
		c.StripeSecretKey = "sk_test_userd"
		c.StripeAPIURL = fake.Server.URL
	})
	ctx := context.Background()
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_e2e"}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Client.SetStripePrice(ctx, &userdv1.SetStripePriceRequest{PriceId: pricePro,
		Kind: userdv1.StripePriceKind_STRIPE_PRICE_KIND_PLAN, Plan: userdv1.Plan_PLAN_PRO, Credits: proCredits}); err != nil {
		t.Fatal(err)
	}
	_, err := in.Client.SetStripePrice(ctx, &userdv1.SetStripePriceRequest{PriceId: "price_bad", Kind: userdv1.StripePriceKind_STRIPE_PRICE_KIND_PACK})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("a pack of 0 credits: %v, want INVALID_ARGUMENT", err)
	}
	cust, err := in.Client.EnsureBillingCustomer(ctx, &userdv1.EnsureBillingCustomerRequest{ClerkUserId: "user_e2e"})
	if err != nil || !cust.GetCreated() || !strings.HasPrefix(cust.GetCustomerId(), "cus_") {
		t.Fatalf("EnsureBillingCustomer = %v, %v", cust, err)
	}
	if again, err := in.Client.EnsureBillingCustomer(ctx, &userdv1.EnsureBillingCustomerRequest{ClerkUserId: "user_e2e"}); err != nil ||
		again.GetCustomerId() != cust.GetCustomerId() || again.GetCreated() {
		t.Errorf("second EnsureBillingCustomer = %v, %v; want the same customer, not created", again, err)
	}
	sub := stripetest.Sub{ID: "sub_e2e", Customer: cust.GetCustomerId(), Status: "active",
		Items: []stripetest.Item{{PriceID: pricePro, Quantity: 1, PeriodEnd: time.Now().AddDate(0, 1, 0)}}}
	fake.PutSub(sub)
	payload := stripetest.EventJSON("evt_e2e", billing.EventSubscriptionCreated, time.Now().Unix(), stripetest.SubJSON(sub))
	url := strings.TrimSuffix(in.WebhookURL, "/webhooks/clerk") + stripehook.Path
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(payload))
	req.Header.Set("Stripe-Signature", stripetest.Sign(payload, secret, time.Now()))
	if code, out := do(t, req); code != 200 || out["status"] != billing.OutcomeApplied {
		t.Fatalf("delivery: %d %v", code, out)
	}
	u, err := in.Client.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_e2e"}})
	if err != nil || u.GetUser().GetPlan() != userdv1.Plan_PLAN_PRO {
		t.Errorf("user after the delivery: %v, %v; want PRO", u, err)
	}
}
