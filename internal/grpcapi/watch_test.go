package grpcapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/testdb"
)

// watcher reads a WatchUserEvents stream in the background.
type watcher struct {
	items  chan *userdv1.WatchUserEventsResponse
	done   chan error
	cancel context.CancelFunc
}

func watchEvents(t *testing.T, c userdv1.UserServiceClient, req *userdv1.WatchUserEventsRequest) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := c.WatchUserEvents(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{items: make(chan *userdv1.WatchUserEventsResponse, 1000), done: make(chan error, 1), cancel: cancel}
	go func() {
		for {
			item, err := stream.Recv()
			if err != nil {
				w.done <- err
				return
			}
			w.items <- item
		}
	}()
	return w
}

// heartbeat waits for the next heartbeat and returns its cursor.
func (w *watcher) heartbeat(t *testing.T) string {
	t.Helper()
	for {
		select {
		case item := <-w.items:
			if hb := item.GetHeartbeat(); hb != nil {
				return hb.GetCursor()
			}
		case err := <-w.done:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(time.Minute):
			t.Fatal("no heartbeat within a minute")
		}
	}
}

// events waits for n events, skipping heartbeats.
func (w *watcher) events(t *testing.T, n int) []*userdv1.UserEvent {
	t.Helper()
	var out []*userdv1.UserEvent
	for len(out) < n {
		select {
		case item := <-w.items:
			if ev := item.GetEvent(); ev != nil {
				out = append(out, ev)
			}
		case err := <-w.done:
			t.Fatalf("stream ended after %d of %d events: %v", len(out), n, err)
		case <-time.After(time.Minute):
			t.Fatalf("%d of %d events within a minute", len(out), n)
		}
	}
	return out
}

// end waits for the stream to end and returns its error.
func (w *watcher) end(t *testing.T) error {
	t.Helper()
	select {
	case err := <-w.done:
		return err
	case <-time.After(time.Minute):
		t.Fatal("the stream did not end within a minute")
	}
	return nil
}

func describe(ev *userdv1.UserEvent) string {
	s := fmt.Sprintf("%s %s", ev.GetKind(), ev.GetClerkUserId())
	switch c := ev.GetChange().(type) {
	case *userdv1.UserEvent_User:
		s += fmt.Sprintf(" %s %q %s credits=%d", c.User.GetEmail(), c.User.GetFirstName(), c.User.GetPlan(), c.User.GetCredits())
	case *userdv1.UserEvent_PlanChange:
		s += fmt.Sprintf(" %s->%s bonus=%d bonus_tx=%v key=%s", c.PlanChange.GetPreviousPlan(), c.PlanChange.GetPlan(),
			c.PlanChange.GetBonusCredits(), c.PlanChange.GetBonusTransactionId() != 0, c.PlanChange.GetIdempotencyKey())
	case *userdv1.UserEvent_CreditTransaction:
		s += fmt.Sprintf(" %s %+d =%d %q key=%s", c.CreditTransaction.GetKind(), c.CreditTransaction.GetDelta(),
			c.CreditTransaction.GetBalanceAfter(), c.CreditTransaction.GetReason(), c.CreditTransaction.GetIdempotencyKey())
	}
	return s
}

// TestWatchUserEvents: a service watching from now gets every change as
// it commits, with its details, and a heartbeat first; filters by user
// and kind apply; replays add nothing.
func TestWatchUserEvents(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	c := in.Client
	ctx := context.Background()
	all := watchEvents(t, c, &userdv1.WatchUserEventsRequest{})
	start := all.heartbeat(t)
	plans := watchEvents(t, c, &userdv1.WatchUserEventsRequest{Kinds: []userdv1.UserEventKind{userdv1.UserEventKind_USER_EVENT_KIND_PLAN_CHANGED}})
	plans.heartbeat(t)

	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_w", Email: "w@example.com", FirstName: "W"}); err != nil {
		t.Fatal(err)
	}
	deduct := &userdv1.DeductCreditsRequest{ClerkUserId: "user_w", Amount: 4, IdempotencyKey: "d1", Reason: "job"}
	for range 2 { // the second is a replay
		if _, err := c.DeductCredits(ctx, deduct); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.SetPlan(ctx, &userdv1.SetPlanRequest{ClerkUserId: "user_w", Plan: userdv1.Plan_PLAN_PRO, BonusCredits: 50, IdempotencyKey: "p1"}); err != nil {
		t.Fatal(err)
	}
	evs := all.events(t, 5)
	want := []string{
		`USER_EVENT_KIND_USER_CREATED user_w w@example.com "W" PLAN_FREE credits=10`,
		`USER_EVENT_KIND_CREDITS_CHANGED user_w TRANSACTION_KIND_INITIAL +10 =10 "" key=`,
		`USER_EVENT_KIND_CREDITS_CHANGED user_w TRANSACTION_KIND_DEDUCT -4 =6 "job" key=d1`,
		`USER_EVENT_KIND_CREDITS_CHANGED user_w TRANSACTION_KIND_PLAN_BONUS +50 =56 "" key=p1`,
		`USER_EVENT_KIND_PLAN_CHANGED user_w PLAN_FREE->PLAN_PRO bonus=50 bonus_tx=true key=p1`,
	}
	for i, ev := range evs {
		if got := describe(ev); got != want[i] {
			t.Errorf("event %d: %s, want %s", i, got, want[i])
		}
		if ev.GetId() == 0 || ev.GetCursor() == "" || ev.GetUserId() == "" || ev.GetCreateTime() == nil {
			t.Errorf("event %d lacks id, cursor, user id or time: %v", i, ev)
		}
	}
	if got := describe(plans.events(t, 1)[0]); got != want[4] {
		t.Errorf("plan watch: %s", got)
	}

	// One user's watch, resumed from the first cursor: the same events,
	// in the same order, with the same ids.
	again := watchEvents(t, c, &userdv1.WatchUserEventsRequest{Cursor: start, ClerkUserId: "user_w"})
	for i, ev := range again.events(t, 5) {
		if ev.GetId() != evs[i].GetId() || ev.GetCursor() != evs[i].GetCursor() {
			t.Errorf("resumed event %d: id %d, want %d", i, ev.GetId(), evs[i].GetId())
		}
	}
	select {
	case item := <-all.items:
		if item.GetEvent() != nil {
			t.Errorf("an extra event: %s", describe(item.GetEvent()))
		}
	case <-time.After(200 * time.Millisecond):
	}
}

// TestWatchBadRequests: invalid cursors, starts and kinds are
// INVALID_ARGUMENT naming the field; "me" needs an end user.
func TestWatchBadRequests(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	cursor := feed.LegacyCursor(feed.Position{Xid: 1, ID: 1})
	for _, tc := range []struct {
		req   *userdv1.WatchUserEventsRequest
		field string
	}{
		{&userdv1.WatchUserEventsRequest{Cursor: "bm90LWEtY3Vyc29y"}, "cursor"},
		{&userdv1.WatchUserEventsRequest{Cursor: cursor, Start: userdv1.WatchStart_WATCH_START_OLDEST}, "start"},
		{&userdv1.WatchUserEventsRequest{Start: 42}, "start"},
		{&userdv1.WatchUserEventsRequest{Kinds: []userdv1.UserEventKind{userdv1.UserEventKind_USER_EVENT_KIND_UNSPECIFIED}}, "kinds"},
		{&userdv1.WatchUserEventsRequest{ClerkUserId: "nobody@example.com"}, "clerk_user_id"},
		{&userdv1.WatchUserEventsRequest{ClerkUserId: "me"}, "clerk_user_id"},
	} {
		err := watchEvents(t, in.Client, tc.req).end(t)
		st := wantCode(t, err, codes.InvalidArgument)
		if f := fieldViolations(st); len(f) == 0 || f[0] != tc.field {
			t.Errorf("%v: field violations %v, want %s", tc.req, f, tc.field)
		}
	}
}

// TestWatchResumesOnAnyReplicaAndAfterRestart: a cursor from one userd
// resumes on another over the same database, and after every userd was
// stopped while changes went on.
func TestWatchResumesOnAnyReplicaAndAfterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and restarts replicas: not in -short (make test-fast)")
	}
	t.Parallel()
	url := testdb.URL(t)
	sameDB := func(c *config.Serve) { c.Database.URL = url }
	grant := func(t *testing.T, c userdv1.UserServiceClient, key string) {
		t.Helper()
		if _, err := c.GrantCredits(context.Background(), &userdv1.GrantCreditsRequest{ClerkUserId: "user_r", Amount: 1, IdempotencyKey: key}); err != nil {
			t.Fatal(err)
		}
	}
	keys := func(evs []*userdv1.UserEvent) []string {
		var out []string
		for _, ev := range evs {
			out = append(out, ev.GetCreditTransaction().GetIdempotencyKey())
		}
		return out
	}
	var cursor string
	t.Run("FirstUserd", func(t *testing.T) {
		in := apptest.Start(t, sameDB)
		w := watchEvents(t, in.Client, &userdv1.WatchUserEventsRequest{Kinds: []userdv1.UserEventKind{userdv1.UserEventKind_USER_EVENT_KIND_CREDITS_CHANGED}})
		w.heartbeat(t)
		if _, err := in.Client.EnsureUser(context.Background(), &userdv1.EnsureUserRequest{ClerkUserId: "user_r"}); err != nil {
			t.Fatal(err)
		}
		grant(t, in.Client, "a1")
		grant(t, in.Client, "a2")
		evs := w.events(t, 3)
		if got := fmt.Sprint(keys(evs)); got != "[ a1 a2]" {
			t.Fatalf("first userd: %s, want the initial credits, a1, a2", got)
		}
		cursor = evs[1].GetCursor() // a consumer that processed a1 only
		grant(t, in.Client, "a3")
	})
	// Every userd is stopped. Changes made meanwhile are in the database.
	t.Run("WhileNoneRuns", func(t *testing.T) {
		in := apptest.Start(t, sameDB)
		grant(t, in.Client, "a4")
	})
	b := apptest.Start(t, sameDB)
	c := apptest.Start(t, sameDB)
	wb := watchEvents(t, b.Client, &userdv1.WatchUserEventsRequest{Cursor: cursor, Kinds: []userdv1.UserEventKind{userdv1.UserEventKind_USER_EVENT_KIND_CREDITS_CHANGED}})
	evs := wb.events(t, 3)
	if got := fmt.Sprint(keys(evs)); got != "[a2 a3 a4]" {
		t.Errorf("resumed on a restarted userd: %s, want [a2 a3 a4]", got)
	}
	grant(t, c.Client, "a5") // written through the other replica
	last := wb.events(t, 1)[0]
	if k := last.GetCreditTransaction().GetIdempotencyKey(); k != "a5" {
		t.Errorf("live on b after a write on c: %s", k)
	}
	wb.cancel()
	grant(t, b.Client, "a6")
	wc := watchEvents(t, c.Client, &userdv1.WatchUserEventsRequest{Cursor: last.GetCursor()})
	if got := describe(wc.events(t, 1)[0]); got != `USER_EVENT_KIND_CREDITS_CHANGED user_r TRANSACTION_KIND_GRANT +1 =16 "" key=a6` {
		t.Errorf("resumed on the other replica: %s", got)
	}
}

// TestWatchCursorExpired: a cursor older than the retained events fails
// with OUT_OF_RANGE, reason CURSOR_EXPIRED and where the feed now starts.
func TestWatchCursorExpired(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	ctx := context.Background()
	w := watchEvents(t, in.Client, &userdv1.WatchUserEventsRequest{})
	old := w.heartbeat(t)
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_x"}); err != nil {
		t.Fatal(err)
	}
	evs := w.events(t, 2)
	// Retention takes both events (they are final once the watch had
	// them).
	if n, err := feed.Prune(ctx, in.Store, time.Now().Add(time.Hour)); err != nil || n != 2 {
		t.Fatalf("prune: %d, %v", n, err)
	}
	err := watchEvents(t, in.Client, &userdv1.WatchUserEventsRequest{Cursor: old}).end(t)
	st := wantCode(t, err, codes.OutOfRange)
	ei := errorInfo(st)
	if ei.GetReason() != "CURSOR_EXPIRED" || ei.GetMetadata()["oldest_cursor"] != evs[1].GetCursor() {
		t.Errorf("ErrorInfo = %v; want CURSOR_EXPIRED with oldest_cursor %s", ei, evs[1].GetCursor())
	}
	// From where the feed now starts, the watch works.
	ok := watchEvents(t, in.Client, &userdv1.WatchUserEventsRequest{Cursor: evs[1].GetCursor()})
	ok.heartbeat(t)
}

// TestWatchEndsAtShutdown: stopping userd ends open watches at once with
// UNAVAILABLE (resume from the cursor), instead of holding the graceful
// stop for its whole grace period.
func TestWatchEndsAtShutdown(t *testing.T) {
	t.Parallel()
	outer := t
	var (
		stream  userdv1.UserService_WatchUserEventsClient
		stopped time.Time
	)
	t.Run("Serve", func(t *testing.T) {
		in := apptest.Start(t, func(c *config.Serve) { c.ShutdownGrace = time.Minute })
		// A connection of its own, not closed with the instance: the
		// stream must see userd stop.
		conn, err := grpc.NewClient(in.App.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		outer.Cleanup(func() { _ = conn.Close() })
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+apptest.ServiceToken)
		if stream, err = userdv1.NewUserServiceClient(conn).WatchUserEvents(ctx, &userdv1.WatchUserEventsRequest{}); err != nil {
			t.Fatal(err)
		}
		if item, err := stream.Recv(); err != nil || item.GetHeartbeat() == nil {
			t.Fatalf("first item: %v, %v; want a heartbeat", item, err)
		}
		t.Cleanup(func() { stopped = time.Now() })
	})
	var err error
	for err == nil {
		_, err = stream.Recv()
	}
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable || err == io.EOF || !strings.Contains(st.Message(), "shutting down") {
		t.Errorf("at shutdown the stream ended with %v, want UNAVAILABLE", err)
	}
	if took := time.Since(stopped); took > 30*time.Second {
		t.Errorf("shutdown waited %v for the watch (grace 1m)", took)
	}
}

// TestWatchCursorsAreOpaque (issue 18, item 7): the cursors handed out
// reveal nothing of the server (before: base64 of "ev1:<xid>.<id>", the
// database's transaction id horizon); an altered cursor, or one of another
// deployment, is INVALID_ARGUMENT like any forged one.
func TestWatchCursorsAreOpaque(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	ctx := context.Background()
	w := watchEvents(t, in.Client, &userdv1.WatchUserEventsRequest{})
	hb := w.heartbeat(t)
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_opaque"}); err != nil {
		t.Fatal(err)
	}
	evs := w.events(t, 2)
	for _, c := range []string{hb, evs[0].GetCursor(), evs[1].GetCursor()} {
		raw, _ := base64.RawURLEncoding.DecodeString(c)
		if bytes.HasPrefix(raw, []byte("ev1:")) || utf8.Valid(raw) {
			t.Errorf("cursor %s decodes to readable %q", c, raw)
		}
	}

	other := apptest.Start(t, nil) // another deployment: its own database and key
	ow := watchEvents(t, other.Client, &userdv1.WatchUserEventsRequest{})
	foreign := ow.heartbeat(t)
	ow.cancel()

	good := evs[0].GetCursor()
	raw, _ := base64.RawURLEncoding.DecodeString(good)
	tampered := bytes.Clone(raw)
	tampered[len(tampered)/2] ^= 0x40
	for name, c := range map[string]string{
		"tampered":           base64.RawURLEncoding.EncodeToString(tampered),
		"truncated":          good[:len(good)-2],
		"another deployment": foreign,
	} {
		err := watchEvents(t, in.Client, &userdv1.WatchUserEventsRequest{Cursor: c}).end(t)
		st := wantCode(t, err, codes.InvalidArgument)
		if f := fieldViolations(st); len(f) == 0 || f[0] != "cursor" {
			t.Errorf("%s cursor: field violations %v", name, f)
		}
	}
	// The real one resumes.
	ok := watchEvents(t, in.Client, &userdv1.WatchUserEventsRequest{Cursor: good})
	if got := ok.events(t, 1); got[0].GetId() != evs[1].GetId() {
		t.Errorf("resumed at %d, want %d", got[0].GetId(), evs[1].GetId())
	}
}
