package stripeapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/stripeapi"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/upstream"
)

// stripeMockPort is stripe-mock's port: in the stripe helper's range,
// below the kernel's ephemeral ports.
const stripeMockPort = 27111

// stripeMock starts Stripe's official mock server (stateless, answering
// from the OpenAPI spec of its release, and refusing requests whose
// parameters the spec does not have) on loopback. Without it the test
// skips, except under CI=true, where it fails: .ci/run installs it.
func stripeMock(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("stripe-mock")
	if err != nil {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		bin = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "stripe-mock")
		if _, err := os.Stat(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("stripe-mock is not installed: go install github.com/stripe/stripe-mock@v0.203.0 (.ci/run does)")
			}
			t.Skip("stripe-mock is not installed: go install github.com/stripe/stripe-mock@v0.203.0")
		}
	}
	addr := fmt.Sprintf("127.0.0.1:%d", stripeMockPort)
	cmd := exec.Command(bin, "-http-addr", addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return "http://" + addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock did not listen on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRequestShapes: every call userd makes is one stripe-mock accepts
// (known parameters; stripe-mock v0.203.0 serves the 2026-08-26.dahlia spec, so
// the version itself is not checked here) and
// its answer decodes into what billing reads.
func TestRequestShapes(t *testing.T) {
	url := stripeMock(t)
	c, err := stripeapi.New(stripeapi.Config{SecretKey: "sk_test_123", URL: url, Retry: upstream.Policy{Attempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cu, err := c.CreateCustomer(ctx, billing.NewCustomer{Email: "a@example.com", IdempotencyKey: "userd:customer:x",
		Metadata: map[string]string{billing.MetaAccountID: "0198c0de-0000-7000-8000-000000000001", billing.MetaClerkUserID: "user_1"}})
	if err != nil || !strings.HasPrefix(cu.ID, "cus_") {
		t.Fatalf("CreateCustomer = %+v, %v", cu, err)
	}
	if got, err := c.GetCustomer(ctx, cu.ID); err != nil || got.ID == "" {
		t.Errorf("GetCustomer = %+v, %v", got, err)
	}
	subs, err := c.ListSubscriptions(ctx, cu.ID)
	if err != nil || len(subs) == 0 {
		t.Fatalf("ListSubscriptions = %+v, %v", subs, err)
	}
	// stripe-mock's fixture is in the basil shape: the period on the item.
	if s := subs[0]; !strings.HasPrefix(s.ID, "sub_") || s.Status == "" || len(s.Items) == 0 || s.Items[0].PriceID == "" || s.Items[0].PeriodEnd.IsZero() {
		t.Errorf("subscription %+v lacks what billing reads", s)
	}
	lines, err := c.ListCheckoutLineItems(ctx, "cs_test_123")
	if err != nil || len(lines) == 0 || lines[0].PriceID == "" {
		t.Errorf("ListCheckoutLineItems = %+v, %v", lines, err)
	}
	n := 0
	if err := c.ListCustomers(ctx, func(billing.Customer) error { n++; return nil }); err != nil || n == 0 {
		t.Errorf("ListCustomers: %d customers, %v", n, err)
	}
	// GET /v1/events with types[] and created[gte]: stripe-mock accepts the
	// parameters and answers its fixture event (of its own spec's version,
	// so it reaches fn as an error naming that version, or translated).
	n = 0
	if err := c.ListEvents(ctx, time.Now().Add(-24*time.Hour), func(ev billing.Event, err error) error {
		n++
		if !strings.HasPrefix(ev.ID, "evt_") || ev.Type == "" {
			t.Errorf("listed event %+v, %v", ev, err)
		}
		return nil
	}); err != nil || n == 0 {
		t.Errorf("ListEvents: %d events, %v", n, err)
	}
}

// TestNotFoundIsNotRetried: Stripe's "no such object" (here from the
// stateful fake) is billing.ErrNotFound, answered at once.
func TestNotFoundIsNotRetried(t *testing.T) {
	fake := stripetest.New(t)
	waits := 0
	c, err := stripeapi.New(stripeapi.Config{SecretKey: "sk_test_123", URL: fake.Server.URL,
		Retry: upstream.Policy{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond}, OnRetry: func(upstream.Wait) { waits++ }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetCustomer(context.Background(), "cus_missing"); !errors.Is(err, billing.ErrNotFound) {
		t.Errorf("GetCustomer of a missing customer: %v, want billing.ErrNotFound", err)
	}
	if waits != 0 || fake.Requests.Load() != 1 {
		t.Errorf("%d retries, %d requests; want none and 1", waits, fake.Requests.Load())
	}
}

// TestListEventsPagesOldestFirst: ListEvents pages through Stripe's
// newest-first list with starting_after (here 250 events of the stateful
// fake, three pages), leaves out events before since, and hands them over
// oldest first.
func TestListEventsPagesOldestFirst(t *testing.T) {
	fake := stripetest.New(t)
	c, err := stripeapi.New(stripeapi.Config{SecretKey: "sk_test_123", URL: fake.Server.URL, Rate: 10000, Retry: upstream.Policy{Attempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Hour).Unix()
	for i := range 260 {
		fake.PutEvent(stripetest.EventJSON(fmt.Sprintf("evt_page_%03d", i), billing.EventInvoicePaymentFailed, base+int64(i),
			map[string]any{"id": fmt.Sprintf("in_page_%03d", i), "object": "invoice", "customer": "cus_page"}))
	}
	var got []string
	err = c.ListEvents(context.Background(), time.Unix(base+10, 0), func(ev billing.Event, err error) error {
		if err != nil {
			t.Errorf("event %s: %v", ev.ID, err)
		}
		got = append(got, ev.ID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 250 || got[0] != "evt_page_010" || got[249] != "evt_page_259" {
		t.Errorf("%d events, first %v, last %v; want 250 from evt_page_010 to evt_page_259", len(got), got[:min(1, len(got))], got[max(0, len(got)-1):])
	}
	if r := fake.Requests.Load(); r != 3 {
		t.Errorf("%d requests, want 3 pages", r)
	}
}

// TestListEventsRefusesALoopingListing: an upstream that answers every
// page with the same full page (starting_after ignored, has_more always
// true) would be paged forever; the listing fails once an event comes
// back, and hands nothing to be applied.
func TestListEventsRefusesALoopingListing(t *testing.T) {
	var page []json.RawMessage
	for i := range 100 {
		page = append(page, stripetest.EventJSON(fmt.Sprintf("evt_loop_%03d", i), billing.EventInvoicePaymentFailed, time.Now().Unix(),
			map[string]any{"id": fmt.Sprintf("in_loop_%03d", i), "object": "invoice", "customer": "cus_loop"}))
	}
	body, err := json.Marshal(map[string]any{"object": "list", "url": "/v1/events", "has_more": true, "data": page})
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	c, err := stripeapi.New(stripeapi.Config{SecretKey: "sk_test_123", URL: srv.URL, Rate: 10000, Retry: upstream.Policy{Attempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	applied := 0
	err = c.ListEvents(context.Background(), time.Now().Add(-time.Hour), func(billing.Event, error) error {
		applied++
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "loops") {
		t.Errorf("a looping listing: %v, want an error naming the loop", err)
	}
	if applied != 0 || requests.Load() != 2 {
		t.Errorf("%d events handed on after %d requests; want none after 2", applied, requests.Load())
	}
}
