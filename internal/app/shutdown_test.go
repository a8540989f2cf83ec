package app_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/app"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/testdb"
)

// poolUsers are the code that uses the database pool: a goroutine with one
// of them on its stack is a request handler or a background task at work
// (or waiting for its next round).
var poolUsers = []string{
	"github.com/userd/userd/internal/store.",
	"github.com/userd/userd/internal/users.",
	"github.com/userd/userd/internal/feed.",
	"github.com/userd/userd/internal/clerksync.",
	"github.com/userd/userd/internal/grpcapi.",
	"github.com/userd/userd/internal/gateway.",
	"github.com/userd/userd/internal/clerkhook.",
	"github.com/userd/userd/internal/httpmw.",
	"github.com/userd/userd/internal/lifecycle.",
	"github.com/userd/userd/internal/app.(*App).monitorDatabase",
	"github.com/userd/userd/internal/app.(*App).ready",
}

// runningPoolUsers returns the stacks of the goroutines, other than the
// caller's, that run pool users. A goroutine that has just signalled its
// end may not have returned yet: the dump is taken again, for up to two
// seconds, until none is left.
func runningPoolUsers() []string {
	deadline := time.Now().Add(2 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		for {
			n := runtime.Stack(buf, true)
			if n < len(buf) {
				buf = buf[:n]
				break
			}
			buf = make([]byte, 2*len(buf))
		}
		var found []string
		for i, g := range strings.Split(string(buf), "\n\n") {
			if i == 0 {
				continue // the caller
			}
			for _, p := range poolUsers {
				if strings.Contains(g, p) {
					found = append(found, g)
					break
				}
			}
		}
		if len(found) == 0 || time.Now().After(deadline) {
			return found
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// records keeps every log record, for checks.
type records struct {
	mu   sync.Mutex
	logs bytes.Buffer
	text slog.Handler
}

func newRecords() *records {
	r := &records{}
	r.text = slog.NewTextHandler(&r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})
	return r
}

func (r *records) handler() slog.Handler { return lockedHandler{r: r, h: r.text} }

func (r *records) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logs.String()
}

type lockedHandler struct {
	r *records
	h slog.Handler
}

func (l lockedHandler) Enabled(ctx context.Context, lv slog.Level) bool { return l.h.Enabled(ctx, lv) }
func (l lockedHandler) Handle(ctx context.Context, rec slog.Record) error {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	return l.h.Handle(ctx, rec)
}
func (l lockedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return lockedHandler{r: l.r, h: l.h.WithAttrs(as)}
}
func (l lockedHandler) WithGroup(n string) slog.Handler {
	return lockedHandler{r: l.r, h: l.h.WithGroup(n)}
}

// outcomes counts what callers were told, by kind of call and answer.
type outcomes struct {
	mu sync.Mutex
	m  map[string]int
	ok atomic.Int64
}

func (o *outcomes) add(what string, ok bool) {
	if ok {
		o.ok.Add(1)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string]int{}
	}
	o.m[what]++
}

// TestShutdownUnderLoad stops userd while gRPC, REST and webhook calls run
// concurrently, one call and one webhook batch are stuck behind a row lock
// past the grace period, and the periodic Clerk sync is mid-run holding
// its lock's connection. When the pool closes, no background task and no
// handler may be running any more (the background group says so, and no
// goroutine is in code that uses the pool), and no caller may have been
// told anything but OK, UNAVAILABLE or CANCELED — in particular never
// INTERNAL from a closed pool — and every credit write answered OK is
// committed (the write batcher stops, and is waited for, before the pool
// closes).
func TestShutdownUnderLoad(t *testing.T) {
	// Not parallel: it looks for goroutines of pool users in the whole
	// process when the pool closes, and another test's App (the other
	// tests here run in parallel, after this one) would be taken for
	// this one's.
	// Clerk's Backend API, answering the sync's first call only once the
	// sync is cancelled.
	listing := make(chan struct{})
	var listingOnce sync.Once
	clerkAPI := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		listingOnce.Do(func() { close(listing) })
		<-r.Context().Done()
	}))
	t.Cleanup(clerkAPI.Close)

	cfg := apptest.Config(t)
	cfg.ShutdownGrace = 500 * time.Millisecond
	cfg.InitialCredits = 1_000_000
	// A call stuck behind the lock waits for the cut, not for a timeout.
	cfg.RequestTimeout, cfg.DBStatementTimeout, cfg.DBLockTimeout = time.Minute, time.Minute, time.Minute
	cfg.SecretKey, cfg.APIURL, cfg.SyncInterval = "sk_test_shutdown", clerkAPI.URL, time.Hour
	logs := newRecords()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	a, err := app.New(ctx, cfg, slog.New(logs.handler()))
	if err != nil {
		t.Fatal(err)
	}
	direct := testdb.Connect(t, cfg.Database.URL)

	// When the pool is about to close: what runs still. Then the lock
	// goes (on a shutdown that did not cut the stuck batch, the pool's
	// close would otherwise wait for the lock's timeout).
	var (
		atClose     []string
		atCloseRuns []string
		closing     = make(chan struct{})
		release     = make(chan struct{})
	)
	app.SetBeforePoolClose(a, func() {
		atCloseRuns = app.BackgroundRunning(a)
		atClose = runningPoolUsers()
		close(closing)
		<-release
	})
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(ctx) }()

	conn, err := grpc.NewClient(a.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := userdv1.NewUserServiceClient(conn)
	authed := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apptest.ServiceToken)
	}
	const workers = 6
	ids := []string{"user_locked"}
	for i := range workers {
		ids = append(ids, fmt.Sprintf("user_load_%d", i))
	}
	for _, id := range ids {
		if _, err := client.EnsureUser(authed(ctx), &userdv1.EnsureUserRequest{ClerkUserId: id}); err != nil {
			t.Fatal(err)
		}
	}

	// The locks: a deduction (the account's) and a webhook batch (the
	// user's, then the account's) for user_locked wait on them.
	lockTx, err := direct.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lockTx.Rollback(context.Background()) }()
	if _, err := lockTx.Exec(ctx, `SELECT 1 FROM users u JOIN accounts a ON a.id = u.id WHERE u.clerk_user_id = 'user_locked' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}

	var got outcomes
	grpcOutcome := func(method string, err error) {
		c := status.Code(err)
		got.add("grpc "+method+" "+c.String(), c == codes.OK)
	}
	httpClient := &http.Client{Transport: &http.Transport{}}
	defer httpClient.CloseIdleConnections()
	httpOutcome := func(what string, resp *http.Response, err error) {
		if err != nil {
			got.add(what+" transport error", false)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		got.add(fmt.Sprintf("%s %d", what, resp.StatusCode), resp.StatusCode == http.StatusOK)
	}
	webhook := func(ctx context.Context, id, msgID string) (*http.Response, error) {
		body := clerkhook.SampleEvent("user.updated", clerkhook.SampleUser{ID: id, FirstName: msgID, UpdatedAt: time.Now()})
		h, err := clerkhook.SignHeaders(apptest.WebhookSecret, msgID, time.Now(), body)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.WebhookAddr().String()+clerkhook.Path, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header = h
		return httpClient.Do(req)
	}

	var calls sync.WaitGroup
	callCtx, stopCalls := context.WithCancel(context.Background())
	defer stopCalls()
	calls.Go(func() {
		_, err := client.DeductCredits(authed(callCtx), &userdv1.DeductCreditsRequest{ClerkUserId: "user_locked", Amount: 1, IdempotencyKey: "stuck"})
		grpcOutcome("DeductCredits(stuck)", err)
	})
	calls.Go(func() {
		resp, err := webhook(callCtx, "user_locked", "msg_stuck")
		httpOutcome("webhook(stuck)", resp, err)
	})
	// Both wait on the lock before the load starts.
	waitFor(t, "two sessions waiting on the lock", func() bool {
		var n int
		err := direct.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return err == nil && n >= 2
	})
	select {
	case <-listing:
	case <-time.After(30 * time.Second):
		t.Fatal("the periodic Clerk sync never listed users")
	}

	// The keys of the credit writes answered OK: each must be committed.
	var acked ackedKeys
	var load atomic.Bool
	load.Store(true)
	for w := range workers {
		id := ids[1+w]
		calls.Go(func() {
			for i := 0; load.Load(); i++ {
				key := fmt.Sprintf("w%d-%d", w, i)
				switch i % 5 {
				case 0:
					_, err := client.GetUser(authed(callCtx), &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: id}})
					grpcOutcome("GetUser", err)
				case 1:
					_, err := client.GrantCredits(authed(callCtx), &userdv1.GrantCreditsRequest{ClerkUserId: id, Amount: 1, IdempotencyKey: key})
					grpcOutcome("GrantCredits", err)
					acked.add(key, err)
				case 2:
					_, err := client.DeductCredits(authed(callCtx), &userdv1.DeductCreditsRequest{ClerkUserId: id, Amount: 1, IdempotencyKey: key})
					grpcOutcome("DeductCredits", err)
					acked.add(key, err)
				case 3:
					req, _ := http.NewRequestWithContext(callCtx, http.MethodGet, "http://"+a.HTTPAddr().String()+"/v1/users/"+id, nil)
					req.Header.Set("Authorization", "Bearer "+apptest.ServiceToken)
					resp, err := httpClient.Do(req)
					httpOutcome("REST GetUser", resp, err)
				case 4:
					resp, err := webhook(callCtx, id, "msg_"+key)
					httpOutcome("webhook", resp, err)
				}
			}
		})
	}
	waitFor(t, "calls answered under load", func() bool { return got.ok.Load() >= 50 })

	stop() // SIGTERM
	select {
	case <-closing:
	case <-time.After(time.Minute):
		t.Fatal("the pool never closed")
	}
	// Calls go on while the pool closes (the listeners are closed by now).
	_ = lockTx.Rollback(context.Background())
	close(release)
	if err := <-runDone; err != nil {
		t.Errorf("Run: %v", err)
	}
	load.Store(false)
	stopCalls()
	calls.Wait()

	if len(atCloseRuns) > 0 {
		t.Errorf("background tasks running when the pool closed: %v", atCloseRuns)
	}
	for _, g := range atClose {
		t.Errorf("running when the pool closed:\n%s", g)
	}
	got.mu.Lock()
	defer got.mu.Unlock()
	for what, n := range got.m {
		t.Logf("%6d  %s", n, what)
		if !allowedOutcome(what) {
			t.Errorf("%d calls answered %s", n, what)
		}
	}
	for _, key := range acked.keys {
		var n int
		if err := direct.QueryRow(context.Background(), `SELECT count(*) FROM credit_transactions WHERE idempotency_key = $1`, key).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("credit write %s answered OK, %d ledger entries", key, n)
		}
	}
	t.Logf("%d credit writes answered OK, each committed", len(acked.keys))
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "closed pool") || strings.Contains(line, "internal error") {
			t.Errorf("logged: %s", line)
		}
	}
}

// ackedKeys are the idempotency keys of the writes answered OK.
type ackedKeys struct {
	mu   sync.Mutex
	keys []string
}

func (a *ackedKeys) add(key string, err error) {
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.keys = append(a.keys, key)
}

// allowedOutcome: success, or what tells a client to retry: UNAVAILABLE,
// CANCELED (499 over REST), 503, or a connection that closed or refused.
func allowedOutcome(what string) bool {
	for _, ok := range []string{" OK", " Unavailable", " Canceled", " 200", " 499", " 503", " transport error"} {
		if strings.HasSuffix(what, ok) {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
