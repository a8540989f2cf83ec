package users_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

type bundle struct {
	svc   *users.Service
	store *store.Store
}

func setup(t *testing.T) bundle {
	t.Helper()
	st := store.New(testdb.Pool(t), store.Options{})
	return bundle{svc: users.NewService(st, users.Options{InitialCredits: users.DefaultInitialCredits}), store: st}
}

func ensure(t *testing.T, b bundle, clerkID string) users.User {
	t.Helper()
	u, _, err := b.svc.EnsureUser(context.Background(), users.EnsureUserInput{ClerkUserID: clerkID})
	if err != nil {
		t.Fatalf("EnsureUser(%s): %v", clerkID, err)
	}
	return u
}

// ledger returns the user's whole ledger, oldest first.
func ledger(t *testing.T, b bundle, u users.User) []users.Transaction {
	t.Helper()
	ts, err := b.store.ListCreditTransactions(context.Background(), u.ID, 0, 1<<30)
	if err != nil {
		t.Fatalf("ListCreditTransactions: %v", err)
	}
	for i, j := 0, len(ts)-1; i < j; i, j = i+1, j-1 {
		ts[i], ts[j] = ts[j], ts[i]
	}
	return ts
}

// checkInvariants asserts, for the user's current row and ledger, that the
// balance equals the sum of deltas, that every entry's balance_after is the
// running sum up to it (so no intermediate balance was negative or skipped),
// and that no idempotency key appears twice. It returns the ledger.
func checkInvariants(t *testing.T, b bundle, clerkID string) []users.Transaction {
	t.Helper()
	ts, problems := readInvariants(t, b, clerkID)
	for _, p := range problems {
		t.Error(p)
	}
	return ts
}

// invariantViolations is checkInvariants' findings, without failing.
func invariantViolations(t *testing.T, b bundle, clerkID string) []string {
	t.Helper()
	_, problems := readInvariants(t, b, clerkID)
	return problems
}

func readInvariants(t *testing.T, b bundle, clerkID string) ([]users.Transaction, []string) {
	t.Helper()
	u, err := b.store.GetUserByClerkIDIncludingDeleted(context.Background(), clerkID)
	if err != nil {
		t.Fatalf("get %s: %v", clerkID, err)
	}
	ts := ledger(t, b, u)
	var (
		sum      int64
		problems []string
	)
	keys := map[string]bool{}
	for i, tx := range ts {
		sum += tx.Delta
		if tx.BalanceAfter != sum {
			problems = append(problems, fmt.Sprintf("%s: entry %d (id %d) balance_after = %d, running sum = %d", clerkID, i, tx.ID, tx.BalanceAfter, sum))
		}
		if sum < 0 {
			problems = append(problems, fmt.Sprintf("%s: balance went negative (%d) at entry id %d", clerkID, sum, tx.ID))
		}
		if tx.IdempotencyKey != "" {
			if keys[tx.IdempotencyKey] {
				problems = append(problems, fmt.Sprintf("%s: idempotency key %q applied twice", clerkID, tx.IdempotencyKey))
			}
			keys[tx.IdempotencyKey] = true
		}
	}
	if u.Credits != sum {
		problems = append(problems, fmt.Sprintf("%s: credits = %d, ledger sum = %d", clerkID, u.Credits, sum))
	}
	return ts, problems
}

func wantKind(t *testing.T, err error, want apperr.Kind) *apperr.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want kind %v", want)
	}
	e, ok := apperr.As(err)
	if !ok || e.Kind != want {
		t.Fatalf("err = %v (kind %v), want kind %v", err, apperr.KindOf(err), want)
	}
	return e
}

func TestEnsureUserCreatesFreeUserWithInitialCreditsInLedger(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	in := users.EnsureUserInput{
		ClerkUserID: "user_2hZkA7sFq4TnLw9PcXe1VbM0rYu",
		Email:       "Ada@Example.com",
		FirstName:   "Ada",
		LastName:    "Lovelace",
		ImageURL:    "https://img.clerk.com/abc",
	}
	u, created, err := b.svc.EnsureUser(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Error("created = false for a new user")
	}
	got := users.User{ClerkUserID: u.ClerkUserID, Email: u.Email, FirstName: u.FirstName, LastName: u.LastName,
		ImageURL: u.ImageURL, Plan: u.Plan, Credits: u.Credits}
	want := users.User{ClerkUserID: in.ClerkUserID, Email: in.Email, FirstName: "Ada", LastName: "Lovelace",
		ImageURL: in.ImageURL, Plan: users.PlanFree, Credits: 10}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("user (-want +got):\n%s", diff)
	}
	ts := checkInvariants(t, b, in.ClerkUserID)
	if len(ts) != 1 || ts[0].Kind != users.TxInitial || ts[0].Delta != 10 || ts[0].IdempotencyKey != "" {
		t.Errorf("ledger = %+v, want one INITIAL entry of 10", ts)
	}

	// A second call returns the stored user unchanged, even with other data.
	again, created, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: in.ClerkUserID, FirstName: "Other"})
	if err != nil {
		t.Fatal(err)
	}
	if created || again.ID != u.ID || again.FirstName != "Ada" {
		t.Errorf("second EnsureUser = %+v, created=%v; want the original user, created=false", again, created)
	}
}

func TestEnsureUserConfiguredInitialCredits(t *testing.T) {
	t.Parallel()
	st := store.New(testdb.Pool(t), store.Options{})
	for _, initial := range []int64{0, 250} {
		svc := users.NewService(st, users.Options{InitialCredits: initial})
		id := fmt.Sprintf("user_initial%d", initial)
		u, _, err := svc.EnsureUser(context.Background(), users.EnsureUserInput{ClerkUserID: id})
		if err != nil {
			t.Fatal(err)
		}
		if u.Credits != initial {
			t.Errorf("initial %d: credits = %d", initial, u.Credits)
		}
		checkInvariants(t, bundle{svc: svc, store: st}, id)
	}
}

func TestEnsureUserConcurrentCallsCreateExactlyOne(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const calls = 1000
	const clerkID = "user_concurrent"
	var (
		createdCount atomic.Int32
		wg           sync.WaitGroup
		ids          sync.Map
		errs         = make(chan error, calls)
		start        = make(chan struct{})
	)
	for range calls {
		wg.Go(func() {
			<-start
			u, created, err := b.svc.EnsureUser(context.Background(), users.EnsureUserInput{ClerkUserID: clerkID, Email: "c@example.com"})
			if err != nil {
				errs <- err
				return
			}
			if created {
				createdCount.Add(1)
			}
			ids.Store(u.ID, true)
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("EnsureUser: %v", err)
	}
	if n := createdCount.Load(); n != 1 {
		t.Errorf("%d calls reported created, want exactly 1", n)
	}
	distinct := 0
	ids.Range(func(any, any) bool { distinct++; return true })
	if distinct != 1 {
		t.Errorf("calls returned %d distinct user ids, want 1", distinct)
	}
	if ts := checkInvariants(t, b, clerkID); len(ts) != 1 {
		t.Errorf("ledger has %d entries, want 1", len(ts))
	}
}

func TestEnsureUserEmailHeldByAnotherLiveUser(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, _, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_a", Email: "same@example.com"}); err != nil {
		t.Fatal(err)
	}
	_, _, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_b", Email: "SAME@example.com"})
	e := wantKind(t, err, apperr.KindConflict)
	if e.Reason != apperr.ReasonEmailInUse {
		t.Errorf("reason = %q, want %q", e.Reason, apperr.ReasonEmailInUse)
	}
	if _, err := b.store.GetUserByClerkIDIncludingDeleted(ctx, "user_b"); !errors.Is(err, users.ErrNoRow) {
		t.Errorf("user_b was stored after the conflict (err %v)", err)
	}
}

func TestGetUserLookups(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	u, _, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_lookup", Email: "Look.Up@Example.com"})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []users.Lookup{
		{ClerkUserID: "user_lookup"},
		{ID: u.ID.String()},
		{Email: "look.up@example.com"},
		{Email: "LOOK.UP@EXAMPLE.COM"},
	} {
		got, err := b.svc.GetUser(ctx, l)
		if err != nil {
			t.Errorf("GetUser(%+v): %v", l, err)
			continue
		}
		if got.ID != u.ID {
			t.Errorf("GetUser(%+v) = %s, want %s", l, got.ID, u.ID)
		}
	}
	for _, l := range []users.Lookup{
		{ClerkUserID: "user_missing"},
		{ID: "00000000-0000-4000-8000-000000000000"},
		{Email: "nobody@example.com"},
	} {
		_, err := b.svc.GetUser(ctx, l)
		wantKind(t, err, apperr.KindNotFound)
	}
}

func TestDeductCredits(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_deduct")

	t1, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_deduct", Amount: 3, IdempotencyKey: "k1", Reason: "render"})
	if err != nil {
		t.Fatal(err)
	}
	if t1.Delta != -3 || t1.BalanceAfter != 7 || t1.Kind != users.TxDeduct || t1.Reason != "render" {
		t.Errorf("transaction = %+v, want delta -3, balance 7", t1)
	}

	t.Run("RetryReplaysOriginal", func(t *testing.T) {
		again, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_deduct", Amount: 3, IdempotencyKey: "k1", Reason: "render"})
		if err != nil {
			t.Fatal(err)
		}
		if t1.Replayed || !again.Replayed {
			t.Errorf("Replayed: first call %v, retry %v; want false, true", t1.Replayed, again.Replayed)
		}
		if diff := cmp.Diff(t1.Transaction, again.Transaction); diff != "" {
			t.Errorf("replay differs (-first +retry):\n%s", diff)
		}
	})
	t.Run("KeyReusedWithOtherParameters", func(t *testing.T) {
		for _, c := range []users.CreditChange{
			{ClerkUserID: "user_deduct", Amount: 4, IdempotencyKey: "k1", Reason: "render"},
			{ClerkUserID: "user_deduct", Amount: 3, IdempotencyKey: "k1", Reason: "other"},
		} {
			_, err := b.svc.DeductCredits(ctx, c)
			if e := wantKind(t, err, apperr.KindConflict); e.Reason != apperr.ReasonIdempotencyKeyReused {
				t.Errorf("reason = %q", e.Reason)
			}
		}
		// A grant with a deduction's key is another operation, too.
		_, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_deduct", Amount: 3, IdempotencyKey: "k1", Reason: "render"})
		wantKind(t, err, apperr.KindConflict)
	})
	t.Run("InsufficientChangesNothing", func(t *testing.T) {
		before := checkInvariants(t, b, "user_deduct")
		_, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_deduct", Amount: 8, IdempotencyKey: "k2"})
		e := wantKind(t, err, apperr.KindInsufficientCredits)
		if diff := cmp.Diff(map[string]string{"required": "8", "available": "7"}, e.Metadata); diff != "" {
			t.Errorf("metadata (-want +got):\n%s", diff)
		}
		if e.Reason != apperr.ReasonInsufficientCredits {
			t.Errorf("reason = %q", e.Reason)
		}
		after := checkInvariants(t, b, "user_deduct")
		if diff := cmp.Diff(before, after); diff != "" {
			t.Errorf("ledger changed (-before +after):\n%s", diff)
		}
		// The failed key was not consumed: it works once credits suffice.
		if _, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_deduct", Amount: 7, IdempotencyKey: "k2"}); err != nil {
			t.Errorf("deducting the whole balance: %v", err)
		}
	})
	t.Run("UnknownUser", func(t *testing.T) {
		_, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_nobody", Amount: 1, IdempotencyKey: "k"})
		wantKind(t, err, apperr.KindNotFound)
	})
}

func TestRacingRetriesApplyOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ensure(t, b, "user_race")
	const racers = 64
	for _, op := range []struct {
		name string
		run  func(context.Context, users.CreditChange) (users.CreditResult, error)
	}{
		{"Deduct", b.svc.DeductCredits},
		{"Grant", b.svc.GrantCredits},
	} {
		var wg sync.WaitGroup
		results := make([]users.CreditResult, racers)
		errs := make([]error, racers)
		for i := range racers {
			wg.Go(func() {
				results[i], errs[i] = op.run(context.Background(), users.CreditChange{
					ClerkUserID: "user_race", Amount: 2, IdempotencyKey: "race-" + op.name,
				})
			})
		}
		wg.Wait()
		applied := 0
		for i := range racers {
			if errs[i] != nil {
				t.Fatalf("%s racer %d: %v", op.name, i, errs[i])
			}
			if results[i].Transaction != results[0].Transaction {
				t.Errorf("%s racer %d got %+v, racer 0 got %+v", op.name, i, results[i], results[0])
			}
			if !results[i].Replayed {
				applied++
			}
		}
		// Exactly one racer applied the change; every other one says it
		// was a replay.
		if applied != 1 {
			t.Errorf("%s: %d racers report applying the change, want exactly 1", op.name, applied)
		}
	}
	// 10 initial - 2 + 2, with exactly three entries.
	ts := checkInvariants(t, b, "user_race")
	if len(ts) != 3 || ts[2].BalanceAfter != 10 {
		t.Errorf("ledger = %+v, want INITIAL, one DEDUCT, one GRANT ending at 10", ts)
	}
}

func TestGrantCredits(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_grant")
	tx, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_grant", Amount: users.MaxAmount, IdempotencyKey: "g1", Reason: "purchase"})
	if err != nil {
		t.Fatal(err)
	}
	if tx.Delta != users.MaxAmount || tx.BalanceAfter != users.MaxAmount+10 || tx.Kind != users.TxGrant {
		t.Errorf("grant = %+v", tx)
	}
	checkInvariants(t, b, "user_grant")
}

func TestSetPlan(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_plan")

	res, err := b.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_plan", Plan: users.PlanPro, BonusCredits: 100, IdempotencyKey: "upgrade-1", Reason: "stripe sub_1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.User.Plan != users.PlanPro || res.User.Credits != 110 || res.Change.PreviousPlan != users.PlanFree {
		t.Errorf("result = %+v", res)
	}
	if res.Bonus == nil || res.Bonus.Kind != users.TxPlanBonus || res.Bonus.Delta != 100 || res.Bonus.BalanceAfter != 110 {
		t.Errorf("bonus = %+v", res.Bonus)
	}

	// Replay: same change and bonus entry, nothing new.
	again, err := b.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_plan", Plan: users.PlanPro, BonusCredits: 100, IdempotencyKey: "upgrade-1", Reason: "stripe sub_1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed || !again.Replayed {
		t.Errorf("Replayed: first call %v, retry %v; want false, true", res.Replayed, again.Replayed)
	}
	again.Replayed = false
	if diff := cmp.Diff(res, again); diff != "" {
		t.Errorf("replay differs (-first +retry):\n%s", diff)
	}
	for _, in := range []users.SetPlanInput{
		{ClerkUserID: "user_plan", Plan: users.PlanEnterprise, BonusCredits: 100, IdempotencyKey: "upgrade-1", Reason: "stripe sub_1"},
		{ClerkUserID: "user_plan", Plan: users.PlanPro, BonusCredits: 0, IdempotencyKey: "upgrade-1", Reason: "stripe sub_1"},
	} {
		_, err := b.svc.SetPlan(ctx, in)
		wantKind(t, err, apperr.KindConflict)
	}

	// Without a bonus: no ledger entry.
	res, err = b.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_plan", Plan: users.PlanFree, IdempotencyKey: "downgrade-1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.User.Plan != users.PlanFree || res.Bonus != nil || res.Change.PreviousPlan != users.PlanPro || res.User.Credits != 110 {
		t.Errorf("downgrade = %+v", res)
	}
	if ts := checkInvariants(t, b, "user_plan"); len(ts) != 2 {
		t.Errorf("ledger has %d entries, want 2", len(ts))
	}

	// One key names one operation, whichever table recorded it.
	_, err = b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_plan", Amount: 1, IdempotencyKey: "downgrade-1"})
	if e := wantKind(t, err, apperr.KindConflict); e.Reason != apperr.ReasonIdempotencyKeyReused {
		t.Errorf("grant with a plan change's key: reason %q", e.Reason)
	}
	if _, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_plan", Amount: 1, IdempotencyKey: "job-9"}); err != nil {
		t.Fatal(err)
	}
	_, err = b.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_plan", Plan: users.PlanPro, IdempotencyKey: "job-9"})
	wantKind(t, err, apperr.KindConflict)
	if ts := checkInvariants(t, b, "user_plan"); len(ts) != 3 {
		t.Errorf("ledger has %d entries after refused reuses, want 3", len(ts))
	}
	if u := mustUser(t, b, "user_plan"); u.Plan != users.PlanFree {
		t.Errorf("plan = %s after a refused SetPlan, want FREE", u.Plan)
	}
}

func TestListCreditTransactionsPages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_pages")
	for i := range 6 {
		if _, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_pages", Amount: int64(i + 1), IdempotencyKey: fmt.Sprintf("p%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	want := ledger(t, b, users.User{ID: mustUser(t, b, "user_pages").ID})
	var got []users.Transaction
	token := ""
	pages := 0
	for {
		page, err := b.svc.ListCreditTransactions(ctx, "user_pages", 3, token)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		got = append(got, page.Transactions...)
		if page.NextPageToken == "" {
			break
		}
		token = page.NextPageToken
	}
	// 7 entries at 3 per page: 3 pages, newest first.
	if pages != 3 {
		t.Errorf("pages = %d, want 3", pages)
	}
	for i, j := 0, len(want)-1; i < j; i, j = i+1, j-1 {
		want[i], want[j] = want[j], want[i]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pages (-want +got):\n%s", diff)
	}
	// The default page size covers them all.
	page, err := b.svc.ListCreditTransactions(ctx, "user_pages", 0, "")
	if err != nil || len(page.Transactions) != 7 || page.NextPageToken != "" {
		t.Errorf("default page: %d entries, token %q, err %v", len(page.Transactions), page.NextPageToken, err)
	}
}

func mustUser(t *testing.T, b bundle, clerkID string) users.User {
	t.Helper()
	u, err := b.store.GetLiveUserByClerkID(context.Background(), clerkID)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestConcurrentMixedOperations hammers a few users with deductions, grants
// and plan changes from many goroutines, reusing idempotency keys on
// purpose, then checks every invariant and that every successful call is in
// the ledger exactly as it was reported.
func TestConcurrentMixedOperations(t *testing.T) {
	if testing.Short() {
		t.Skip("a concurrency stress test: not in -short (make test-fast)")
	}
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	clerkIDs := []string{"user_mix0", "user_mix1", "user_mix2", "user_mix3"}
	for _, id := range clerkIDs {
		ensure(t, b, id)
	}
	const (
		workers      = 32
		opsPerWorker = 100
		keySpace     = 400 // per user; far fewer than the calls, so keys repeat
	)
	type outcome struct {
		clerkID string
		tx      users.Transaction
	}
	var (
		mu         sync.Mutex
		ok         []outcome
		insuff     atomic.Int64
		conflicts  atomic.Int64
		unexpected = make(chan error, workers*opsPerWorker)
		wg         sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range opsPerWorker {
				clerkID := clerkIDs[rng.IntN(len(clerkIDs))]
				k := rng.IntN(keySpace)
				// The key decides the operation and amount, so a repeated
				// key is a true retry; every 7th key is also tried with
				// another amount to provoke conflicts.
				amount := int64(k%5 + 1)
				if rng.IntN(7) == 0 {
					amount++
				}
				key := fmt.Sprintf("key-%d", k)
				var (
					tx  users.Transaction
					err error
				)
				switch k % 4 {
				case 0, 1:
					var r users.CreditResult
					r, err = b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: amount, IdempotencyKey: key})
					tx = r.Transaction
				case 2:
					var r users.CreditResult
					r, err = b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: amount, IdempotencyKey: key})
					tx = r.Transaction
				case 3:
					plans := []users.Plan{users.PlanFree, users.PlanPro, users.PlanEnterprise}
					var res users.SetPlanResult
					res, err = b.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: clerkID, Plan: plans[k%3], BonusCredits: amount, IdempotencyKey: key})
					if err == nil {
						tx = *res.Bonus
					}
				}
				switch apperr.KindOf(err) {
				case apperr.KindInternal:
					if err == nil {
						mu.Lock()
						ok = append(ok, outcome{clerkID, tx})
						mu.Unlock()
						continue
					}
					unexpected <- err
				case apperr.KindInsufficientCredits:
					insuff.Add(1)
				case apperr.KindConflict:
					conflicts.Add(1)
				default:
					unexpected <- err
				}
			}
		})
	}
	wg.Wait()
	close(unexpected)
	for err := range unexpected {
		t.Errorf("unexpected error: %v", err)
	}
	byID := map[int64]users.Transaction{}
	for _, id := range clerkIDs {
		for _, tx := range checkInvariants(t, b, id) {
			byID[tx.ID] = tx
		}
	}
	for _, o := range ok {
		if got, found := byID[o.tx.ID]; !found || got != o.tx {
			t.Errorf("%s: successful call returned %+v, ledger has %+v (found %v)", o.clerkID, o.tx, got, found)
		}
	}
	t.Logf("%d calls: %d ok (incl. replays), %d insufficient, %d key conflicts; %d ledger entries",
		workers*opsPerWorker, len(ok), insuff.Load(), conflicts.Load(), len(byID))
	if insuff.Load() == 0 || conflicts.Load() == 0 {
		t.Errorf("the mix did not exercise insufficient credits (%d) and key conflicts (%d)", insuff.Load(), conflicts.Load())
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_bad")
	before := checkInvariants(t, b, "user_bad")
	long := strings.Repeat("x", 300)
	cases := []struct {
		name  string
		call  func() error
		field string
	}{
		{"DeductZero", func() error {
			_, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_bad", Amount: 0, IdempotencyKey: "k"})
			return err
		}, "amount"},
		{"GrantTooLarge", func() error {
			_, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_bad", Amount: users.MaxAmount + 1, IdempotencyKey: "k"})
			return err
		}, "amount"},
		{"SetPlanNegativeBonus", func() error {
			_, err := b.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_bad", Plan: users.PlanPro, BonusCredits: -1, IdempotencyKey: "k"})
			return err
		}, "bonus_credits"},
		{"SetPlanUnknownPlan", func() error {
			_, err := b.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_bad", Plan: "GOLD", IdempotencyKey: "k"})
			return err
		}, "plan"},
		{"KeyTooLong", func() error {
			_, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_bad", Amount: 1, IdempotencyKey: long})
			return err
		}, "idempotency_key"},
		{"EnsureBadImage", func() error {
			_, _, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_bad2", ImageURL: "javascript:alert(1)"})
			return err
		}, "image_url"},
	}
	for _, c := range cases {
		err := c.call()
		e := wantKind(t, err, apperr.KindInvalidArgument)
		if len(e.Violations) == 0 || e.Violations[0].Field != c.field {
			t.Errorf("%s: violations = %+v, want field %q", c.name, e.Violations, c.field)
		}
	}
	after := checkInvariants(t, b, "user_bad")
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("ledger changed (-before +after):\n%s", diff)
	}
	if _, err := b.store.GetUserByClerkIDIncludingDeleted(ctx, "user_bad2"); !errors.Is(err, users.ErrNoRow) {
		t.Errorf("invalid EnsureUser stored a user (err %v)", err)
	}
}
