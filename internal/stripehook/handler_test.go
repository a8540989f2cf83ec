package stripehook_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/httpmw"
	"github.com/userd/userd/internal/stripehook"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/users"
)

// subscriptionEvent makes an active PRO subscription for customer in the
// fake and an event about it.
func subscriptionEvent(e *env, customer, eventID string) []byte {
	sub := stripetest.Sub{ID: "sub_" + eventID, Customer: customer, Status: "active",
		Items: []stripetest.Item{{PriceID: pricePro, Quantity: 1, PeriodEnd: time.Now().AddDate(0, 1, 0)}}}
	e.fake.PutSub(sub)
	return stripetest.EventJSON(eventID, billing.EventSubscriptionCreated, time.Now().Unix(), stripetest.SubJSON(sub))
}

// TestRejections: forged, stale, replayed, wrong-secret, malformed and
// oversized deliveries are refused before anything is applied, each with
// its reason; then the genuine delivery applies.
func TestRejections(t *testing.T) {
	e := newEnv(t)
	cust := e.account("user_rejected")
	payload := subscriptionEvent(e, cust, "evt_rej")
	now := time.Now()
	huge := append(bytes.Clone(payload), bytes.Repeat([]byte(" "), httpmw.MaxBodyBytes)...)
	cases := []struct {
		name      string
		body      []byte
		signature string
		chunked   bool
		status    int
		reason    string
	}{
		{"NoSignature", payload, "", false, 400, "missing_headers"},
		{"NoTimestamp", payload, "v1=" + strings.Repeat("ab", 32), false, 400, "malformed_timestamp"},
		{"MalformedTimestamp", payload, "t=yesterday,v1=abcd", false, 400, "malformed_timestamp"},
		{"WrongSecret", payload, stripetest.Sign(payload, "whsec_not_the_secret", now), false, 401, "bad_signature"},
		{"Forged", payload, fmt.Sprintf("t=%d,v1=%s", now.Unix(), strings.Repeat("00", 32)), false, 401, "bad_signature"},
		{"TamperedBody", bytes.Replace(payload, []byte(pricePro), []byte(priceEnt), 1), stripetest.Sign(payload, secret, now), false, 401, "bad_signature"},
		{"OnlyV0Scheme", payload, strings.Replace(stripetest.Sign(payload, secret, now), "v1=", "v0=", 1), false, 401, "bad_signature"},
		{"Stale", payload, stripetest.Sign(payload, secret, now.Add(-6*time.Minute)), false, 400, "timestamp_out_of_tolerance"},
		{"FromTheFuture", payload, stripetest.Sign(payload, secret, now.Add(6*time.Minute)), false, 400, "timestamp_out_of_tolerance"},
		{"ReplayedDaysLater", payload, stripetest.Sign(payload, secret, now.Add(-72*time.Hour)), false, 400, "timestamp_out_of_tolerance"},
		{"ReplayWithFreshTimestamp", payload, strings.Replace(stripetest.Sign(payload, secret, now.Add(-72*time.Hour)),
			fmt.Sprintf("t=%d", now.Add(-72*time.Hour).Unix()), fmt.Sprintf("t=%d", now.Unix()), 1), false, 401, "bad_signature"},
		{"TooLargeDeclared", huge, stripetest.Sign(huge, secret, now), false, 413, "body_too_large"},
		{"TooLargeChunked", huge, stripetest.Sign(huge, secret, now), true, 413, "body_too_large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, e.srv.URL+stripehook.Path, bytes.NewReader(tc.body))
			if tc.signature != "" {
				req.Header.Set("Stripe-Signature", tc.signature)
			}
			if tc.chunked {
				req.ContentLength = -1
				req.Body = io.NopCloser(bytes.NewReader(tc.body))
			}
			code, out := do(t, req)
			if code != tc.status || out["error"] != tc.reason {
				t.Errorf("got %d %v, want %d %s", code, out, tc.status, tc.reason)
			}
		})
	}
	if a := e.accountOf("user_rejected"); a.Plan != users.PlanFree {
		t.Fatalf("a refused delivery changed the plan to %s", a.Plan)
	}
	// Signed with the previous secret (rotation): accepted.
	if code, out := e.post(payload, stripetest.Sign(payload, oldSecret, time.Now())); code != 200 || out["status"] != billing.OutcomeApplied {
		t.Fatalf("genuine delivery (old secret) after rejections: %d %v", code, out)
	}
	if a := e.accountOf("user_rejected"); a.Plan != users.PlanPro {
		t.Errorf("plan %s after the genuine delivery, want PRO", a.Plan)
	}
	// Replayed (the same event again, freshly signed): applied once.
	if code, out := e.deliver(payload); code != 200 || out["status"] != billing.OutcomeDuplicate {
		t.Errorf("redelivery: %d %v, want 200 duplicate", code, out)
	}
}

// TestAPIVersionMismatch: an event of another API version is refused with
// 400 naming both versions, logged once however often it comes, never
// acknowledged.
func TestAPIVersionMismatch(t *testing.T) {
	e := newEnv(t)
	var logs syncBuffer
	e.serveWithLog(e.billing, slog.New(slog.NewJSONHandler(&logs, nil)))
	cust := e.account("user_version")
	payload := subscriptionEvent(e, cust, "evt_ver")
	for _, v := range []string{"2024-06-20", "2025-10-29.clover", "2024-06-20"} {
		other := bytes.Replace(payload, []byte(stripehook.APIVersion), []byte(v), 1)
		code, out := e.deliver(other)
		if code != 400 || out["error"] != "api_version_mismatch" || out["expected"] != stripehook.APIVersion || out["received"] != v {
			t.Errorf("%s: %d %v, want 400 api_version_mismatch", v, code, out)
		}
	}
	if n := strings.Count(logs.String(), "another API version"); n != 2 {
		t.Errorf("%d log lines for 3 mismatched deliveries of 2 versions, want 2:\n%s", n, logs.String())
	}
	if a := e.accountOf("user_version"); a.Plan != users.PlanFree {
		t.Errorf("a refused version changed the plan to %s", a.Plan)
	}
	// Same train, another date: accepted (Stripe's compatibility rule).
	same := bytes.Replace(payload, []byte(stripehook.APIVersion), []byte("2025-03-31.basil"), 1)
	if code, out := e.deliver(same); code != 200 {
		t.Errorf("2025-03-31.basil: %d %v, want 200", code, out)
	}
}

// TestNoSecretRefusesEverything: without a secret every delivery is 503.
func TestNoSecretRefusesEverything(t *testing.T) {
	e := newEnv(t)
	h := stripehook.New(stripehook.Config{}, e.billing, slog.New(slog.DiscardHandler))
	payload := subscriptionEvent(e, e.account("user_nosecret"), "evt_nosecret")
	req, _ := http.NewRequest(http.MethodPost, "/webhooks/stripe", bytes.NewReader(payload))
	req.Header.Set("Stripe-Signature", stripetest.Sign(payload, secret, time.Now()))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "secret_not_configured") {
		t.Errorf("%d %s, want 503 secret_not_configured", rec.Code, rec.Body.String())
	}
}

// TestRejectionFloodIsSampled: 2,000 forged deliveries are all refused and
// counted; the log gets the burst and a summary, not 2,000 lines.
func TestRejectionFloodIsSampled(t *testing.T) {
	e := newEnv(t)
	var logs syncBuffer
	e.serveWithLog(e.billing, slog.New(slog.NewJSONHandler(&logs, nil)))
	payload := subscriptionEvent(e, e.account("user_flood"), "evt_flood")
	forged := fmt.Sprintf("t=%d,v1=%s", time.Now().Unix(), strings.Repeat("00", 32))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 250 {
				if code, _ := e.post(payload, forged); code != 401 {
					t.Errorf("forged delivery: %d", code)
					return
				}
			}
		})
	}
	wg.Wait()
	e.handler.Close()
	lines := strings.Count(logs.String(), "\n")
	if lines > 20 {
		t.Errorf("%d log lines for 2000 forged deliveries", lines)
	}
	if !strings.Contains(logs.String(), "not logged (rate limited)") || strings.Contains(logs.String(), "evt_flood") {
		t.Errorf("log lacks the summary or carries the body:\n%s", logs.String())
	}
	if a := e.accountOf("user_flood"); a.Plan != users.PlanFree {
		t.Errorf("forged deliveries changed the plan to %s", a.Plan)
	}
}

// TestUnlinkedCustomerIsRetried: an event of a customer no account claims
// is answered 422 (Stripe retries), and applies once a Checkout Session's
// completion links it, whatever the order.
func TestUnlinkedCustomerIsRetried(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, _, err := e.users.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_checkout"}); err != nil {
		t.Fatal(err)
	}
	// A customer made by Checkout, with no metadata.
	e.fake.PutCustomer(stripetest.Customer{ID: "cus_checkout1", Metadata: map[string]string{}})
	sub := stripetest.Sub{ID: "sub_checkout1", Customer: "cus_checkout1", Status: "active",
		Items: []stripetest.Item{{PriceID: priceEnt, Quantity: 1, PeriodEnd: time.Now().AddDate(0, 1, 0)}}}
	e.fake.PutSub(sub)
	inv := stripetest.EventJSON("evt_inv_first", billing.EventInvoicePaid, time.Now().Unix(),
		stripetest.InvoiceJSON("in_checkout1", sub, "subscription_create", false))
	if code, out := e.deliver(inv); code != 422 || out["error"] != "cannot_apply" {
		t.Fatalf("invoice of an unlinked customer: %d %v, want 422", code, out)
	}
	cs := stripetest.EventJSON("evt_cs", billing.EventCheckoutCompleted, time.Now().Unix(), map[string]any{
		"id": "cs_test_1", "object": "checkout.session", "mode": "subscription", "payment_status": "paid",
		"customer": "cus_checkout1", "client_reference_id": "user_checkout", "subscription": "sub_checkout1",
		"metadata": map[string]string{},
	})
	if code, out := e.deliver(cs); code != 200 {
		t.Fatalf("checkout.session.completed: %d %v", code, out)
	}
	if code, out := e.deliver(inv); code != 200 || out["status"] != billing.OutcomeApplied {
		t.Fatalf("invoice retried after linking: %d %v", code, out)
	}
	a := e.accountOf("user_checkout")
	if a.Plan != users.PlanEnterprise || a.Credits != initialCredits+entCredits {
		t.Errorf("account %s with %d credits, want ENTERPRISE with %d", a.Plan, a.Credits, initialCredits+entCredits)
	}
}

// TestCreditPackAndRefund: a paid one-time Checkout grants the packs once;
// a full refund takes them back down to zero, never below, once.
func TestCreditPackAndRefund(t *testing.T) {
	e := newEnv(t)
	cust := e.account("user_pack")
	e.fake.PutCheckoutLines("cs_pack", []stripetest.Item{{PriceID: pricePack, Quantity: 2}})
	cs := stripetest.EventJSON("evt_pack", billing.EventCheckoutCompleted, time.Now().Unix(), map[string]any{
		"id": "cs_pack", "object": "checkout.session", "mode": "payment", "payment_status": "paid",
		"customer": cust, "payment_intent": "pi_pack", "metadata": map[string]string{},
	})
	for range 2 {
		if code, out := e.deliver(cs); code != 200 {
			t.Fatalf("pack checkout: %d %v", code, out)
		}
	}
	if a := e.accountOf("user_pack"); a.Credits != initialCredits+2*packCredits {
		t.Fatalf("%d credits after the pack, want %d", a.Credits, initialCredits+2*packCredits)
	}
	// Spend most of it, then the refund takes what is left.
	if _, err := e.users.DeductCredits(context.Background(), users.CreditChange{ClerkUserID: "user_pack", Amount: 900, IdempotencyKey: "spend-1"}); err != nil {
		t.Fatal(err)
	}
	refund := func(id string) []byte {
		return stripetest.EventJSON(id, billing.EventChargeRefunded, time.Now().Unix(), map[string]any{
			"id": "ch_pack", "object": "charge", "customer": cust, "payment_intent": "pi_pack", "refunded": true,
		})
	}
	for _, id := range []string{"evt_refund", "evt_refund_again"} {
		if code, out := e.deliver(refund(id)); code != 200 {
			t.Fatalf("refund: %d %v", code, out)
		}
	}
	if a := e.accountOf("user_pack"); a.Credits != 0 {
		t.Errorf("%d credits after the refund, want 0 (never negative)", a.Credits)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
