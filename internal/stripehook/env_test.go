package stripehook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/stripeapi"
	"github.com/userd/userd/internal/stripehook"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/upstream"
	"github.com/userd/userd/internal/users"
)

const (
	secret    = "whsec_test_secret_one"
	oldSecret = "whsec_test_secret_old"
	pricePro  = "price_pro_monthly"
	priceEnt  = "price_enterprise_monthly"
	pricePack = "price_pack_500"
	// Allowances per paid period and the pack's credits.
	proCredits, entCredits, packCredits = 100, 1000, 500
	initialCredits                      = 10
)

// env is userd's Stripe billing over a fresh database, the fake Stripe API
// and the webhook endpoint on a loopback HTTP server.
type env struct {
	t       testing.TB
	users   *users.Service
	billing *billing.Service
	fake    *stripetest.Fake
	api     *stripeapi.Client
	st      *store.Store
	pool    *pgxpool.Pool
	srv     *httptest.Server
	handler *stripehook.Handler
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvWith(t, testdb.Pool(t), 5*time.Second, billing.Options{})
}

// newEnvWith is newEnv over pool, with the store's acquire timeout and
// billing's options.
func newEnvWith(t testing.TB, pool *pgxpool.Pool, acquireTimeout time.Duration, opts billing.Options) *env {
	t.Helper()
	st := store.New(pool, store.Options{AcquireTimeout: acquireTimeout})
	us := users.NewService(st, users.Options{InitialCredits: initialCredits})
	t.Cleanup(func() { _ = us.Stop(context.Background()) })
	fake := stripetest.New(t)
	api, err := stripeapi.New(stripeapi.Config{SecretKey: "sk_test_fake", URL: fake.Server.URL, Rate: 10000,
		Retry: upstream.Policy{Attempts: 2, Initial: time.Millisecond, Max: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	bs := billing.NewService(st.Billing(), api, us, opts)
	e := &env{t: t, users: us, billing: bs, fake: fake, api: api, st: st, pool: pool}
	e.mapPrices()
	e.serve(bs)
	return e
}

// serve (re)starts the endpoint over domain.
func (e *env) serve(domain stripehook.Domain) { e.serveWithLog(domain, slog.New(slog.DiscardHandler)) }

func (e *env) serveWithLog(domain stripehook.Domain, log *slog.Logger) {
	if e.srv != nil {
		e.srv.Close()
	}
	e.handler = stripehook.New(stripehook.Config{Secrets: []string{secret, oldSecret}}, domain, log)
	mux := http.NewServeMux()
	mux.Handle("POST "+stripehook.Path, e.handler)
	e.srv = httptest.NewServer(mux)
	e.t.Cleanup(e.srv.Close)
}

func (e *env) mapPrices() {
	ctx := context.Background()
	for _, p := range []billing.Price{
		{PriceID: pricePro, Kind: billing.KindPlan, Plan: users.PlanPro, Credits: proCredits},
		{PriceID: priceEnt, Kind: billing.KindPlan, Plan: users.PlanEnterprise, Credits: entCredits},
		{PriceID: pricePack, Kind: billing.KindPack, Credits: packCredits},
	} {
		if _, err := e.billing.SetPrice(ctx, p, "service:test"); err != nil {
			e.t.Fatal(err)
		}
	}
}

// account makes a user and its Stripe customer (through the fake API).
func (e *env) account(clerkUserID string) (customerID string) {
	e.t.Helper()
	ctx := context.Background()
	if _, _, err := e.users.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: clerkUserID}); err != nil {
		e.t.Fatal(err)
	}
	id, _, err := e.billing.EnsureCustomer(ctx, billing.EnsureCustomerInput{Ref: users.AccountRef{ClerkUserID: clerkUserID}})
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) accountOf(clerkUserID string) users.Account {
	e.t.Helper()
	a, err := e.users.GetAccount(context.Background(), users.AccountRef{ClerkUserID: clerkUserID})
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

// deliver posts a payload signed now with secret and returns the status
// and the answer.
func (e *env) deliver(payload []byte) (int, map[string]string) {
	return e.post(payload, stripetest.Sign(payload, secret, time.Now()))
}

func (e *env) post(payload []byte, signature string) (int, map[string]string) {
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+stripehook.Path, bytes.NewReader(payload))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if signature != "" {
		req.Header.Set("Stripe-Signature", signature)
	}
	return do(e.t, req)
}

func do(t testing.TB, req *http.Request) (int, map[string]string) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]string{}
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

// outcome is what applying an event recorded (stripe_events.outcome), ""
// for an event never applied.
func (e *env) outcome(eventID string) string {
	e.t.Helper()
	var out string
	err := e.pool.QueryRow(context.Background(), "SELECT coalesce((SELECT outcome FROM stripe_events WHERE event_id = $1), '')", eventID).Scan(&out)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}
