package store_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// TestUnreachableDatabaseIsUnavailable points the store at a port nobody
// listens on: every operation must be Unavailable (retryable), never
// internal.
func TestUnreachableDatabaseIsUnavailable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // now nothing listens there
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@"+addr+"/postgres?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err = svc.GetUser(ctx, users.Lookup{ClerkUserID: "user_x"})
	if k := apperr.KindOf(err); k != apperr.KindUnavailable {
		t.Errorf("GetUser: kind %v (%v), want unavailable", k, err)
	}
	_, err = svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_x", Amount: 1, IdempotencyKey: "k"})
	if k := apperr.KindOf(err); k != apperr.KindUnavailable {
		t.Errorf("DeductCredits: kind %v (%v), want unavailable", k, err)
	}
}

// TestClosedPoolIsUnavailable: a call that meets the pool closed by a
// shutdown is told to retry (elsewhere), never that userd failed.
func TestClosedPoolIsUnavailable(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), testdb.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
	svc := users.NewService(store.New(pool, store.Options{AcquireTimeout: time.Second}), users.Options{InitialCredits: 10})
	_, err = svc.GetUser(context.Background(), users.Lookup{ClerkUserID: "user_x"})
	if k := apperr.KindOf(err); k != apperr.KindUnavailable {
		t.Errorf("GetUser: kind %v (%v), want unavailable", k, err)
	}
	_, err = svc.DeductCredits(context.Background(), users.CreditChange{ClerkUserID: "user_x", Amount: 1, IdempotencyKey: "k"})
	if k := apperr.KindOf(err); k != apperr.KindUnavailable {
		t.Errorf("DeductCredits: kind %v (%v), want unavailable", k, err)
	}
}

// TestCallerDeadlineIsUnavailable: a query cut by the caller's deadline is a
// timeout (Unavailable), not an internal error.
func TestCallerDeadlineIsUnavailable(t *testing.T) {
	t.Parallel()
	svc := users.NewService(store.New(testdb.Pool(t), store.Options{}), users.Options{InitialCredits: 10})
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	_, err := svc.GetUser(ctx, users.Lookup{ClerkUserID: "user_x"})
	if k := apperr.KindOf(err); k != apperr.KindUnavailable {
		t.Errorf("kind %v (%v), want unavailable", k, err)
	}
}

// TestMigrationsRoundTrip rolls every migration back and applies them again
// on a fresh database.
func TestMigrationsRoundTrip(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	ctx := context.Background()
	m, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cur, latest, err := m.Versions(ctx)
	if err != nil || cur != latest || latest == 0 {
		t.Fatalf("fresh test database at version %d of %d (%v), want latest", cur, latest, err)
	}
	if err := m.DownTo(ctx, 0); err != nil {
		t.Fatal(err)
	}
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Applied {
			t.Errorf("migration %d still applied after DownTo(0)", s.Version)
		}
	}
	n, err := m.Up(ctx)
	if err != nil || n != len(st) {
		t.Fatalf("Up applied %d of %d: %v", n, len(st), err)
	}
	// The schema works after the round trip.
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: 10})
	if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_after_roundtrip"}); err != nil {
		t.Errorf("EnsureUser after round trip: %v", err)
	}
}

// TestApplyClerkEventsIsolatesAFailingEvent: in a group-committed batch, an
// event the database refuses fails alone (reported for retry, with its
// SQLSTATE) and the others commit.
func TestApplyClerkEventsIsolatesAFailingEvent(t *testing.T) {
	t.Parallel()
	st := store.New(testdb.Pool(t), store.Options{})
	ctx := context.Background()
	events := []users.ClerkEventWrite{
		{MessageID: "msg_ok1", Type: "user.created", User: users.ClerkUser{ID: "user_ok1", Email: "ok1@example.com", UpdatedAt: 1}},
		// An empty Clerk id breaks a CHECK constraint: the domain never
		// sends one, so it stands for any event the database refuses.
		{MessageID: "msg_bad", Type: "user.created", User: users.ClerkUser{ID: "", UpdatedAt: 1}},
		{MessageID: "msg_ok2", Type: "user.deleted", Deleted: true, User: users.ClerkUser{ID: "user_ok2"}},
		{MessageID: "msg_ok1", Type: "user.created", User: users.ClerkUser{ID: "user_ok1", Email: "ok1@example.com", UpdatedAt: 1}},
	}
	got, err := st.ApplyClerkEvents(ctx, events, users.ClerkApplyOptions{InitialCredits: 10, EraseDeleted: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []users.ClerkEventResult{
		{Outcome: users.OutcomeCreated},
		{Outcome: users.OutcomeRetry, ErrorCode: pgerrcode.CheckViolation},
		{Outcome: users.OutcomeDeleted},
		{Outcome: users.OutcomeDuplicate},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("results (-want +got):\n%s", diff)
	}
	if u, err := st.GetLiveUserByClerkID(ctx, "user_ok1"); err != nil || u.Credits != 10 {
		t.Errorf("user_ok1 = %+v, %v; want created with 10 credits", u, err)
	}
	if u, err := st.GetUserByClerkIDIncludingDeleted(ctx, "user_ok2"); err != nil || u.DeletedAt == nil {
		t.Errorf("user_ok2 = %+v, %v; want a tombstone", u, err)
	}
}

// TestDeletionsWithoutMessageIDEachApply: deletions that carry no Svix
// message id (a sync's --delete-missing, userd erase-user) record no
// message, so each applies — none is taken for a redelivery of another.
func TestDeletionsWithoutMessageIDEachApply(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	st := store.New(pool, store.Options{})
	ctx := context.Background()
	opts := users.ClerkApplyOptions{InitialCredits: 10, EraseDeleted: true}
	created := []users.ClerkEventWrite{
		{Type: "clerk.sync", User: users.ClerkUser{ID: "user_a", Email: "a@example.com", UpdatedAt: 1}},
		{Type: "clerk.sync", User: users.ClerkUser{ID: "user_b", Email: "b@example.com", UpdatedAt: 1}},
	}
	if _, err := st.ApplyClerkEvents(ctx, created, opts); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"user_a", "user_b", "user_a"} {
		got, err := st.ApplyClerkEvents(ctx, []users.ClerkEventWrite{{Type: "clerk.sync", Deleted: true, User: users.ClerkUser{ID: id}}}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Outcome != users.OutcomeDeleted {
			t.Errorf("deleting %s without a message id: %s, want deleted", id, got[0].Outcome)
		}
	}
	for _, id := range []string{"user_a", "user_b"} {
		if u, err := st.GetUserByClerkIDIncludingDeleted(ctx, id); err != nil || u.DeletedAt == nil || u.Email != "" {
			t.Errorf("%s = %+v, %v; want deleted and erased", id, u, err)
		}
	}
	var recorded int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM webhook_events`).Scan(&recorded); err != nil || recorded != 0 {
		t.Errorf("%d messages recorded (%v), want none", recorded, err)
	}
}
