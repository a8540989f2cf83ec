package users_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// connect opens a pool of 4 connections on url with the session settings
// params, closed at cleanup.
func connect(t *testing.T, url string, params map[string]string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range params {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func setPrice(t *testing.T, b bundle, action string, credits int64, by string) users.SetPriceResult {
	t.Helper()
	res, err := b.svc.SetPrice(context.Background(), users.SetPriceInput{Action: action, Credits: credits, ChangedBy: by})
	if err != nil {
		t.Fatalf("SetPrice(%s, %d): %v", action, credits, err)
	}
	return res
}

func TestSetPriceIsAudited(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	first := setPrice(t, b, "render", 2, "service:billing")
	if first.Change == nil || first.Change.PreviousCredits != 0 || first.Price.Credits != 2 || first.Price.UpdatedBy != "service:billing" {
		t.Errorf("first SetPrice = %+v, change %+v", first.Price, first.Change)
	}
	again := setPrice(t, b, "render", 2, "service:other")
	if again.Change != nil || again.Price != first.Price {
		t.Errorf("setting the same price = %+v, change %+v; want nothing changed", again.Price, again.Change)
	}
	second := setPrice(t, b, "render", 3, "service:pricing")
	setPrice(t, b, "export", 5, "service:billing")
	if second.Change == nil || second.Change.PreviousCredits != 2 || second.Price.Credits != 3 ||
		second.Price.UpdatedBy != "service:pricing" || !second.Price.CreatedAt.Equal(first.Price.CreatedAt) ||
		!second.Price.UpdatedAt.After(first.Price.UpdatedAt) {
		t.Errorf("second SetPrice = %+v, change %+v", second.Price, second.Change)
	}

	page, err := b.svc.ListPriceChanges(ctx, "render", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []users.PriceChange{*second.Change, *first.Change}
	if diff := cmp.Diff(want, page.Changes); diff != "" || page.NextPageToken != "" {
		t.Errorf("render's history (-want +got):\n%s (next %q)", diff, page.NextPageToken)
	}
	// All actions, one per page, newest first.
	var all []string
	tok := ""
	for {
		page, err := b.svc.ListPriceChanges(ctx, "", 1, tok)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range page.Changes {
			all = append(all, fmt.Sprintf("%s:%d->%d by %s", c.Action, c.PreviousCredits, c.Credits, c.ChangedBy))
		}
		if tok = page.NextPageToken; tok == "" {
			break
		}
	}
	wantAll := []string{"export:0->5 by service:billing", "render:2->3 by service:pricing", "render:0->2 by service:billing"}
	if diff := cmp.Diff(wantAll, all); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}

	var actions []string
	tok = ""
	for {
		page, err := b.svc.ListPrices(ctx, 1, tok)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range page.Prices {
			actions = append(actions, fmt.Sprintf("%s=%d", p.Action, p.Credits))
		}
		if tok = page.NextPageToken; tok == "" {
			break
		}
	}
	if diff := cmp.Diff([]string{"export=5", "render=3"}, actions); diff != "" {
		t.Errorf("prices (-want +got):\n%s", diff)
	}
}

func TestDeductForActionChargesTheCurrentPriceAndReplaysTheOriginal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_priced")
	setPrice(t, b, "render", 2, "service:test")
	first, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_priced", Action: "render", IdempotencyKey: "job-1"})
	if err != nil {
		t.Fatal(err)
	}
	if first.Delta != -2 || first.Reason != "render" || first.Kind != users.TxDeduct || first.BalanceAfter != 8 {
		t.Errorf("deduction = %+v, want 2 credits for render", first)
	}

	setPrice(t, b, "render", 5, "service:test")
	replay, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_priced", Action: "render", IdempotencyKey: "job-1"})
	if err != nil || replay.Transaction != first.Transaction || !replay.Replayed {
		t.Errorf("replay after a price change = %+v, %v; want the original %+v, replayed", replay, err, first)
	}
	next, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_priced", Action: "render", IdempotencyKey: "job-2"})
	if err != nil || next.Delta != -5 || next.BalanceAfter != 3 {
		t.Errorf("deduction at the new price = %+v, %v; want 5 credits", next, err)
	}

	// The price is the required amount when the balance falls short, and a
	// replay still answers with the original entry.
	_, err = b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_priced", Action: "render", IdempotencyKey: "job-3"})
	e := wantKind(t, err, apperr.KindInsufficientCredits)
	if e.Metadata["required"] != "5" || e.Metadata["available"] != "3" {
		t.Errorf("insufficient = %+v, want required 5, available 3", e.Metadata)
	}
	if replay, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_priced", Action: "render", IdempotencyKey: "job-2"}); err != nil || replay.Transaction != next.Transaction || !replay.Replayed {
		t.Errorf("replay with a low balance = %+v, %v; want %+v", replay, err, next)
	}

	// One key space: a deduction by action and one by amount never replay
	// each other, even for the same credits and reason.
	conflicts := []users.CreditChange{
		{ClerkUserID: "user_priced", Amount: 2, Reason: "render", IdempotencyKey: "job-1"},
		{ClerkUserID: "user_priced", Action: "export", IdempotencyKey: "job-1"},
	}
	setPrice(t, b, "export", 1, "service:test")
	if _, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_priced", Amount: 1, Reason: "export", IdempotencyKey: "amount-1"}); err != nil {
		t.Fatal(err)
	}
	conflicts = append(conflicts, users.CreditChange{ClerkUserID: "user_priced", Action: "export", IdempotencyKey: "amount-1"})
	for _, c := range conflicts {
		_, err := b.svc.DeductCredits(ctx, c)
		if e := wantKind(t, err, apperr.KindConflict); e.Reason != apperr.ReasonIdempotencyKeyReused {
			t.Errorf("%+v: %v, want the key reused", c, err)
		}
	}
	if _, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_priced", Amount: 2, IdempotencyKey: "job-1"}); apperr.KindOf(err) != apperr.KindConflict {
		t.Errorf("a grant reusing a deduction's key: %v", err)
	}
	ts := checkInvariants(t, b, "user_priced")
	if len(ts) != 4 {
		t.Errorf("ledger has %d entries, want 4: %+v", len(ts), ts)
	}
}

func TestUnknownActionChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_unknown")
	setPrice(t, b, "render", 2, "service:test")
	before := checkInvariants(t, b, "user_unknown")
	for _, clerkID := range []string{"user_unknown", "user_nobody"} {
		_, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Action: "rendr", IdempotencyKey: "k"})
		e := wantKind(t, err, apperr.KindInvalidArgument)
		if len(e.Violations) != 1 || e.Violations[0].Field != "action" || e.Reason != apperr.ReasonUnknownAction {
			t.Errorf("%s: %+v, want a violation of action and reason %s", clerkID, e, apperr.ReasonUnknownAction)
		}
		_, err = b.svc.CanAfford(ctx, clerkID, users.Cost{Action: "rendr"})
		wantKind(t, err, apperr.KindInvalidArgument)
	}
	if diff := cmp.Diff(before, checkInvariants(t, b, "user_unknown")); diff != "" {
		t.Errorf("ledger changed (-before +after):\n%s", diff)
	}
	// The key was not claimed: it still works for a real deduction.
	if tx, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_unknown", Action: "render", IdempotencyKey: "k"}); err != nil || tx.Delta != -2 {
		t.Errorf("deduction with the key an unknown action was tried with = %+v, %v", tx, err)
	}
}

func TestCanAfford(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_afford")
	setPrice(t, b, "render", 10, "service:test")
	setPrice(t, b, "export", 11, "service:test")
	for _, c := range []struct {
		cost users.Cost
		want users.Affordability
	}{
		{users.Cost{Amount: 10}, users.Affordability{Required: 10, Available: 10, Allowed: true}},
		{users.Cost{Amount: 11}, users.Affordability{Required: 11, Available: 10, Allowed: false}},
		{users.Cost{Action: "render"}, users.Affordability{Required: 10, Available: 10, Allowed: true}},
		{users.Cost{Action: "export"}, users.Affordability{Required: 11, Available: 10, Allowed: false}},
	} {
		got, err := b.svc.CanAfford(ctx, "user_afford", c.cost)
		if err != nil || got != c.want {
			t.Errorf("CanAfford(%+v) = %+v, %v; want %+v", c.cost, got, err, c.want)
		}
	}
	_, err := b.svc.CanAfford(ctx, "user_nobody", users.Cost{Action: "render"})
	wantKind(t, err, apperr.KindNotFound)
	checkInvariants(t, b, "user_afford")
	if u := mustUser(t, b, "user_afford"); u.Credits != 10 {
		t.Errorf("CanAfford changed the balance to %d", u.Credits)
	}
}

func TestPricesBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_pbad")
	setPrice(t, b, "render", 2, "service:test")
	before := checkInvariants(t, b, "user_pbad")
	long := strings.Repeat("a", users.MaxAction+1)
	deduct := func(c users.CreditChange) func() error {
		return func() error {
			c.ClerkUserID, c.IdempotencyKey = "user_pbad", "k"
			_, err := b.svc.DeductCredits(ctx, c)
			return err
		}
	}
	cases := []struct {
		name  string
		call  func() error
		field string
	}{
		{"DeductNeitherAmountNorAction", deduct(users.CreditChange{}), "amount"},
		{"DeductAmountAndAction", deduct(users.CreditChange{Amount: 2, Action: "render"}), "action"},
		{"DeductNegativeAmountAndAction", deduct(users.CreditChange{Amount: -2, Action: "render"}), "action"},
		{"DeductActionWithReason", deduct(users.CreditChange{Action: "render", Reason: "why"}), "reason"},
		{"DeductActionUppercase", deduct(users.CreditChange{Action: "Render"}), "action"},
		{"DeductActionWithColon", deduct(users.CreditChange{Action: "render:4k"}), "action"},
		{"DeductActionWithSlash", deduct(users.CreditChange{Action: "render/4k"}), "action"},
		{"DeductActionTooLong", deduct(users.CreditChange{Action: long}), "action"},
		{"DeductUnknownAction", deduct(users.CreditChange{Action: "renders"}), "action"},
		{"GrantWithAction", func() error {
			_, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_pbad", Amount: 1, Action: "render", IdempotencyKey: "k"})
			return err
		}, "action"},
		{"SetPriceZero", func() error {
			_, err := b.svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: 0, ChangedBy: "service:test"})
			return err
		}, "credits"},
		{"SetPriceNegative", func() error {
			_, err := b.svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: -1, ChangedBy: "service:test"})
			return err
		}, "credits"},
		{"SetPriceTooLarge", func() error {
			_, err := b.svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: users.MaxAmount + 1, ChangedBy: "service:test"})
			return err
		}, "credits"},
		{"SetPriceNoAction", func() error {
			_, err := b.svc.SetPrice(ctx, users.SetPriceInput{Credits: 1, ChangedBy: "service:test"})
			return err
		}, "action"},
		{"SetPriceBadAction", func() error {
			_, err := b.svc.SetPrice(ctx, users.SetPriceInput{Action: "9lives", Credits: 1, ChangedBy: "service:test"})
			return err
		}, "action"},
		{"ListPricesPageSize", func() error { _, err := b.svc.ListPrices(ctx, users.MaxPricePageSize+1, ""); return err }, "page_size"},
		{"ListPricesToken", func() error { _, err := b.svc.ListPrices(ctx, 0, "garbage"); return err }, "page_token"},
		{"ListPricesForeignToken", func() error {
			page, err := b.svc.ListCreditTransactions(ctx, "user_pbad", 1, "")
			if err != nil {
				return err
			}
			_, err = b.svc.ListPrices(ctx, 0, page.NextPageToken+"x")
			return err
		}, "page_token"},
		{"ListPriceChangesBadAction", func() error { _, err := b.svc.ListPriceChanges(ctx, "A", 0, ""); return err }, "action"},
		{"ListPriceChangesPageSize", func() error { _, err := b.svc.ListPriceChanges(ctx, "", -1, ""); return err }, "page_size"},
		{"CanAffordNothing", func() error { _, err := b.svc.CanAfford(ctx, "user_pbad", users.Cost{}); return err }, "amount"},
		{"CanAffordBoth", func() error {
			_, err := b.svc.CanAfford(ctx, "user_pbad", users.Cost{Amount: 1, Action: "render"})
			return err
		}, "action"},
		{"CanAffordBadUser", func() error { _, err := b.svc.CanAfford(ctx, "alice", users.Cost{Amount: 1}); return err }, "clerk_user_id"},
	}
	for _, c := range cases {
		err := c.call()
		e := wantKind(t, err, apperr.KindInvalidArgument)
		if len(e.Violations) == 0 || e.Violations[0].Field != c.field {
			t.Errorf("%s: violations = %+v, want field %q", c.name, e.Violations, c.field)
		}
	}
	// Nothing changed: the ledger, the price list and its history.
	if diff := cmp.Diff(before, checkInvariants(t, b, "user_pbad")); diff != "" {
		t.Errorf("ledger changed (-before +after):\n%s", diff)
	}
	prices, err := b.svc.ListPrices(ctx, 0, "")
	if err != nil || len(prices.Prices) != 1 || prices.Prices[0].Credits != 2 {
		t.Errorf("prices = %+v, %v; want render=2 only", prices, err)
	}
	changes, err := b.svc.ListPriceChanges(ctx, "", 0, "")
	if err != nil || len(changes.Changes) != 1 {
		t.Errorf("price changes = %+v, %v; want the one that created render", changes, err)
	}
}

// commitWitness installs, in the test's own database, a record of the
// order in which ledger entries and price changes commit: a deferred
// trigger on each table takes the next number of a one-row counter as the
// last thing its transaction does, and the counter's row lock, held until
// commit, hands the numbers out in commit order.
func commitWitness(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `
		CREATE TABLE test_commit_counter (n bigint NOT NULL);
		INSERT INTO test_commit_counter VALUES (0);
		CREATE TABLE test_commit_order (n bigint PRIMARY KEY, tbl text NOT NULL, id bigint NOT NULL);
		CREATE FUNCTION test_record_commit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			WITH c AS (UPDATE test_commit_counter SET n = n + 1 RETURNING n)
			INSERT INTO test_commit_order SELECT c.n, TG_TABLE_NAME, NEW.id FROM c;
			RETURN NULL;
		END
		$$;
		CREATE CONSTRAINT TRIGGER test_ledger_commit AFTER INSERT ON credit_transactions
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_record_commit();
		CREATE CONSTRAINT TRIGGER test_price_commit AFTER INSERT ON price_changes
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_record_commit();`)
	if err != nil {
		t.Fatalf("install the commit witness: %v", err)
	}
}

// wrongCharges replays the committed history in commit order and returns
// every deduction by action that charged a price other than the one in
// effect (per the audit history) when it committed, and how many
// deductions by action it checked.
func wrongCharges(t *testing.T, pool *pgxpool.Pool, action string) (wrong []string, checked int) {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT o.n, o.tbl, coalesce(pc.credits, -t.delta), t.id IS NOT NULL AND k.operation = 'DEDUCT_ACTION'
		FROM test_commit_order o
		LEFT JOIN price_changes pc ON o.tbl = 'price_changes' AND pc.id = o.id AND pc.action = $1
		LEFT JOIN credit_transactions t ON o.tbl = 'credit_transactions' AND t.id = o.id AND t.reason = $1
		LEFT JOIN idempotency_keys k ON k.user_id = t.user_id AND k.idempotency_key = t.idempotency_key
		WHERE pc.id IS NOT NULL OR t.id IS NOT NULL
		ORDER BY o.n`, action)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	price := int64(0)
	for rows.Next() {
		var (
			n, credits int64
			tbl        string
			byAction   bool
		)
		if err := rows.Scan(&n, &tbl, &credits, &byAction); err != nil {
			t.Fatal(err)
		}
		switch {
		case tbl == "price_changes":
			price = credits
		case byAction:
			checked++
			if credits != price {
				wrong = append(wrong, fmt.Sprintf("commit %d charged %d while the price was %d", n, credits, price))
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return wrong, checked
}

// racePricesAndDeductions runs deductions of "render" for several users
// (keys prefixed with round) while one goroutine keeps changing its price
// (1, 2, 3, ...), and returns how many deductions and price changes it
// made.
func racePricesAndDeductions(t *testing.T, svc *users.Service, round string, perUser int) (deductions, changes int64) {
	t.Helper()
	ctx := context.Background()
	const deducters = 6
	for u := range deducters {
		id := fmt.Sprintf("user_race%d", u)
		if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: id, Amount: users.MaxAmount, IdempotencyKey: "fund"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: 1, ChangedBy: "service:racer"}); err != nil {
		t.Fatal(err)
	}
	var (
		wg       sync.WaitGroup
		done     = make(chan struct{})
		deducted atomic.Int64
		changed  atomic.Int64
		errs     = make(chan error, deducters+1)
	)
	wg.Go(func() {
		for price := int64(2); ; price++ {
			select {
			case <-done:
				return
			default:
			}
			if _, err := svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: price, ChangedBy: "service:racer"}); err != nil {
				errs <- err
				return
			}
			changed.Add(1)
		}
	})
	var deducting sync.WaitGroup
	for u := range deducters {
		deducting.Go(func() {
			for i := range perUser {
				c := users.CreditChange{ClerkUserID: fmt.Sprintf("user_race%d", u), Action: "render", IdempotencyKey: fmt.Sprintf("%s-job-%d", round, i)}
				if _, err := svc.DeductCredits(ctx, c); err != nil {
					errs <- err
					return
				}
				deducted.Add(1)
			}
		})
	}
	deducting.Wait()
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return deducted.Load(), changed.Load()
}

// TestPriceChangesRacingDeductions: while the price of an action keeps
// changing, every deduction charges exactly the price in effect when it
// committed (per the audit history, in commit order), and a retry of each
// returns what it charged then.
func TestPriceChangesRacingDeductions(t *testing.T) {
	t.Parallel()
	pool := connect(t, testdb.URL(t), map[string]string{"synchronous_commit": "off"})
	commitWitness(t, pool)
	b := bundle{svc: users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: users.DefaultInitialCredits}), store: store.New(pool, store.Options{})}
	deductions, changes := racePricesAndDeductions(t, b.svc, "r", 60)
	wrong, checked := wrongCharges(t, pool, "render")
	for _, w := range wrong {
		t.Error(w)
	}
	if checked != int(deductions) || changes < 10 {
		t.Errorf("checked %d of %d deductions against %d price changes; want all, and 10 changes or more", checked, deductions, changes)
	}
	t.Logf("%d deductions, %d price changes, all charged the price in effect at their commit", deductions, changes)

	// Retries replay the original charges, at today's (higher) price.
	ctx := context.Background()
	for u := range 6 {
		id := fmt.Sprintf("user_race%d", u)
		entries := checkInvariants(t, b, id)
		for _, tx := range entries {
			if tx.Kind != users.TxDeduct {
				continue
			}
			again, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: id, Action: "render", IdempotencyKey: tx.IdempotencyKey})
			if err != nil || again.Transaction != tx || !again.Replayed {
				t.Fatalf("retry of %+v = %+v, %v", tx, again, err)
			}
		}
		if diff := cmp.Diff(entries, checkInvariants(t, b, id), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: retries changed the ledger (-before +after):\n%s", id, diff)
		}
	}
}

// TestPriceRaceCheckCatchesALostLock proves that the check above can fail:
// with the share lock taken out of userd_personal_deduct_for_action (a mutation of
// this test's own database), the same race must produce deductions that
// charged a price no longer in effect when they committed.
func TestPriceRaceCheckCatchesALostLock(t *testing.T) {
	t.Parallel()
	pool := connect(t, testdb.URL(t), map[string]string{"synchronous_commit": "off"})
	ctx := context.Background()
	var def string
	if err := pool.QueryRow(ctx, `SELECT pg_get_functiondef('userd_personal_deduct_for_action'::regproc)`).Scan(&def); err != nil {
		t.Fatal(err)
	}
	if strings.Count(def, "FOR SHARE") != 1 {
		t.Fatal("userd_personal_deduct_for_action has no one FOR SHARE to remove")
	}
	if _, err := pool.Exec(ctx, strings.Replace(def, "FOR SHARE", "", 1)); err != nil {
		t.Fatalf("install the mutant: %v", err)
	}
	commitWitness(t, pool)
	svc := users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: users.DefaultInitialCredits})
	var wrong []string
	deadline := time.Now().Add(time.Minute)
	for round := 0; len(wrong) == 0 && time.Now().Before(deadline); round++ {
		racePricesAndDeductions(t, svc, fmt.Sprint("r", round), 60)
		wrong, _ = wrongCharges(t, pool, "render")
	}
	if len(wrong) == 0 {
		t.Error("without the share lock, racing price changes never made a deduction charge a stale price: the check cannot catch a lost lock")
	} else {
		t.Logf("the check caught the lost lock: %d stale charges, first: %s", len(wrong), wrong[0])
	}
}
