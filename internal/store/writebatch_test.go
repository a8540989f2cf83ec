package store_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/internal/users"
)

// Group commit of credit and plan writes (internal/store/writebatch.go).

// batchCall is one call queued into a held batch: run makes it, and want
// checks its answer.
type batchCall struct {
	name string
	run  func(ctx context.Context) (users.CreditWriteResult, error)
	want func(res users.CreditWriteResult, err error) error
}

func wantStatus(st users.WriteStatus, delta int64) func(users.CreditWriteResult, error) error {
	return func(res users.CreditWriteResult, err error) error {
		if err != nil {
			return fmt.Errorf("error %v, want status %s", err, st)
		}
		if res.Status != st {
			return fmt.Errorf("status %s, want %s", res.Status, st)
		}
		if (st == users.WriteApplied || st == users.WriteReplayed) && res.Transaction.Delta != delta {
			return fmt.Errorf("entry delta %d, want %d", res.Transaction.Delta, delta)
		}
		return nil
	}
}

// queueHeld starts calls one after the other, each once the previous one
// is queued (so their order in the batch is known), then releases the
// batch and returns each call's answer check.
func queueHeld(t *testing.T, st *store.Store, release func(), calls []batchCall, cancelled map[string]context.CancelFunc) []error {
	t.Helper()
	errs := make([]error, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, ok := cancelled[c.name]; ok {
			cancelled[c.name] = cancel
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.run(ctx)
			errs[i] = c.want(res, err)
		}()
		testwait.Until(t, 10*time.Second, "call queued", func() bool { return store.QueuedWrites(st) == i+1 })
	}
	for name, cancel := range cancelled {
		cancel()
		testwait.Until(t, 10*time.Second, name+" dropped from the queue", func() bool { return store.QueuedWrites(st) < len(calls) })
	}
	release()
	wg.Wait()
	return errs
}

type batchFixture struct {
	pool       *pgxpool.Pool
	st         *store.Store
	release    func()
	orgClosed  string
	orgOpen    string
	alice, bob string
}

func newBatchFixture(t *testing.T) batchFixture {
	t.Helper()
	pool := testdb.Pool(t)
	ctx := context.Background()
	st := store.New(pool, store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: 10})
	f := batchFixture{pool: pool, st: st, alice: "user_batch_alice", bob: "user_batch_bob", orgOpen: "org_batch_open", orgClosed: "org_batch_closed"}
	for _, id := range []string{f.alice, f.bob} {
		if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id}); err != nil {
			t.Fatal(err)
		}
	}
	newOrgAccount(t, pool, f.orgOpen, 20)
	closed := newOrgAccount(t, pool, f.orgClosed, 20)
	if status, err := st.CloseAccount(ctx, closed); err != nil {
		t.Fatalf("close account: %s %v", status, err)
	}
	// A deduction the batch replays.
	if res, err := st.ChangeCredits(ctx, users.CreditWrite{ClerkUserID: f.alice, Kind: users.TxDeduct, Delta: -1, Reason: "r", IdempotencyKey: "replay", Service: "svc"}); err != nil || res.Status != users.WriteApplied {
		t.Fatalf("seed deduction: %+v %v", res, err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO prices (action, credits, updated_by) VALUES ('op', 3, 'test')`); err != nil {
		t.Fatal(err)
	}
	f.release = store.HoldWriteBatches(st)
	return f
}

func (f batchFixture) personal(clerkUserID string, delta int64, key string) func(context.Context) (users.CreditWriteResult, error) {
	kind := users.TxDeduct
	if delta > 0 {
		kind = users.TxGrant
	}
	return func(ctx context.Context) (users.CreditWriteResult, error) {
		return f.st.ChangeCredits(ctx, users.CreditWrite{ClerkUserID: clerkUserID, Kind: kind, Delta: delta, Reason: "r", IdempotencyKey: key, Service: "svc"})
	}
}

func (f batchFixture) org(clerkOrgID string, delta int64, key string) func(context.Context) (users.CreditWriteResult, error) {
	kind := users.TxDeduct
	if delta > 0 {
		kind = users.TxGrant
	}
	return func(ctx context.Context) (users.CreditWriteResult, error) {
		res, err := f.st.OrgChangeCredits(ctx, users.OrgCreditWrite{ClerkOrgID: clerkOrgID, Service: "svc", Kind: kind, Delta: delta, Reason: "r", IdempotencyKey: key})
		return res.CreditWriteResult, err
	}
}

// mixedCalls: successes, an insufficient balance, a replay, a key reused
// with other parameters, a closed account, an unknown user, a deduction
// by action, and two calls of one key in the same batch.
func (f batchFixture) mixedCalls() []batchCall {
	return []batchCall{
		{"alice deducts 2", f.personal(f.alice, -2, "a1"), wantStatus(users.WriteApplied, -2)},
		{"bob deducts 50", f.personal(f.bob, -50, "b1"), wantStatus(users.WriteInsufficient, 0)},
		{"alice replays", f.personal(f.alice, -1, "replay"), wantStatus(users.WriteReplayed, -1)},
		{"closed org grant", f.org(f.orgClosed, 5, "c1"), wantStatus(users.WriteClosed, 0)},
		{"alice cancelled", f.personal(f.alice, -1, "a-cancelled"), func(_ users.CreditWriteResult, err error) error {
			if !errors.Is(err, context.Canceled) {
				return fmt.Errorf("error %v, want canceled", err)
			}
			return nil
		}},
		{"alice reuses a key", f.personal(f.alice, -5, "replay"), wantStatus(users.WriteKeyReused, 0)},
		{"org deducts 7", f.org(f.orgOpen, -7, "o1"), wantStatus(users.WriteApplied, -7)},
		{"bob grants 4", f.personal(f.bob, 4, "b2"), wantStatus(users.WriteApplied, 4)},
		{"nobody deducts", f.personal("user_batch_nobody", -1, "n1"), wantStatus(users.WriteNotFound, 0)},
		{"bob deducts by action", func(ctx context.Context) (users.CreditWriteResult, error) {
			return f.st.DeductCreditsForAction(ctx, users.ActionDeduction{ClerkUserID: f.bob, Action: "op", IdempotencyKey: "b3", Service: "svc"})
		}, wantStatus(users.WriteApplied, -3)},
		{"org deducts 7 again, same key", f.org(f.orgOpen, -7, "o1"), wantStatus(users.WriteReplayed, -7)},
		{"org deducts 30", f.org(f.orgOpen, -30, "o2"), wantStatus(users.WriteInsufficient, 0)},
	}
}

func checkAnswers(t *testing.T, calls []batchCall, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s: %v", calls[i].name, err)
		}
	}
}

// balances reads the three open accounts' balances.
func (f batchFixture) balances(t *testing.T) (alice, bob, org int64) {
	t.Helper()
	err := f.pool.QueryRow(context.Background(), `
		SELECT (SELECT a.credits FROM accounts a JOIN users u ON u.id = a.id WHERE u.clerk_user_id = $1),
		       (SELECT a.credits FROM accounts a JOIN users u ON u.id = a.id WHERE u.clerk_user_id = $2),
		       (SELECT a.credits FROM accounts a JOIN organizations o ON o.id = a.organization_id WHERE o.clerk_org_id = $3)`,
		f.alice, f.bob, f.orgOpen).Scan(&alice, &bob, &org)
	if err != nil {
		t.Fatal(err)
	}
	return alice, bob, org
}

// transactionsOf counts the distinct transactions that wrote the ledger
// entries under keys.
func (f batchFixture) transactionsOf(t *testing.T, keys ...string) (entries, transactions int) {
	t.Helper()
	err := f.pool.QueryRow(context.Background(), `
		SELECT count(*), count(DISTINCT xmin::text) FROM credit_transactions WHERE idempotency_key = ANY($1)`,
		keys).Scan(&entries, &transactions)
	if err != nil {
		t.Fatal(err)
	}
	return entries, transactions
}

// TestWriteBatchAnswersEachCall: calls of several accounts queued into one
// batch commit together, and each gets the answer it would get alone: a
// refusal (insufficient, closed, key reused, unknown user) fails nothing
// else; a call whose caller gave up before the batch ran is never
// applied. The books add up afterwards.
func TestWriteBatchAnswersEachCall(t *testing.T) {
	t.Parallel()
	f := newBatchFixture(t)
	calls := f.mixedCalls()
	errs := queueHeld(t, f.st, f.release, calls, map[string]context.CancelFunc{"alice cancelled": nil})
	checkAnswers(t, calls, errs)
	// alice: 10 - 1 (seed) - 2; bob: 10 + 4 - 3; org: 20 - 7.
	if a, b, o := f.balances(t); a != 7 || b != 11 || o != 13 {
		t.Errorf("balances alice %d bob %d org %d, want 7 11 13", a, b, o)
	}
	if n, _ := f.transactionsOf(t, "a-cancelled"); n != 0 {
		t.Errorf("the cancelled call wrote %d entries", n)
	}
	if n, txs := f.transactionsOf(t, "a1", "o1", "b2", "b3"); n != 4 || txs != 1 {
		t.Errorf("applied calls: %d entries in %d transactions, want 4 in 1 (one group commit)", n, txs)
	}
	checkBooks(t, f.pool)
}

// TestWriteBatchFallsBackOnError: a call that fails with an error (not a
// status) rolls its batch back; every call then runs on its own and gets
// its own answer, the failing one its error.
func TestWriteBatchFallsBackOnError(t *testing.T) {
	t.Parallel()
	f := newBatchFixture(t)
	calls := f.mixedCalls()
	broken := batchCall{"division by zero", func(ctx context.Context) (users.CreditWriteResult, error) {
		var x int64
		return users.CreditWriteResult{}, store.BatchedDBTX(f.st, "u:"+f.bob).QueryRow(ctx, `SELECT 1 / (random() * 0)::bigint`).Scan(&x)
	}, func(_ users.CreditWriteResult, err error) error {
		if pgErr := (*pgconn.PgError)(nil); !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.DivisionByZero {
			return fmt.Errorf("error %v, want division by zero", err)
		}
		return nil
	}}
	calls = append(calls[:3], append([]batchCall{broken}, calls[3:]...)...)
	errs := queueHeld(t, f.st, f.release, calls, map[string]context.CancelFunc{"alice cancelled": nil})
	checkAnswers(t, calls, errs)
	if a, b, o := f.balances(t); a != 7 || b != 11 || o != 13 {
		t.Errorf("balances alice %d bob %d org %d, want 7 11 13", a, b, o)
	}
	if n, txs := f.transactionsOf(t, "a1", "o1", "b2", "b3"); n != 4 || txs != 4 {
		t.Errorf("applied calls: %d entries in %d transactions, want 4 in 4 (each on its own)", n, txs)
	}
	checkBooks(t, f.pool)
}

// TestConcurrentBatchedWritesAnswerTheirOwnCall: many callers race
// deductions and grants on a few personal and organization accounts,
// with repeated keys, through two stores (as two replicas: their batches
// of one account race for its row lock, which one store's lanes never
// do); every answer is about the caller's own account, amount and key
// (no cross-talk between the calls of a batch), and the books add up.
func TestConcurrentBatchedWritesAnswerTheirOwnCall(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	ctx := context.Background()
	stores := []*store.Store{store.New(pool, store.Options{}), store.New(pool, store.Options{})}
	svc := users.NewService(stores[0], users.Options{InitialCredits: 30})
	type account struct{ user, org string }
	var accounts []account
	for i := range 3 {
		id := fmt.Sprintf("user_race%d", i)
		if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id}); err != nil {
			t.Fatal(err)
		}
		accounts = append(accounts, account{user: id})
		org := fmt.Sprintf("org_race%d", i)
		newOrgAccount(t, pool, org, 30)
		accounts = append(accounts, account{org: org})
	}
	const workers, each = 24, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 2))
			st := stores[w%len(stores)]
			for range each {
				a := accounts[r.IntN(len(accounts))]
				delta := int64(1 + r.IntN(9))
				kind := users.TxGrant
				if r.IntN(3) > 0 {
					delta, kind = -delta, users.TxDeduct
				}
				// Keys repeat across workers: replays and reuse race too.
				key := fmt.Sprintf("k%d", r.IntN(workers*each/3))
				var res users.CreditWriteResult
				var err error
				if a.org != "" {
					var o users.OrgSpendResult
					o, err = st.OrgChangeCredits(ctx, users.OrgCreditWrite{ClerkOrgID: a.org, Service: "svc", Kind: kind, Delta: delta, Reason: "r", IdempotencyKey: key})
					res = o.CreditWriteResult
				} else {
					res, err = st.ChangeCredits(ctx, users.CreditWrite{ClerkUserID: a.user, Kind: kind, Delta: delta, Reason: "r", IdempotencyKey: key})
				}
				if err != nil {
					errs <- fmt.Errorf("%+v %d %s: %w", a, delta, key, err)
					continue
				}
				switch res.Status {
				case users.WriteApplied, users.WriteReplayed:
					tx := res.Transaction
					if tx.Delta != delta || tx.IdempotencyKey != key || tx.Kind != kind {
						errs <- fmt.Errorf("%+v %d %s: answered with entry %+v", a, delta, key, tx)
					}
					var owner string
					if err := pool.QueryRow(ctx, `SELECT coalesce(u.clerk_user_id, o.clerk_org_id) FROM accounts a
						LEFT JOIN users u ON u.id = a.owner_user_id LEFT JOIN organizations o ON o.id = a.organization_id
						WHERE a.id = $1`, tx.AccountID).Scan(&owner); err != nil || owner != a.user+a.org {
						errs <- fmt.Errorf("%+v %d %s: answered with an entry of %q (%v)", a, delta, key, owner, err)
					}
				case users.WriteInsufficient, users.WriteKeyReused:
				default:
					errs <- fmt.Errorf("%+v %d %s: status %s", a, delta, key, res.Status)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkBooks(t, pool)
}

// TestWriteQueueBound: while the database does not take batches (a held
// batch stands for a frozen one), a lane queues up to its bound and then
// refuses further writes at once with UNAVAILABLE, changing nothing; the
// queued calls still apply once batches run again.
func TestWriteQueueBound(t *testing.T) {
	t.Parallel()
	f := newBatchFixture(t)
	store.SetWriteQueueLimit(f.st, 3)
	ctx := context.Background()
	before, err := f.st.GetLiveUserByClerkID(ctx, f.alice)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	queued := make([]error, 3)
	for i := range queued {
		wg.Go(func() {
			res, err := f.personal(f.alice, -1, fmt.Sprintf("q%d", i))(ctx)
			queued[i] = wantStatus(users.WriteApplied, -1)(res, err)
		})
		testwait.Until(t, 10*time.Second, "call queued", func() bool { return store.QueuedWrites(f.st) == i+1 })
	}
	if _, err := f.personal(f.alice, -1, "over")(ctx); apperr.KindOf(err) != apperr.KindUnavailable {
		t.Errorf("a write past the queue's bound: %v, want Unavailable", err)
	}
	if u, err := f.st.GetLiveUserByClerkID(ctx, f.alice); err != nil || u.Credits != before.Credits {
		t.Errorf("balance %d (%v) with every write queued or refused, want %d", u.Credits, err, before.Credits)
	}
	f.release()
	wg.Wait()
	for i, err := range queued {
		if err != nil {
			t.Errorf("queued call %d: %v", i, err)
		}
	}
	if u, err := f.st.GetLiveUserByClerkID(ctx, f.alice); err != nil || u.Credits != before.Credits-3 {
		t.Errorf("balance %d (%v) after the queue ran, want %d (the refused write not applied)", u.Credits, err, before.Credits-3)
	}
}
