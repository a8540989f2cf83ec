package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/internal/users"
)

// TestUserReadsBatched: reads of users by Clerk id that queue while the
// database is busy go as one statement, and each caller gets its own
// answer: the user, deleted or not as it asked, or none; an id the
// database refuses fails its own read, not the batch's.
func TestUserReadsBatched(t *testing.T) {
	url := testdb.URL(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	// One connection: while the test holds it, every read waits.
	pool := testdb.Connect(t, url+sep+"pool_max_conns=1")
	st := store.New(pool, store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: 10})
	ctx := context.Background()
	for i := range 6 {
		id := fmt.Sprintf("user_rb%d", i)
		if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.DeleteClerkUser(ctx, "msg_rb_delete", "user.deleted", "user_rb5"); err != nil {
		t.Fatal(err)
	}

	held, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Should the test fail while it holds the connection, the pool's
	// close at cleanup would wait for it for ever: released first.
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(held.Release) }
	t.Cleanup(release)
	type answer struct {
		id      string
		live    bool
		user    users.User
		err     error
		wantErr bool
	}
	var (
		wg      sync.WaitGroup
		answers = make([]answer, 40)
	)
	for i := range answers {
		a := &answers[i]
		// user_rb0..4 live, user_rb5 deleted, user_rb6..7 missing.
		a.id, a.live = fmt.Sprintf("user_rb%d", i%8), i%2 == 0
		a.wantErr = i%8 >= 6 || (a.live && i%8 == 5)
		wg.Go(func() {
			if a.live {
				a.user, a.err = st.GetLiveUserByClerkID(ctx, a.id)
			} else {
				a.user, a.err = st.GetUserByClerkIDIncludingDeleted(ctx, a.id)
			}
		})
	}
	// A Clerk id PostgreSQL refuses as text fails its own read only.
	var badErr error
	wg.Go(func() { _, badErr = st.GetLiveUserByClerkID(ctx, "user_rb\x00") })
	// The first read and then the first 8 queued behind it took the
	// batches that may run (each waits for the held connection); the
	// others queue behind them.
	testwait.Until(t, 10*time.Second, "reads queued", func() bool { return store.UserReadsPending(st) >= len(answers)-9 })
	release()
	wg.Wait()

	if badErr == nil {
		t.Error("read of a Clerk id with a NUL byte: no error")
	}
	for _, a := range answers {
		switch {
		case a.wantErr:
			if !errors.Is(a.err, users.ErrNoRow) {
				t.Errorf("read %s (live %v): err %v, want no row", a.id, a.live, a.err)
			}
		case a.err != nil:
			t.Errorf("read %s (live %v): %v", a.id, a.live, a.err)
		case a.user.ClerkUserID != a.id || a.user.Credits != 10:
			t.Errorf("read %s (live %v) = %s with %d credits, want %s with 10", a.id, a.live, a.user.ClerkUserID, a.user.Credits, a.id)
		case (a.user.DeletedAt != nil) != (a.id == "user_rb5"):
			t.Errorf("read %s: deleted_at %v", a.id, a.user.DeletedAt)
		}
	}
	if n := store.UserReadsBatched(st); n < int64(len(answers)-8) {
		t.Errorf("%d reads answered by batches, want at least %d (the queued ones)", n, len(answers)-8)
	}
}

// TestUserReadsSeeOwnWrites: under concurrent reads that batch, a read
// that follows a caller's write sees it (a read never joins a batch sent
// before it was asked), for GetUser and EnsureUser alike; a caller that
// gives up gets its context's error and the others their answers.
func TestUserReadsSeeOwnWrites(t *testing.T) {
	st := store.New(testdb.Pool(t), store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: 1000})
	ctx := context.Background()
	const writers, readers, rounds = 8, 8, 25
	for i := range writers {
		if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: fmt.Sprintf("user_ryw%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var readersWG, writersWG sync.WaitGroup
	errs := make(chan error, writers+readers)
	for r := range readers {
		readersWG.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rctx := ctx
				if i%5 == 0 {
					// A caller that has already given up.
					c, cancel := context.WithCancel(ctx)
					cancel()
					rctx = c
				}
				u, err := svc.GetUser(rctx, users.Lookup{ClerkUserID: fmt.Sprintf("user_ryw%d", (r+i)%writers)})
				switch {
				case rctx != ctx:
					if apperr.KindOf(err) != apperr.KindCanceled {
						errs <- fmt.Errorf("cancelled read: %v, want CANCELED", err)
						return
					}
				case err != nil:
					errs <- err
					return
				case u.Credits > 1000 || u.Credits < 1000-rounds:
					errs <- fmt.Errorf("%s has %d credits", u.ClerkUserID, u.Credits)
					return
				}
			}
		})
	}
	for w := range writers {
		writersWG.Go(func() {
			id := fmt.Sprintf("user_ryw%d", w)
			for k := 1; k <= rounds; k++ {
				if _, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: id, Amount: 1, IdempotencyKey: fmt.Sprintf("ryw%d", k)}); err != nil {
					errs <- err
					return
				}
				want := int64(1000 - k)
				u, err := svc.GetUser(ctx, users.Lookup{ClerkUserID: id})
				if err != nil || u.Credits != want {
					errs <- fmt.Errorf("GetUser %s after deduction %d: %d credits, err %v; want %d", id, k, u.Credits, err, want)
					return
				}
				e, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id})
				if err != nil || e.Credits != want {
					errs <- fmt.Errorf("EnsureUser %s after deduction %d: %d credits, err %v; want %d", id, k, e.Credits, err, want)
					return
				}
			}
		})
	}
	writersWG.Wait()
	close(stop)
	readersWG.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestUserReadLeaderStopsWaitingWhenCancelled: the read that starts a
// batch is answered its context's error as soon as its caller gives up,
// though the batch's statement (which no one caller may cancel) still
// waits, here on a lock held on the users table; once the lock goes, the
// reads work again.
func TestUserReadLeaderStopsWaitingWhenCancelled(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	st := store.New(pool, store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: 10})
	ctx := context.Background()
	if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_rb_leader"}); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `LOCK TABLE users IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := st.GetLiveUserByClerkID(rctx, "user_rb_leader")
		done <- err
	}()
	lockWaiter(t, pool) // the read's statement waits on the table lock
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled read: %v, want canceled", err)
		}
	case <-time.After(hangGuard):
		t.Fatalf("the cancelled read still waits %s later, behind its batch's statement", hangGuard)
	}
	_ = tx.Rollback(ctx)
	if u, err := st.GetLiveUserByClerkID(ctx, "user_rb_leader"); err != nil || u.ClerkUserID != "user_rb_leader" {
		t.Errorf("read once the lock is gone: %+v %v", u, err)
	}
}

// TestUserReadsWaitForTheRunningStatement: while one batch's statement
// runs (here it waits on a lock on the users table), reads wait for it
// and go together after it, rather than each starting a statement of its
// own; once userReadsSecondAt (8) wait, a second statement takes them. All
// are answered once the lock goes.
func TestUserReadsWaitForTheRunningStatement(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	st := store.New(pool, store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: 10})
	ctx := context.Background()
	if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_rb_wait"}); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `LOCK TABLE users IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 16)
	read := func() {
		go func() {
			u, err := st.GetLiveUserByClerkID(ctx, "user_rb_wait")
			if err == nil && u.Credits != 10 {
				err = fmt.Errorf("read %+v, want 10 credits", u)
			}
			errs <- err
		}()
	}
	lockWaiters := func() (n int) {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	read()
	lockWaiter(t, pool) // the first read's statement waits on the lock
	for range 7 {
		read()
	}
	// Seven wait behind it (a second statement for any one of them would
	// have taken it from the queue).
	testwait.Until(t, hangGuard, "7 reads queued", func() bool { return store.UserReadsPending(st) == 7 })
	if n := lockWaiters(); n != 1 {
		t.Errorf("%d statements wait on the lock with 7 reads queued, want 1", n)
	}
	read() // the eighth: a second statement takes the eight
	testwait.Until(t, hangGuard, "a second statement", func() bool {
		return store.UserReadsPending(st) == 0 && lockWaiters() == 2
	})
	_ = tx.Rollback(ctx)
	for range 9 {
		select {
		case err := <-errs:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(hangGuard):
			t.Fatalf("a read still waits %s after the lock went", hangGuard)
		}
	}
	if n := store.UserReadsBatched(st); n != 8 {
		t.Errorf("%d reads answered by a statement of several, want 8 (the queued ones, together)", n)
	}
}
