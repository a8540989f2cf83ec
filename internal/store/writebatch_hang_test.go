package store_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/internal/users"
)

// The write batcher never leaves a caller waiting (internal/store/writebatch.go):
// a lock held outside the batches, a killed backend, a pool closed under a
// batch, cancellations and a stop at shutdown each end in an answer, and no
// write is acknowledged without its commit.

// answer is one write's outcome.
type answer struct {
	key string
	res users.CreditWriteResult
	err error
}

// goDeduct starts a deduction of 1 from clerkID's account under key and
// returns where its answer will be.
func goDeduct(ctx context.Context, st *store.Store, clerkID, key string) <-chan answer {
	ch := make(chan answer, 1)
	go func() {
		res, err := st.ChangeCredits(ctx, users.CreditWrite{ClerkUserID: clerkID, Kind: users.TxDeduct, Delta: -1, Reason: "r", IdempotencyKey: key, Service: "svc"})
		ch <- answer{key, res, err}
	}()
	return ch
}

// await is the answer on ch, or a failed test if none comes within
// hangGuard.
func await(t *testing.T, what string, ch <-chan answer) answer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(hangGuard):
		t.Fatalf("%s: no answer after %s: it hangs", what, hangGuard)
		return answer{}
	}
}

func ensureUsers(t *testing.T, st *store.Store, credits int64, ids ...string) {
	t.Helper()
	svc := users.NewService(st, users.Options{InitialCredits: credits})
	for _, id := range ids {
		if _, _, err := svc.EnsureUser(context.Background(), users.EnsureUserInput{ClerkUserID: id}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLockHeldOutsideStallsNoOtherAccount: with one lane (every account
// shares it) and a row lock on alice held outside the batches with no
// lock_timeout at all, bob's writes are answered while alice's write still
// waits for the lock; alice's is applied once the lock is free.
func TestLockHeldOutsideStallsNoOtherAccount(t *testing.T) {
	t.Parallel()
	pool := poolWith(t, testdb.URL(t), 4, store.SessionTimeouts{})
	st := store.New(pool, store.Options{WriteLanes: 1})
	ensureUsers(t, st, 10, "user_held_alice", "user_held_bob")
	release := holdRowLock(t, pool, "user_held_alice")
	ctx := context.Background()
	alice := goDeduct(ctx, st, "user_held_alice", "a1")
	start := time.Now()
	for i := range 3 {
		// alice's call is set aside after the first batch that meets her
		// lock; bob's go on through the lane.
		b := await(t, "bob behind alice's held lock", goDeduct(ctx, st, "user_held_bob", fmt.Sprintf("b%d", i)))
		if b.err != nil || b.res.Status != users.WriteApplied {
			t.Fatalf("bob's deduction %d behind alice's held lock: %+v %v", i, b.res, b.err)
		}
	}
	t.Logf("bob's 3 deductions behind alice's held lock took %s", time.Since(start).Round(time.Millisecond))
	select {
	case a := <-alice:
		t.Fatalf("alice's deduction answered while her row is locked: %+v %v", a.res, a.err)
	default:
	}
	release()
	if a := await(t, "alice once her lock is free", alice); a.err != nil || a.res.Status != users.WriteApplied {
		t.Fatalf("alice once her lock is free: %+v %v", a.res, a.err)
	}
	checkBooks(t, pool)
}

// checkAcknowledged: every write answered applied is in the ledger, once;
// where strict, every write answered an error is not (nothing committed
// it: no batch was cut after its commit in these tests).
func checkAcknowledged(t *testing.T, pool *pgxpool.Pool, answers []answer, strict bool) (applied, failed int) {
	t.Helper()
	for _, a := range answers {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM credit_transactions WHERE idempotency_key = $1`, a.key).Scan(&n); err != nil {
			t.Fatal(err)
		}
		switch {
		case a.err == nil && a.res.Status == users.WriteApplied:
			applied++
			if n != 1 {
				t.Errorf("%s: answered applied, %d ledger entries", a.key, n)
			}
		case a.err != nil:
			failed++
			if strict && n != 0 {
				t.Errorf("%s: answered %v, yet committed (%d entries)", a.key, a.err, n)
			}
		}
	}
	return applied, failed
}

// lockWaiter is the backend, in pool's database, waiting for a lock.
func lockWaiter(t *testing.T, pool *pgxpool.Pool) (pid int32) {
	t.Helper()
	testwait.Until(t, hangGuard, "a backend waiting for a lock", func() bool {
		err := pool.QueryRow(context.Background(), `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' LIMIT 1`).Scan(&pid)
		return err == nil
	})
	return pid
}

// TestWriteBatchSurvivesAKilledBackend: the backend of a batch waiting on
// a row lock is terminated; the batch's calls run again on their own and
// each is applied once.
func TestWriteBatchSurvivesAKilledBackend(t *testing.T) {
	t.Parallel()
	pool := poolWith(t, testdb.URL(t), 4, store.SessionTimeouts{})
	st := store.New(pool, store.Options{})
	ensureUsers(t, st, 10, "user_kill_alice", "user_kill_bob")
	release := holdRowLock(t, pool, "user_kill_alice")
	store.SetBatchLockWait(st, "0") // the batch waits for the lock
	hold := store.HoldWriteBatches(st)
	ctx := context.Background()
	chans := []<-chan answer{goDeduct(ctx, st, "user_kill_alice", "a1")}
	testwait.Until(t, hangGuard, "alice queued", func() bool { return store.QueuedWrites(st) == 1 })
	chans = append(chans, goDeduct(ctx, st, "user_kill_bob", "b1"))
	testwait.Until(t, hangGuard, "bob queued", func() bool { return store.QueuedWrites(st) == 2 })
	hold()
	var killed bool
	if err := pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, lockWaiter(t, pool)).Scan(&killed); err != nil || !killed {
		t.Fatalf("terminate the batch's backend: %v %v", killed, err)
	}
	release()
	var answers []answer
	for _, ch := range chans {
		a := await(t, "a call of the killed batch", ch)
		if a.err != nil || a.res.Status != users.WriteApplied {
			t.Errorf("%s after its batch's backend was killed: %+v %v", a.key, a.res, a.err)
		}
		answers = append(answers, a)
	}
	checkAcknowledged(t, pool, answers, true)
	checkBooks(t, pool)
}

// writeLoad runs workers that deduct 1 from accounts (each call its own
// key) until stop is closed or a call fails, and returns every answer.
func writeLoad(st *store.Store, accounts []string, workers int, stop <-chan struct{}, progress *atomic.Int64) func() []answer {
	var mu sync.Mutex
	var answers []answer
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				a := <-goDeduct(context.Background(), st, accounts[(w+i)%len(accounts)], fmt.Sprintf("w%d-%d", w, i))
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
				progress.Add(1)
				if a.err != nil {
					return
				}
			}
		})
	}
	return func() []answer {
		wg.Wait()
		return answers
	}
}

// TestWriteStopUnderLoad: Stop, with writers still writing, refuses the
// calls that come after it Unavailable and returns once every call it
// took has committed and been answered; no caller is left waiting, and
// exactly the writes answered applied are in the ledger.
func TestWriteStopUnderLoad(t *testing.T) {
	t.Parallel()
	pool := poolWith(t, testdb.URL(t), 4, store.SessionTimeouts{})
	st := store.New(pool, store.Options{})
	accounts := []string{"user_stop_a", "user_stop_b", "user_stop_c"}
	ensureUsers(t, st, 1_000_000, accounts...)
	var progress atomic.Int64
	stop := make(chan struct{})
	wait := writeLoad(st, accounts, 16, stop, &progress)
	testwait.Until(t, hangGuard, "writes under way", func() bool { return progress.Load() >= 100 })
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if err := st.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if n := store.QueuedWrites(st); n != 0 {
		t.Errorf("%d writes still queued after Stop", n)
	}
	// Every worker's next call is refused: they all end.
	done := make(chan []answer, 1)
	go func() { done <- wait() }()
	var answers []answer
	select {
	case answers = <-done:
	case <-time.After(hangGuard):
		t.Fatalf("writers still waiting %s after Stop", hangGuard)
	}
	close(stop)
	for _, a := range answers {
		if a.err != nil && apperr.KindOf(a.err) != apperr.KindUnavailable {
			t.Errorf("%s: %v, want Unavailable", a.key, a.err)
		}
	}
	applied, failed := checkAcknowledged(t, pool, answers, true)
	t.Logf("stop under load: %d writes applied, %d refused", applied, failed)
	if failed != 16 {
		t.Errorf("%d writes refused, want one per worker (16)", failed)
	}
	checkBooks(t, pool)
}

// TestWriteStopBoundAnswersTheQueued: when Stop's bound ends while a write
// waits for a lock held outside, the writes queued behind it are answered
// Unavailable at once (not left waiting), and the one running is answered
// after its commit once the lock is free.
func TestWriteStopBoundAnswersTheQueued(t *testing.T) {
	t.Parallel()
	pool := poolWith(t, testdb.URL(t), 4, store.SessionTimeouts{})
	st := store.New(pool, store.Options{})
	ensureUsers(t, st, 10, "user_stopheld")
	release := holdRowLock(t, pool, "user_stopheld")
	ctx := context.Background()
	first := goDeduct(ctx, st, "user_stopheld", "s1")
	testwait.Until(t, hangGuard, "the account set aside", func() bool { return store.AccountsSetAside(st) == 1 })
	queued := []<-chan answer{goDeduct(ctx, st, "user_stopheld", "s2"), goDeduct(ctx, st, "user_stopheld", "s3")}
	testwait.Until(t, hangGuard, "two writes queued behind it", func() bool { return store.QueuedWrites(st) == 2 })
	sctx, cancel := context.WithCancel(ctx)
	cancel() // Stop's bound is over at once
	if err := st.Stop(sctx); !errors.Is(err, context.Canceled) {
		t.Errorf("stop with the bound over: %v, want it to say batches still run", err)
	}
	answers := []answer{}
	for _, ch := range queued {
		a := await(t, "a write queued at stop", ch)
		if apperr.KindOf(a.err) != apperr.KindUnavailable {
			t.Errorf("%s queued at stop: %+v %v, want Unavailable", a.key, a.res, a.err)
		}
		answers = append(answers, a)
	}
	if a := await(t, "a write after stop", goDeduct(ctx, st, "user_stopheld", "s4")); apperr.KindOf(a.err) != apperr.KindUnavailable {
		t.Errorf("a write after stop: %+v %v, want Unavailable", a.res, a.err)
	} else {
		answers = append(answers, a)
	}
	release()
	a := await(t, "the write running at stop", first)
	if a.err != nil || a.res.Status != users.WriteApplied {
		t.Errorf("the write running at stop: %+v %v, want applied once the lock is free", a.res, a.err)
	}
	checkAcknowledged(t, pool, append(answers, a), true)
	ctx2, cancel2 := context.WithTimeout(ctx, hangGuard)
	defer cancel2()
	if err := st.Stop(ctx2); err != nil {
		t.Errorf("stop once idle: %v", err)
	}
	checkBooks(t, pool)
}

// TestWritePoolClosedUnderLoad: the pool closes while writers write (no
// Stop): every call is answered, applied after its commit or refused with
// nothing committed.
func TestWritePoolClosedUnderLoad(t *testing.T) {
	t.Parallel()
	url := testdb.URL(t)
	pool := poolWith(t, url, 4, store.SessionTimeouts{})
	st := store.New(pool, store.Options{})
	accounts := []string{"user_close_a", "user_close_b", "user_close_c"}
	ensureUsers(t, st, 1_000_000, accounts...)
	var progress atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	wait := writeLoad(st, accounts, 16, stop, &progress)
	testwait.Until(t, hangGuard, "writes under way", func() bool { return progress.Load() >= 100 })
	pool.Close()
	done := make(chan []answer, 1)
	go func() { done <- wait() }()
	var answers []answer
	select {
	case answers = <-done:
	case <-time.After(hangGuard):
		t.Fatalf("writers still waiting %s after the pool closed", hangGuard)
	}
	check := poolWith(t, url, 2, store.SessionTimeouts{})
	applied, failed := checkAcknowledged(t, check, answers, true)
	t.Logf("pool closed under load: %d writes applied, %d failed", applied, failed)
	if failed != 16 {
		t.Errorf("%d writes failed, want one per worker (16)", failed)
	}
	checkBooks(t, check)
}

// TestWriteBatchChaos: two stores (as two replicas) on a pool of 4 write
// to three accounts, each call with a deadline of its own (some already
// over, some cut while queued or sent), while a row lock on one account is
// taken and released outside the batches. Every call returns by its
// deadline (within hangGuard), nothing is left queued or running, and
// every write answered applied is committed once.
func TestWriteBatchChaos(t *testing.T) {
	t.Parallel()
	pool := poolWith(t, testdb.URL(t), 4, store.SessionTimeouts{Lock: 2 * time.Second})
	stores := []*store.Store{store.New(pool, store.Options{}), store.New(pool, store.Options{WriteLanes: 1})}
	accounts := []string{"user_chaos_a", "user_chaos_b", "user_chaos_c"}
	ensureUsers(t, stores[0], 1_000_000, accounts...)
	var progress atomic.Int64
	var mu sync.Mutex
	var answers []answer
	var wg sync.WaitGroup
	const workers, each = 16, 30
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range each {
				d := time.Duration(r.IntN(40)) * time.Millisecond
				ctx, cancel := context.WithTimeout(context.Background(), d)
				if r.IntN(4) == 0 {
					ctx, cancel = context.WithCancel(context.Background())
					go cancel() // cut at any point: queued, in a batch, or before
				}
				key := fmt.Sprintf("c%d-%d", w, i)
				ch := goDeduct(ctx, stores[r.IntN(len(stores))], accounts[r.IntN(len(accounts))], key)
				select {
				case a := <-ch:
					mu.Lock()
					answers = append(answers, a)
					mu.Unlock()
				case <-time.After(d + hangGuard):
					t.Errorf("%s: no answer %s past its deadline", key, hangGuard)
				}
				cancel()
				progress.Add(1)
			}
		})
	}
	// Outside the batches: take account a's row lock, hold it while 20
	// calls are answered, release, again, until the workers are done.
	lockDone := make(chan struct{})
	go func() {
		defer close(lockDone)
		for progress.Load() < workers*each {
			tx, err := pool.Begin(context.Background())
			if err != nil {
				return
			}
			_, _ = tx.Exec(context.Background(), `SELECT 1 FROM accounts a JOIN users u ON u.id = a.id WHERE u.clerk_user_id = $1 FOR UPDATE`, accounts[0])
			until := progress.Load() + 20
			testwait.For(hangGuard, func() bool { return progress.Load() >= until || progress.Load() >= workers*each })
			_ = tx.Rollback(context.Background())
		}
	}()
	wg.Wait()
	<-lockDone
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	for i, st := range stores {
		if n := store.QueuedWrites(st); n != 0 {
			t.Errorf("store %d: %d writes still queued", i, n)
		}
		if err := st.Stop(ctx); err != nil {
			t.Errorf("store %d: batches still running: %v", i, err)
		}
	}
	applied, failed := checkAcknowledged(t, pool, answers, false)
	t.Logf("chaos: %d calls, %d applied, %d failed (deadlines, cancels)", len(answers), applied, failed)
	checkBooks(t, pool)
}
