package userdclient_test

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/userdclient"
)

func dial(t *testing.T, in *apptest.Instance, opts ...userdclient.Option) *userdclient.Client {
	t.Helper()
	c, err := userdclient.New(in.App.GRPCAddr().String(), append([]userdclient.Option{userdclient.WithInsecure()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestServiceCalls(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	c := dial(t, in, userdclient.WithToken(apptest.ServiceToken))
	ctx := context.Background()

	ens, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_gc", Email: "Grace+ops@example.com"})
	if err != nil || !ens.GetCreated() {
		t.Fatalf("EnsureUser: %v, %v", ens, err)
	}
	id := ens.GetUser().GetId()
	for name, get := range map[string]func() (*userdv1.User, error){
		"ClerkID": func() (*userdv1.User, error) { return c.GetUserByClerkID(ctx, "user_gc") },
		"ID":      func() (*userdv1.User, error) { return c.GetUserByID(ctx, id) },
		"Email":   func() (*userdv1.User, error) { return c.GetUserByEmail(ctx, "grace+OPS@example.com") },
	} {
		if u, err := get(); err != nil || u.GetId() != id {
			t.Errorf("GetUserBy%s: %v, %v", name, u, err)
		}
	}
	u, _ := c.GetUserByClerkID(ctx, "user_gc")
	if !userdclient.HasCredits(u, 10) || userdclient.HasCredits(u, 11) || userdclient.IsProOrHigher(u) {
		t.Errorf("new user %v: HasCredits(10) and not HasCredits(11), not pro", u)
	}

	deduct := &userdv1.DeductCreditsRequest{ClerkUserId: "user_gc", Amount: 4, IdempotencyKey: "job-1"}
	first, err := c.DeductCredits(ctx, deduct)
	if err != nil || first.GetBalance() != 6 {
		t.Fatalf("DeductCredits: %v, %v", first, err)
	}
	again, err := c.DeductCredits(ctx, deduct)
	if err != nil || again.GetTransaction().GetId() != first.GetTransaction().GetId() {
		t.Errorf("replay: %v, %v", again, err)
	}
	if first.GetReplayed() || !again.GetReplayed() {
		t.Errorf("replayed: first call %v, the same key again %v; want false, true", first.GetReplayed(), again.GetReplayed())
	}
	_, err = c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_gc", Amount: 5, IdempotencyKey: "job-1"})
	if !userdclient.IsKeyReused(err) || userdclient.IsNotFound(err) {
		t.Errorf("key reused with another amount: %v", err)
	}
	_, err = c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_gc", Amount: 100, IdempotencyKey: "job-2"})
	if required, available, ok := userdclient.IsInsufficientCredits(err); !ok || required != 100 || available != 6 {
		t.Errorf("IsInsufficientCredits(%v) = %d, %d, %v; want 100, 6, true", err, required, available, ok)
	}
	if _, _, ok := userdclient.IsInsufficientCredits(nil); ok {
		t.Error("IsInsufficientCredits(nil) is true")
	}

	// No key: the client makes one and writes it into the request.
	grant := &userdv1.GrantCreditsRequest{ClerkUserId: "user_gc", Amount: 20}
	if res, err := c.GrantCredits(ctx, grant); err != nil || res.GetTransaction().GetIdempotencyKey() != grant.GetIdempotencyKey() || grant.GetIdempotencyKey() == "" {
		t.Errorf("GrantCredits without a key: %v, %v (key %q)", res, err, grant.GetIdempotencyKey())
	}
	if _, err := c.SetPlan(ctx, &userdv1.SetPlanRequest{ClerkUserId: "user_gc", Plan: userdv1.Plan_PLAN_ENTERPRISE, IdempotencyKey: "p1"}); err != nil {
		t.Fatal(err)
	}
	u, _ = c.GetUserByClerkID(ctx, "user_gc")
	if !userdclient.IsProOrHigher(u) || !userdclient.HasCredits(u, 26) {
		t.Errorf("after the upgrade: %v", u)
	}

	var kinds []string
	for tx, err := range c.Transactions(ctx, "user_gc", 1) {
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, tx.GetKind().String())
	}
	if want := "TRANSACTION_KIND_GRANT TRANSACTION_KIND_DEDUCT TRANSACTION_KIND_INITIAL"; strings.Join(kinds, " ") != want {
		t.Errorf("ledger %v, want %s", kinds, want)
	}

	if _, err := c.GetUserByClerkID(ctx, "user_nobody"); !userdclient.IsNotFound(err) {
		t.Errorf("unknown user: %v", err)
	}
	_, err = c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_gc", Amount: -1, IdempotencyKey: "bad"})
	if v := userdclient.FieldViolations(err); !userdclient.IsInvalidArgument(err) || len(v) != 1 || v[0].Field != "amount" {
		t.Errorf("negative amount: %v, violations %v", err, v)
	}

	anonymous := dial(t, in)
	if _, err := anonymous.GetUserByClerkID(ctx, "user_gc"); !userdclient.IsUnauthenticated(err) {
		t.Errorf("no token: %v", err)
	}
}

func TestEndUserToken(t *testing.T) {
	t.Parallel()
	fake := clerktest.New(t)
	fake.SetUser(clerkhook.SampleUser{ID: "user_eve", Email: "eve@example.com", UpdatedAt: time.Now()})
	in := apptest.Start(t, func(c *config.Serve) {
		c.JWKSURL, c.Issuer, c.AuthorizedParties = fake.JWKSURL(), fake.Issuer(), clerktest.Party
		c.SecretKey, c.APIURL = clerktest.SecretKey, fake.APIURL()
	})
	c := dial(t, in, userdclient.WithToken(fake.UserToken("user_eve")))
	ctx := context.Background()
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "me"}); err != nil {
		t.Fatal(err)
	}
	if u, err := c.GetUserByClerkID(ctx, "me"); err != nil || u.GetEmail() != "eve@example.com" {
		t.Errorf("me: %v, %v", u, err)
	}
	if _, err := c.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: "me", Amount: 5}); !userdclient.IsPermissionDenied(err) {
		t.Errorf("an end user granting itself credits: %v", err)
	}
}

// attempts records what each attempt of a call carried.
type attempts struct {
	mu    sync.Mutex
	keys  []string
	codes []string
	left  []time.Duration
}

func (a *attempts) interceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	a.mu.Lock()
	defer a.mu.Unlock()
	if k, ok := req.(interface{ GetIdempotencyKey() string }); ok {
		a.keys = append(a.keys, k.GetIdempotencyKey())
	}
	a.codes = append(a.codes, status.Code(err).String())
	if d, ok := ctx.Deadline(); ok {
		a.left = append(a.left, time.Until(d))
	} else {
		a.left = append(a.left, -1)
	}
	return err
}

// TestOwnRetryIsNotAReplay: when the client made the key, a replay can
// only be its own retry of an attempt that was applied but whose answer was
// lost, so the caller is told the change was applied (replayed false); with
// the caller's own key, the same sequence reports the replay.
func TestOwnRetryIsNotAReplay(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	// Per attempt (inside the client's retries): the first attempt reaches
	// userd, which applies it, and its answer is then lost.
	var (
		mu    sync.Mutex
		calls int
	)
	loseFirstAnswer := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		mu.Lock()
		defer mu.Unlock()
		if calls++; calls == 1 && err == nil {
			return status.Error(codes.Unavailable, "answer lost")
		}
		return err
	}
	reset := func() {
		mu.Lock()
		calls = 0
		mu.Unlock()
	}
	c := dial(t, in, userdclient.WithToken(apptest.ServiceToken),
		userdclient.WithDialOptions(grpc.WithChainUnaryInterceptor(loseFirstAnswer)))
	ctx := context.Background()
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_lost"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func() (bool, error)
		want bool
	}{
		{"DeductClientKey", func() (bool, error) {
			r, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_lost", Amount: 1})
			return r.GetReplayed(), err
		}, false},
		{"GrantClientKey", func() (bool, error) {
			r, err := c.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: "user_lost", Amount: 1})
			return r.GetReplayed(), err
		}, false},
		{"SetPlanClientKey", func() (bool, error) {
			r, err := c.SetPlan(ctx, &userdv1.SetPlanRequest{ClerkUserId: "user_lost", Plan: userdv1.Plan_PLAN_PRO})
			return r.GetReplayed(), err
		}, false},
		{"DeductCallerKey", func() (bool, error) {
			r, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_lost", Amount: 1, IdempotencyKey: "mine-1"})
			return r.GetReplayed(), err
		}, true},
	} {
		reset()
		got, err := tc.call()
		if err != nil || got != tc.want {
			t.Errorf("%s: replayed %v, err %v; want %v, nil", tc.name, got, err, tc.want)
		}
		mu.Lock()
		if calls != 2 {
			t.Errorf("%s: %d attempts, want 2 (the lost answer, then the retry)", tc.name, calls)
		}
		mu.Unlock()
	}
}

// TestRetriesReuseTheKey: a deduction sent while the database is down is
// retried until it is back, with the same idempotency key, and charged once.
func TestRetriesReuseTheKey(t *testing.T) {
	t.Parallel()
	in, proxy := apptest.StartBehindProxy(t, nil)
	var seen attempts
	c := dial(t, in, userdclient.WithToken(apptest.ServiceToken), userdclient.WithRetries(30),
		userdclient.WithTimeout(time.Minute), userdclient.WithDialOptions(grpc.WithChainUnaryInterceptor(seen.interceptor)))
	ctx := context.Background()
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_rt"}); err != nil {
		t.Fatal(err)
	}
	seen = attempts{}

	proxy.Cut()
	restored := make(chan struct{})
	go func() {
		defer close(restored)
		// Until two attempts have failed: the client retried during
		// the outage.
		testwait.For(time.Minute, func() bool {
			seen.mu.Lock()
			defer seen.mu.Unlock()
			return len(seen.codes) >= 2
		})
		proxy.Restore()
	}()
	req := &userdv1.DeductCreditsRequest{ClerkUserId: "user_rt", Amount: 3}
	res, err := c.DeductCredits(ctx, req)
	<-restored
	if err != nil || res.GetBalance() != 7 {
		t.Fatalf("DeductCredits across the outage: %v, %v (attempts %v)", res, err, seen.codes)
	}
	if len(seen.codes) < 2 || seen.codes[0] != "Unavailable" {
		t.Errorf("attempts %v, want UNAVAILABLE then a retry", seen.codes)
	}
	for _, k := range seen.keys {
		if k != req.GetIdempotencyKey() || k == "" {
			t.Errorf("attempt keys %v, want all %q", seen.keys, req.GetIdempotencyKey())
			break
		}
	}
	deducts := 0
	for tx, err := range c.Transactions(ctx, "user_rt", 0) {
		if err != nil {
			t.Fatal(err)
		}
		if tx.GetKind() == userdv1.TransactionKind_TRANSACTION_KIND_DEDUCT {
			deducts++
		}
	}
	if deducts != 1 {
		t.Errorf("%d deductions in the ledger, want 1", deducts)
	}
}

// TestDefaultDeadline: a call without a deadline gets the client's; a
// caller's own deadline is kept.
func TestDefaultDeadline(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	var seen attempts
	c := dial(t, in, userdclient.WithToken(apptest.ServiceToken), userdclient.WithTimeout(1500*time.Millisecond),
		userdclient.WithDialOptions(grpc.WithChainUnaryInterceptor(seen.interceptor)))
	_, _ = c.GetUserByClerkID(context.Background(), "user_x")
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	_, _ = c.GetUserByClerkID(ctx, "user_x")
	if len(seen.left) != 2 || seen.left[0] <= 0 || seen.left[0] > 1500*time.Millisecond || seen.left[1] < 59*time.Minute {
		t.Errorf("time left per call %v, want ≤1.5s then about an hour", seen.left)
	}
}

// TestImportsNothingOfTheServer: a service importing the client builds
// gRPC and the generated stubs, not the database driver, the embedded
// PostgreSQL, the fault proxy or the telemetry exporters of the server.
func TestImportsNothingOfTheServer(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "github.com/userd/userd/userdclient").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	allowedOwn := map[string]bool{
		"github.com/userd/userd/userdclient":     true,
		"github.com/userd/userd/gen/userd/v1":    true,
		"github.com/userd/userd/internal/apperr": true,
	}
	forbidden := []string{
		"github.com/jackc/", "github.com/fergusstrange/embedded-postgres", "github.com/Shopify/toxiproxy",
		"go.opentelemetry.io/otel/exporters", "go.opentelemetry.io/otel/sdk", "github.com/prometheus/",
		"github.com/pressly/goose", "github.com/svix/", "github.com/golang-jwt/",
	}
	deps := strings.Fields(string(out))
	for _, pkg := range deps {
		if strings.HasPrefix(pkg, "github.com/userd/userd/") && !allowedOwn[pkg] {
			t.Errorf("the client imports the server's %s", pkg)
		}
		for _, f := range forbidden {
			if strings.HasPrefix(pkg, f) {
				t.Errorf("the client imports %s", pkg)
			}
		}
	}
	if len(deps) < 10 {
		t.Errorf("go list -deps printed %d packages: %q", len(deps), out)
	}
}

func TestPricesAndUsage(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	c := dial(t, in, userdclient.WithToken(apptest.ServiceToken))
	ctx := context.Background()
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_pu"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*userdv1.SetPriceRequest{{Action: "render", Credits: 2}, {Action: "export", Credits: 5}, {Action: "render", Credits: 3}} {
		if _, err := c.SetPrice(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	var prices []string
	for p, err := range c.Prices(ctx, 1) {
		if err != nil {
			t.Fatal(err)
		}
		prices = append(prices, p.GetAction()+"="+strconv.FormatInt(p.GetCredits(), 10))
	}
	if got := strings.Join(prices, " "); got != "export=5 render=3" {
		t.Errorf("Prices = %s", got)
	}
	var history []string
	for ch, err := range c.PriceChanges(ctx, "render", 1) {
		if err != nil {
			t.Fatal(err)
		}
		history = append(history, fmt.Sprintf("%d->%d by %s", ch.GetPreviousCredits(), ch.GetCredits(), ch.GetChangedBy()))
	}
	if got := strings.Join(history, ", "); got != "2->3 by service:tests, 0->2 by service:tests" {
		t.Errorf("PriceChanges(render) = %s", got)
	}

	// A deduction by action without a key: the client makes one, and the
	// same request sent again is charged once.
	deduct := &userdv1.DeductCreditsRequest{ClerkUserId: "user_pu", Action: "render"}
	first, err := c.DeductCredits(ctx, deduct)
	if err != nil || first.GetBalance() != 7 || deduct.GetIdempotencyKey() == "" {
		t.Fatalf("DeductCredits(render) = %v, %v (key %q)", first, err, deduct.GetIdempotencyKey())
	}
	if again, err := c.DeductCredits(ctx, deduct); err != nil || again.GetTransaction().GetId() != first.GetTransaction().GetId() {
		t.Errorf("replay: %v, %v", again, err)
	}
	_, err = c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_pu", Action: "paint"})
	if !userdclient.IsUnknownAction(err) || !userdclient.IsInvalidArgument(err) {
		t.Errorf("unknown action: %v", err)
	}
	_, err = c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_pu", Amount: 1})
	if userdclient.IsUnknownAction(err) || err != nil {
		t.Errorf("deduction by amount: %v", err)
	}
	if aff, err := c.CanAfford(ctx, &userdv1.CanAffordRequest{ClerkUserId: "user_pu", Action: "export"}); err != nil || !aff.GetAllowed() || aff.GetRequired() != 5 || aff.GetAvailable() != 6 {
		t.Errorf("CanAfford(export) = %v, %v", aff, err)
	}
	sum, err := c.GetUsageSummary(ctx, &userdv1.GetUsageSummaryRequest{
		ClerkUserId: "user_pu", StartTime: timestamppb.New(time.Now().Add(-time.Hour)), GroupBy: userdv1.UsagePeriod_USAGE_PERIOD_DAY,
	})
	if err != nil || sum.GetSpent() != 4 || sum.GetGranted() != 10 || sum.GetBalance() != 6 || len(sum.GetPeriods()) == 0 {
		t.Errorf("GetUsageSummary = %v, %v", sum, err)
	}
}
