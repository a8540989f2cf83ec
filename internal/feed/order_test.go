package feed_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// setupPool is setup with a pool of maxConns connections.
func setupPool(t testing.TB, maxConns int32) bundle {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testdb.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st := store.New(pool, store.Options{})
	return bundle{pool: pool, store: st, svc: users.NewService(st, users.Options{InitialCredits: users.DefaultInitialCredits})}
}

// recorder is a feed.Sink that keeps what one watch session sent and
// checks that the session itself never repeats or reorders.
type recorder struct {
	events  []feed.Event
	cursors []feed.Position // every cursor received, in order
	last    feed.Position
	problem error
	// stopAt ends the session (errStop) once the cursor reaches it.
	stopAt *feed.Position
}

var errStop = errors.New("stop watching")

func (r *recorder) Event(ev feed.Event) error {
	if !r.last.Less(ev.Position) && r.problem == nil {
		r.problem = fmt.Errorf("event %d at %v after cursor %v in one session", ev.ID, ev.Position, r.last)
	}
	r.events = append(r.events, ev)
	return r.advance(ev.Position)
}

func (r *recorder) Heartbeat(c feed.Position, _ uint64) error {
	if c.Less(r.last) && r.problem == nil {
		r.problem = fmt.Errorf("heartbeat cursor %v before %v", c, r.last)
	}
	return r.advance(c)
}

func (r *recorder) advance(c feed.Position) error {
	r.last = c
	r.cursors = append(r.cursors, c)
	if r.stopAt != nil && !c.Less(*r.stopAt) {
		return errStop
	}
	return nil
}

// checkReader compares what a reader received, de-duplicated by event id,
// with the committed events in feed order.
func checkReader(truth []feed.Event, received []int64) []string {
	var problems []string
	seen := map[int64]bool{}
	var got []int64
	for _, id := range received {
		if !seen[id] {
			seen[id] = true
			got = append(got, id)
		}
	}
	want := make([]int64, len(truth))
	committed := map[int64]bool{}
	for i, ev := range truth {
		want[i] = ev.ID
		committed[ev.ID] = true
	}
	var missing, unknown int
	for _, id := range want {
		if !seen[id] {
			missing++
		}
	}
	for _, id := range got {
		if !committed[id] {
			unknown++
		}
	}
	if missing > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d committed events never received", missing, len(want)))
	}
	if unknown > 0 {
		problems = append(problems, fmt.Sprintf("%d events received that were never committed", unknown))
	}
	if missing == 0 && unknown == 0 && !slices.Equal(got, want) {
		problems = append(problems, "events received in another order than the feed's")
	}
	return problems
}

// TestConcurrentWritersAndResumingReaders is the feed's contract under
// load: writers commit (or roll back) after random delays, in transactions
// of up to three changes; readers on two hubs (two replicas) keep
// disconnecting and resuming from their last cursor or an older one they
// saved. Each reader, de-duplicating by event id, must see exactly the
// committed events in feed order, and nothing from rolled-back work. A
// naive reader that resumes after the highest event id it has seen runs
// against the same workload and must miss events — proof that the
// workload commits out of order and the check can fail.
func TestConcurrentWritersAndResumingReaders(t *testing.T) {
	if testing.Short() {
		t.Skip("a concurrency stress test: not in -short (make test-fast)")
	}
	t.Parallel()
	b := setupPool(t, 24)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const nUsers = 12
	userIDs := make([]string, nUsers)
	for i := range userIDs {
		userIDs[i] = fmt.Sprintf("user_%02d", i)
		if _, _, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: userIDs[i]}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: userIDs[i], Amount: 1_000_000, IdempotencyKey: "seed"}); err != nil {
			t.Fatal(err)
		}
	}
	hubOpts := feed.Options{
		PollInterval: 5 * time.Millisecond, Heartbeat: 20 * time.Millisecond,
		PollLimit: 50, PageLimit: 20, QueueLength: 4,
	}
	hubs := []*feed.Hub{feed.NewHub(b.store, hubOpts), feed.NewHub(b.store, hubOpts)}
	var hubsDone sync.WaitGroup
	for _, h := range hubs {
		hubsDone.Go(func() { h.Run(ctx) })
	}
	defer hubsDone.Wait()
	defer cancel()

	// Writers.
	const nWriters, txPerWriter = 8, 30
	var (
		writing     atomic.Bool
		clerkClock  atomic.Int64
		newUsers    atomic.Int64
		committed   atomic.Int64
		rolledBack  atomic.Int64
		writerGroup sync.WaitGroup
	)
	writing.Store(true)
	clerkClock.Store(1)
	q := sqlcdb.New()
	for w := range nWriters {
		writerGroup.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for n := range txPerWriter {
				if err := writeOne(ctx, b.pool, q, rng, userIDs, fmt.Sprintf("w%d-%d", w, n), &clerkClock, &newUsers); err != nil {
					rolledBack.Add(1)
					continue
				}
				committed.Add(1)
			}
		})
	}

	// The naive reader: "id > last", as if ids were handed out in commit
	// order.
	var naive []int64
	naiveDone := make(chan struct{})
	go func() {
		defer close(naiveDone)
		var last int64
		poll := func() {
			rows, err := b.pool.Query(ctx, `SELECT id FROM feed_events WHERE id > $1 ORDER BY id LIMIT 100`, last)
			if err != nil {
				return
			}
			ids, _ := pgx.CollectRows(rows, pgx.RowTo[int64])
			naive = append(naive, ids...)
			if len(ids) > 0 {
				last = ids[len(ids)-1]
			}
		}
		for writing.Load() {
			poll()
			time.Sleep(2 * time.Millisecond)
		}
		for range 100 {
			poll()
		}
	}()

	// Readers: sessions of random length, resuming at random points.
	const nReaders = 4
	type reader struct {
		received []int64
		problems []string
	}
	readers := make([]*reader, nReaders)
	finalPos := make(chan feed.Position)
	var readerGroup sync.WaitGroup
	for r := range nReaders {
		readers[r] = &reader{}
		readerGroup.Go(func() {
			rd := readers[r]
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			var saved []feed.Position
			session := func(stopAt *feed.Position, d time.Duration) {
				req := feed.Request{Start: feed.StartOldest}
				if len(saved) > 0 {
					req = feed.Request{Start: feed.StartAfter, After: saved[len(saved)-1]}
					if rng.IntN(3) == 0 { // resume from an older saved cursor
						req.After = saved[rng.IntN(len(saved))]
					}
				}
				sctx, scancel := context.WithTimeout(ctx, d)
				defer scancel()
				rec := &recorder{last: req.After, stopAt: stopAt}
				err := hubs[rng.IntN(len(hubs))].Watch(sctx, req, rec)
				if err != nil && !errors.Is(err, errStop) && !errors.Is(err, context.DeadlineExceeded) && sctx.Err() == nil {
					rd.problems = append(rd.problems, fmt.Sprintf("watch: %v", err))
				}
				if rec.problem != nil {
					rd.problems = append(rd.problems, rec.problem.Error())
				}
				for _, ev := range rec.events {
					rd.received = append(rd.received, ev.ID)
				}
				saved = append(saved, rec.cursors...)
			}
			for writing.Load() {
				session(nil, time.Duration(10+rng.IntN(150))*time.Millisecond)
			}
			final := <-finalPos
			session(&final, 2*time.Minute)
		})
	}

	writerGroup.Wait()
	writing.Store(false)
	<-naiveDone
	truth := all(t, b)
	for range nReaders {
		finalPos <- truth[len(truth)-1].Position
	}
	readerGroup.Wait()

	t.Logf("%d transactions committed, %d rolled back, %d events", committed.Load(), rolledBack.Load(), len(truth))
	if committed.Load() == 0 || rolledBack.Load() == 0 {
		t.Fatalf("the workload must both commit and roll back: %d committed, %d rolled back", committed.Load(), rolledBack.Load())
	}
	for i, rd := range readers {
		for _, p := range append(rd.problems, checkReader(truth, rd.received)...) {
			t.Errorf("reader %d: %s", i, p)
		}
	}
	naiveProblems := checkReader(truth, naive)
	if len(naiveProblems) == 0 {
		t.Errorf("the naive id > last reader saw every event in order: the workload never committed out of order, so this test proves nothing")
	}
	t.Logf("naive reader: %v", naiveProblems)
	checkAgainstLedger(t, b, truth)
}

// writeOne runs one writer transaction: up to three changes on users in
// a fixed order (so writers never deadlock), a delay before the end, and
// a commit or (one time in five) a rollback, which it reports as an error.
func writeOne(ctx context.Context, pool *pgxpool.Pool, q *sqlcdb.Queries, rng *rand.Rand, userIDs []string, key string,
	clerkClock, newUsers *atomic.Int64,
) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	picked := rng.Perm(len(userIDs))[:1+rng.IntN(3)]
	slices.Sort(picked)
	for i, u := range picked {
		id, opKey := userIDs[u], fmt.Sprintf("%s-%d", key, i)
		switch rng.IntN(5) {
		case 0:
			_, err = q.ChangeCredits(ctx, tx, sqlcdb.ChangeCreditsParams{ClerkUserID: id, Kind: "DEDUCT", Delta: -int64(1 + rng.IntN(9)), IdempotencyKey: opKey})
		case 1:
			_, err = q.ChangeCredits(ctx, tx, sqlcdb.ChangeCreditsParams{ClerkUserID: id, Kind: "GRANT", Delta: int64(1 + rng.IntN(9)), IdempotencyKey: opKey})
		case 2:
			plans := []string{"FREE", "PRO", "ENTERPRISE"}
			_, err = q.SetPlan(ctx, tx, sqlcdb.SetPlanParams{ClerkUserID: id, Plan: plans[rng.IntN(3)], Bonus: int64(rng.IntN(2) * 5), IdempotencyKey: opKey})
		case 3:
			_, err = q.ApplyClerkEvents(ctx, tx, sqlcdb.ApplyClerkEventsParams{
				SvixIds: []string{""}, EventTypes: []string{"user.updated"}, ClerkUserIds: []string{id}, Deleted: []bool{false},
				Emails: []string{""}, FirstNames: []string{opKey}, LastNames: []string{""}, ImageUrls: []string{""},
				UpdatedAts: []int64{clerkClock.Add(1)}, InitialCredits: 10,
			})
		case 4:
			_, err = q.InsertUserWithInitialCredits(ctx, tx, sqlcdb.InsertUserWithInitialCreditsParams{
				ClerkUserID: fmt.Sprintf("user_new_%d", newUsers.Add(1)), Credits: 10,
			})
		}
		if err != nil {
			return err
		}
		time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
	}
	time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
	if rng.IntN(5) == 0 {
		return errors.New("rolled back on purpose")
	}
	return tx.Commit(ctx)
}

// checkAgainstLedger: the feed holds exactly one event per committed ledger
// entry and plan change, and one user's credit events follow its ledger.
func checkAgainstLedger(t *testing.T, b bundle, truth []feed.Event) {
	t.Helper()
	ctx := context.Background()
	ledger, err := pgx.CollectRows(must(b.pool.Query(ctx, `SELECT id FROM credit_transactions ORDER BY id`)), pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	plans, err := pgx.CollectRows(must(b.pool.Query(ctx, `SELECT id FROM plan_changes ORDER BY id`)), pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	var evLedger, evPlans []int64
	lastBalance := map[string]int64{}
	for _, ev := range truth {
		switch {
		case ev.Transaction != nil:
			evLedger = append(evLedger, ev.Transaction.ID)
			if prev, ok := lastBalance[ev.ClerkUserID]; ok && prev+ev.Transaction.Delta != ev.Transaction.BalanceAfter {
				t.Errorf("%s: credit event %d takes the balance from %d by %+d to %d: out of the ledger's order",
					ev.ClerkUserID, ev.ID, prev, ev.Transaction.Delta, ev.Transaction.BalanceAfter)
			}
			lastBalance[ev.ClerkUserID] = ev.Transaction.BalanceAfter
		case ev.PlanChange != nil:
			evPlans = append(evPlans, ev.PlanChange.ID)
		}
	}
	slices.Sort(evLedger)
	slices.Sort(evPlans)
	if !slices.Equal(evLedger, ledger) {
		t.Errorf("credit events for ledger entries %v, ledger has %v", evLedger, ledger)
	}
	if !slices.Equal(evPlans, plans) {
		t.Errorf("plan events for plan changes %v, table has %v", evPlans, plans)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
