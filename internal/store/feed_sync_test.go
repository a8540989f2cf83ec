package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/pgembed"
	"github.com/userd/userd/internal/users"
)

// privateServer starts a PostgreSQL of this test's own (its settings are
// changed with ALTER SYSTEM, which the shared test server must not see)
// and returns a pool on its migrated database.
func privateServer(t *testing.T) *pgxpool.Pool {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil { // the server may run as userd-pg
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	srv, err := pgembed.Start(ctx, pgembed.Config{DataDir: filepath.Join(base, "data")})
	if err != nil {
		t.Fatalf("start a private PostgreSQL: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	pool, err := pgxpool.New(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	m, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	return pool
}

func setSyncStandbyNames(t *testing.T, pool *pgxpool.Pool, names string) {
	t.Helper()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = '"+names+"'"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		var got string
		if err := pool.QueryRow(ctx, "SELECT current_setting('synchronous_standby_names')").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got == names {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("synchronous_standby_names is %q after the reload, want %q", got, names)
		}
		time.Sleep(10 * time.Millisecond) // the reload is asynchronous: wait for it to reach new sessions
	}
}

// TestFeedWaitsForSynchronousStandby: a commit that PostgreSQL made
// visible without the synchronous standby (its wait for the standby was
// cancelled: "committed locally, but might not have been replicated") is
// not handed out by the feed — neither its event nor a horizon past it —
// until a synchronous standby has the WAL; a failover could otherwise
// lose an event a consumer already processed. Without synchronous
// replication the same event is read at once (so this test can fail).
func TestFeedWaitsForSynchronousStandby(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := privateServer(t)
	s := New(pool, Options{})
	before, err := s.ReadUserEvents(ctx, feed.Position{Xid: 1 << 62}, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	start := feed.Position{Xid: before.Horizon}

	// A standby that never comes: every commit waits for it.
	setSyncStandbyNames(t, pool, "ghost")
	written := make(chan error, 1)
	go func() {
		_, _, err := s.InsertUserWithInitialCredits(ctx, users.NewUser{ClerkUserID: "user_unreplicated", Credits: 5})
		written <- err
	}()
	var pid int32
	for pid == 0 {
		err := pool.QueryRow(ctx, "SELECT coalesce((SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' LIMIT 1), 0)").Scan(&pid)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-written:
			t.Fatalf("the write finished before it waited for the standby: %v", err)
		case <-time.After(5 * time.Millisecond): // polling for the server's state
		}
	}
	if _, err := pool.Exec(ctx, "SELECT pg_cancel_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	if err := <-written; err != nil {
		t.Fatalf("the write whose wait was cancelled: %v (PostgreSQL reports it committed, with a WARNING)", err)
	}
	var visible bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM users WHERE clerk_user_id = 'user_unreplicated')").Scan(&visible); err != nil || !visible {
		t.Fatalf("the locally committed user is not visible (%v, %v): the test does not set up what it means to", visible, err)
	}

	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	page, err := s.ReadUserEvents(rctx, start, "", 10)
	if err == nil {
		t.Fatalf("the feed handed out %d events and horizon %d that no synchronous standby has", len(page.Events), page.Horizon)
	}
	if k := apperr.KindOf(err); k != apperr.KindUnavailable {
		t.Fatalf("unconfirmed read: kind %v (%v), want unavailable", k, err)
	}

	// The standby requirement lifted (as pg_auto_failover does when its
	// standby is gone): the event is final on this server, and read.
	setSyncStandbyNames(t, pool, "")
	page, err = s.ReadUserEvents(ctx, start, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 2 || page.Events[0].ClerkUserID != "user_unreplicated" {
		t.Fatalf("after the standby requirement was lifted: %d events %+v, want user.created and credits.changed", len(page.Events), page.Events)
	}
}
