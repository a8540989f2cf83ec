package users_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// Tests of issue 21: grants with expiry, the plan catalog and allowances.
// Time: the Service's clock (the job's now, a grant's validity) is a
// testClock; spends and reads decide expiry at the database's clock, so a
// test that needs a grant already due at the database creates it with the
// clock in the past.

// grantBooks is an account's books as stored, read in one snapshot.
type grantBooks struct {
	credits, expiring, ledgerSum, liveRemaining int64
	negativeRemaining                           int
	grants                                      map[int64]grantRow
	kinds                                       map[users.TxKind]int
}

type grantRow struct {
	amount, remaining int64
	expiresAt         time.Time
	expired           bool
	expiredAmount     int64
}

func readGrantBooks(t testing.TB, pool *pgxpool.Pool, accountID uuid.UUID) grantBooks {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"); err != nil {
		t.Fatal(err)
	}
	b := grantBooks{grants: map[int64]grantRow{}, kinds: map[users.TxKind]int{}}
	if err := tx.QueryRow(ctx, `SELECT a.credits, a.expiring_credits,
		(SELECT coalesce(sum(delta), 0) FROM credit_transactions WHERE user_id = a.id)::bigint,
		(SELECT coalesce(sum(remaining), 0) FROM credit_grants WHERE account_id = a.id AND expired_at IS NULL)::bigint
		FROM accounts a WHERE a.id = $1`, accountID).Scan(&b.credits, &b.expiring, &b.ledgerSum, &b.liveRemaining); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx, `SELECT id, amount, remaining, expires_at, expired_at IS NOT NULL, coalesce(expired_amount, 0)
		FROM credit_grants WHERE account_id = $1`, accountID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var g grantRow
		if err := rows.Scan(&id, &g.amount, &g.remaining, &g.expiresAt, &g.expired, &g.expiredAmount); err != nil {
			t.Fatal(err)
		}
		if g.remaining < 0 {
			b.negativeRemaining++
		}
		b.grants[id] = g
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	krows, err := tx.Query(ctx, `SELECT kind, count(*) FROM credit_transactions WHERE user_id = $1 GROUP BY kind`, accountID)
	if err != nil {
		t.Fatal(err)
	}
	for krows.Next() {
		var k string
		var n int
		if err := krows.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		b.kinds[users.TxKind(k)] = n
	}
	return b
}

// check asserts the books' invariants: the balance is the ledger's sum,
// the expiring credits are the live grants' remainders, and no grant's
// remainder or the pool is negative.
func (b grantBooks) check(t testing.TB) {
	t.Helper()
	if b.credits != b.ledgerSum {
		t.Errorf("balance %d, ledger sum %d", b.credits, b.ledgerSum)
	}
	if b.expiring != b.liveRemaining {
		t.Errorf("expiring_credits %d, live grants' remaining %d", b.expiring, b.liveRemaining)
	}
	if b.negativeRemaining > 0 || b.credits < b.expiring {
		t.Errorf("negative: %d grants, pool %d", b.negativeRemaining, b.credits-b.expiring)
	}
}

func newGrantEnv(t testing.TB, start time.Time) orgEnv {
	t.Helper()
	return setupOrgs(t, start)
}

func setCatalog(t testing.TB, e orgEnv, p users.PlanAllowance) {
	t.Helper()
	p.UpdatedBy = "service:test"
	if _, _, err := e.svc.SetPlanAllowance(context.Background(), p); err != nil {
		t.Fatalf("SetPlanAllowance(%+v): %v", p, err)
	}
}

func grantExpiring(t testing.TB, e orgEnv, clerkID string, amount int64, expires time.Time, key string) users.CreditResult {
	t.Helper()
	r, err := e.svc.GrantCredits(context.Background(), users.CreditChange{
		ClerkUserID: clerkID, Amount: amount, IdempotencyKey: key, Service: "billing", ExpiresAt: expires,
	})
	if err != nil {
		t.Fatalf("GrantCredits(%s, %d, expires %s): %v", clerkID, amount, expires, err)
	}
	return r
}

func deduct(e orgEnv, clerkID string, amount int64, key string) error {
	_, err := e.svc.DeductCredits(context.Background(), users.CreditChange{
		ClerkUserID: clerkID, Amount: amount, IdempotencyKey: key, Service: "billing",
	})
	return err
}

// TestConsumptionOrderProperty grants random sets of expiring grants (and
// a pool that never expires), deducts random amounts, and compares every
// grant's remainder with a model: soonest expiry first, ties by the older
// grant, then the pool.
func TestConsumptionOrderProperty(t *testing.T) {
	now := time.Now().UTC()
	e := newGrantEnv(t, now)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(21, 2026))
	for round := range 12 {
		clerkID := fmt.Sprintf("user_prop%02d", round)
		u := ensure(t, e.bundle, clerkID) // 10 INITIAL credits: the pool
		pool := int64(10)
		type mg struct {
			id        int64
			expires   time.Time
			remaining int64
		}
		var model []mg
		for i := range 1 + rng.IntN(8) {
			amount := int64(1 + rng.IntN(50))
			// Few distinct expiries, so that ties happen.
			expires := now.Add(time.Duration(1+rng.IntN(4)) * time.Hour)
			r := grantExpiring(t, e, clerkID, amount, expires, fmt.Sprintf("g%d", i))
			var gid int64
			if err := e.pool.QueryRow(ctx, "SELECT id FROM credit_grants WHERE transaction_id = $1", r.ID).Scan(&gid); err != nil {
				t.Fatal(err)
			}
			model = append(model, mg{id: gid, expires: expires.Truncate(time.Microsecond), remaining: amount})
		}
		if rng.IntN(2) == 0 {
			if _, err := e.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: 25, IdempotencyKey: "pool", Service: "billing"}); err != nil {
				t.Fatal(err)
			}
			pool += 25
		}
		slices.SortFunc(model, func(a, b mg) int {
			if c := a.expires.Compare(b.expires); c != 0 {
				return c
			}
			return int(a.id - b.id)
		})
		for d := range 6 {
			total := pool
			for _, g := range model {
				total += g.remaining
			}
			amount := int64(1 + rng.IntN(40))
			err := deduct(e, clerkID, amount, fmt.Sprintf("d%d", d))
			if amount > total {
				wantKind(t, err, apperr.KindInsufficientCredits)
				continue
			}
			if err != nil {
				t.Fatalf("round %d deduct %d of %d: %v", round, amount, total, err)
			}
			left := amount
			for i := range model {
				take := min(left, model[i].remaining)
				model[i].remaining -= take
				left -= take
			}
			pool -= left
		}
		b := readGrantBooks(t, e.pool, u.ID)
		b.check(t)
		for _, g := range model {
			if got := b.grants[g.id].remaining; got != g.remaining {
				t.Errorf("round %d grant %d (expires %s): remaining %d, model %d", round, g.id, g.expires, got, g.remaining)
			}
		}
		if got := b.credits - b.expiring; got != pool {
			t.Errorf("round %d: pool %d, model %d", round, got, pool)
		}
		listed, err := e.svc.ListGrants(ctx, users.AccountRef{ClerkUserID: clerkID})
		if err != nil {
			t.Fatal(err)
		}
		var unused []mg
		for _, g := range model {
			if g.remaining > 0 {
				unused = append(unused, g)
			}
		}
		if listed.NonExpiring != pool || len(listed.Grants) != len(unused) {
			t.Errorf("round %d: ListGrants pool %d with %d grants, want %d with %d", round, listed.NonExpiring, len(listed.Grants), pool, len(unused))
		}
		for i, g := range listed.Grants {
			if i < len(unused) && (g.ID != unused[i].id || g.Remaining != unused[i].remaining) {
				t.Errorf("round %d: ListGrants[%d] = grant %d (%d left), want %d (%d left): consumption order", round, i, g.ID, g.Remaining, unused[i].id, unused[i].remaining)
			}
		}
	}
}

// TestDueGrantIsNeverCountedBeforeTheJob: a grant whose expiry passed is
// not counted by reads (GetUser, CanAfford) and not spent by a deduction
// even though no job expired it yet; the deduction expires it first,
// through its own EXPIRE entry.
func TestDueGrantIsNeverCountedBeforeTheJob(t *testing.T) {
	dbNow := time.Now().UTC()
	// The Service's clock stands an hour back, so it accepts a grant that
	// the database already sees as due.
	e := newGrantEnv(t, dbNow.Add(-time.Hour))
	ctx := context.Background()
	u := ensure(t, e.bundle, "user_due")
	grantExpiring(t, e, "user_due", 100, dbNow.Add(-time.Minute), "g")

	got, err := e.svc.GetUser(ctx, users.Lookup{ClerkUserID: "user_due"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Credits != 10 {
		t.Errorf("GetUser credits = %d, want 10 (the due grant not counted)", got.Credits)
	}
	// Every read of a balance leaves it out (userd_account_due_credits).
	acct, err := e.svc.GetAccount(ctx, users.AccountRef{ClerkUserID: "user_due"})
	if err != nil {
		t.Fatal(err)
	}
	if acct.Credits != 10 {
		t.Errorf("GetAccount credits = %d, want 10 (the due grant not counted)", acct.Credits)
	}
	again, created, err := e.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_due"})
	if err != nil {
		t.Fatal(err)
	}
	if created || again.Credits != 10 {
		t.Errorf("EnsureUser (existing) = created %v, credits %d; want false, 10 (the due grant not counted)", created, again.Credits)
	}
	aff, err := e.svc.CanAfford(ctx, "user_due", users.Cost{Amount: 50})
	if err != nil {
		t.Fatal(err)
	}
	if aff.Allowed || aff.Available != 10 {
		t.Errorf("CanAfford(50) = %+v, want not affordable with 10 available", aff)
	}
	ie := wantKind(t, deduct(e, "user_due", 50, "d1"), apperr.KindInsufficientCredits)
	if ie.Metadata["available"] != "10" {
		t.Errorf("insufficient: available %s, want 10", ie.Metadata["available"])
	}
	b := readGrantBooks(t, e.pool, u.ID)
	b.check(t)
	if b.credits != 10 || b.kinds[users.TxExpire] != 1 {
		t.Errorf("after the refused spend: balance %d, %d EXPIRE entries; want 10 and 1 (expired in its transaction)", b.credits, b.kinds[users.TxExpire])
	}
	if err := deduct(e, "user_due", 10, "d2"); err != nil {
		t.Fatal(err)
	}
	readGrantBooks(t, e.pool, u.ID).check(t)
}

// TestEveryBalanceReadLeavesOutDueGrants: every statement that reads a
// balance answers an account holding expiring credits (some due, some
// not) without the due ones, and one holding none with its whole balance:
// the reads decide from expiring_credits whether to look at the grants at
// all (db/queries/users.sql), so each is checked on both kinds of
// account, personal and organization's.
func TestEveryBalanceReadLeavesOutDueGrants(t *testing.T) {
	dbNow := time.Now().UTC()
	e := newGrantEnv(t, dbNow.Add(-time.Hour))
	ctx := context.Background()
	// user_due: 10 initial, 100 due, 7 expiring tomorrow: reads show 17.
	if _, _, err := e.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_due", Email: "due@example.com"}); err != nil {
		t.Fatal(err)
	}
	grantExpiring(t, e, "user_due", 100, dbNow.Add(-time.Minute), "g")
	grantExpiring(t, e, "user_due", 7, dbNow.Add(24*time.Hour), "later")
	// user_plain: 10 initial and 5 that never expire: reads show 15.
	if _, _, err := e.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_plain", Email: "plain@example.com"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_plain", Amount: 5, IdempotencyKey: "g", Service: "billing"}); err != nil {
		t.Fatal(err)
	}
	// org_due: 20 that never expire and 50 due: reads show 20; org_plain:
	// 30 that never expire.
	e.newOrg(t, "org_due", 20, member{clerkUserID: "user_m"})
	if _, err := e.svc.GrantCredits(ctx, users.CreditChange{ClerkOrgID: "org_due", Amount: 50, IdempotencyKey: "g",
		Service: "billing", ExpiresAt: dbNow.Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	e.newOrg(t, "org_plain", 30, member{clerkUserID: "user_m"})

	for _, c := range []struct {
		clerkID string
		want    int64
	}{{"user_due", 17}, {"user_plain", 15}} {
		u, err := e.svc.GetUser(ctx, users.Lookup{ClerkUserID: c.clerkID})
		if err != nil {
			t.Fatal(err)
		}
		if u.Credits != c.want {
			t.Errorf("GetUser(%s) = %d credits, want %d", c.clerkID, u.Credits, c.want)
		}
		for name, l := range map[string]users.Lookup{"id": {ID: u.ID.String()}, "email": {Email: u.Email}} {
			if got, err := e.svc.GetUser(ctx, l); err != nil || got.Credits != c.want {
				t.Errorf("GetUser(%s by %s) = %d credits, %v; want %d", c.clerkID, name, got.Credits, err, c.want)
			}
		}
		if a, err := e.svc.GetAccount(ctx, users.AccountRef{ClerkUserID: c.clerkID}); err != nil || a.Credits != c.want {
			t.Errorf("GetAccount(%s) = %d credits, %v; want %d", c.clerkID, a.Credits, err, c.want)
		}
		if a, err := e.svc.CanAfford(ctx, c.clerkID, users.Cost{Amount: 1}); err != nil || a.Available != c.want {
			t.Errorf("CanAfford(%s) = %+v, %v; want %d available", c.clerkID, a, err, c.want)
		}
	}
	// The read batcher's statement of several users (what concurrent
	// GetUser and EnsureUser calls share).
	rows, err := sqlcdb.New().GetUsersByClerkIDsIncludingDeleted(ctx, e.pool, []string{"user_due", "user_plain"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, r := range rows {
		got[r.ClerkUserID] = r.Credits
	}
	if got["user_due"] != 17 || got["user_plain"] != 15 || len(got) != 2 {
		t.Errorf("GetUsersByClerkIDsIncludingDeleted = %v, want user_due 17, user_plain 15", got)
	}
	for _, c := range []struct {
		org  string
		want int64
	}{{"org_due", 20}, {"org_plain", 30}} {
		if a, err := e.svc.GetAccount(ctx, users.AccountRef{ClerkOrgID: c.org}); err != nil || a.Credits != c.want {
			t.Errorf("GetAccount(%s) = %d credits, %v; want %d", c.org, a.Credits, err, c.want)
		}
		a, err := e.svc.CanAffordFor(ctx, users.AffordQuery{ClerkUserID: "user_m", ClerkOrgID: c.org, Cost: users.Cost{Amount: 1}})
		if err != nil || a.Available != c.want {
			t.Errorf("CanAffordFor(%s) = %+v, %v; want %d available", c.org, a, err, c.want)
		}
	}
}

// TestExpiryJobOnTimeAndIdempotent: the job expires a grant once its
// expiry passed on the clock, once, and the usage summary shows it.
func TestExpiryJobOnTimeAndIdempotent(t *testing.T) {
	start := time.Now().UTC()
	e := newGrantEnv(t, start)
	ctx := context.Background()
	u := ensure(t, e.bundle, "user_exp")
	grantExpiring(t, e, "user_exp", 70, start.Add(time.Hour), "g")
	if err := deduct(e, "user_exp", 30, "d"); err != nil {
		t.Fatal(err)
	}
	run := func() users.AllowanceRun {
		r, err := e.svc.RunAllowances(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	e.clock.Set(start.Add(59 * time.Minute))
	if r := run(); r.Expired != 0 {
		t.Fatalf("before expiry: %+v", r)
	}
	e.clock.Set(start.Add(61 * time.Minute))
	if r := run(); r.Expired != 1 {
		t.Fatalf("after expiry: %+v, want 1 expired", r)
	}
	if r := run(); r.Expired != 0 {
		t.Fatalf("second run: %+v, want nothing", r)
	}
	b := readGrantBooks(t, e.pool, u.ID)
	b.check(t)
	// 10 INITIAL + 70 granted - 30 spent (from the grant) - 40 expired.
	if b.credits != 10 || b.kinds[users.TxExpire] != 1 {
		t.Errorf("balance %d with %d EXPIRE entries, want 10 and 1", b.credits, b.kinds[users.TxExpire])
	}
	for _, g := range b.grants {
		if !g.expired || g.expiredAmount != 40 || g.remaining != 0 {
			t.Errorf("grant after expiry: %+v, want expired with 40 taken", g)
		}
	}
	var expired int64
	if err := e.pool.QueryRow(ctx, "SELECT -sum(delta) FROM credit_transactions WHERE user_id = $1 AND kind = 'EXPIRE' AND reason = 'expired'", u.ID).Scan(&expired); err != nil || expired != 40 {
		t.Errorf("expired in the ledger: %d (%v), want 40", expired, err)
	}
}

// TestRefillJobThreeReplicasAndGap: three job runs at once each simulated
// day grant each account one allowance per period; after 40 days without
// a run, one run grants the current period only and records the skipped
// ones.
func TestRefillJobThreeReplicasAndGap(t *testing.T) {
	start := time.Now().UTC()
	e := newGrantEnv(t, start)
	ctx := context.Background()
	setCatalog(t, e, users.PlanAllowance{Plan: users.PlanFree, Allowance: 5, Period: users.AllowanceDaily})
	var ids []uuid.UUID
	for i := range 8 {
		ids = append(ids, ensure(t, e.bundle, fmt.Sprintf("user_refill%d", i)).ID)
	}
	threeAtOnce := func() {
		var wg sync.WaitGroup
		errs := make(chan error, 3)
		for range 3 {
			wg.Go(func() {
				if _, err := e.svc.RunAllowances(ctx, 3); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	for day := 0; day <= 5; day++ {
		e.clock.Set(start.Add(time.Duration(day)*24*time.Hour + time.Minute))
		threeAtOnce()
		threeAtOnce()
	}
	e.clock.Set(start.Add(45*24*time.Hour + time.Minute))
	threeAtOnce()
	for _, id := range ids {
		b := readGrantBooks(t, e.pool, id)
		b.check(t)
		// Days 0..5 and day 45: seven allowances, one each.
		if b.kinds[users.TxAllowance] != 7 {
			t.Errorf("account %s: %d ALLOWANCE entries, want 7", id, b.kinds[users.TxAllowance])
		}
		var granted, skipped, skippedPeriods int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'granted'), count(*) FILTER (WHERE status = 'skipped'),
			coalesce(sum(skipped_periods), 0) FROM allowance_periods WHERE account_id = $1`, id).Scan(&granted, &skipped, &skippedPeriods); err != nil {
			t.Fatal(err)
		}
		if granted != 7 || skipped != 1 || skippedPeriods != 39 {
			t.Errorf("account %s: %d granted, %d skipped runs of %d periods; want 7, 1, 39", id, granted, skipped, skippedPeriods)
		}
		// Only the current period's allowance is live (it replaced the
		// sign-up credits: the catalog gives FREE an allowance).
		if b.credits != 5 || b.expiring != 5 || b.kinds[users.TxInitial] != 1 {
			t.Errorf("account %s: balance %d, expiring %d, %d INITIAL entries; want 5, 5 and 1 (of 0)", id, b.credits, b.expiring, b.kinds[users.TxInitial])
		}
	}
}

// TestPlanChangeMidPeriod: an upgrade grants the difference of the
// allowances at once and the upgrade bonus once ever; a downgrade takes
// nothing back and applies at the next period, with rollover up to the
// cap.
func TestPlanChangeMidPeriod(t *testing.T) {
	start := time.Now().UTC()
	e := newGrantEnv(t, start)
	ctx := context.Background()
	setCatalog(t, e, users.PlanAllowance{Plan: users.PlanFree, Allowance: 10, Period: users.AllowanceMonthly, RolloverCap: 4})
	setCatalog(t, e, users.PlanAllowance{Plan: users.PlanPro, Allowance: 1000, Period: users.AllowanceMonthly, UpgradeBonus: 50})
	u := ensure(t, e.bundle, "user_plan") // 0 INITIAL (the allowance replaces it) + 10 FREE allowance
	if b := readGrantBooks(t, e.pool, u.ID); b.credits != 10 || b.expiring != 10 {
		t.Fatalf("new account: balance %d, expiring %d; want 10 and 10", b.credits, b.expiring)
	}
	setPlan := func(p users.Plan, key string) {
		t.Helper()
		if _, err := e.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_plan", Plan: p, IdempotencyKey: key, Service: "billing"}); err != nil {
			t.Fatal(err)
		}
	}
	setPlan(users.PlanPro, "up1")
	b := readGrantBooks(t, e.pool, u.ID)
	b.check(t)
	if b.credits != 10+990+50 || b.expiring != 1000 {
		t.Errorf("after the upgrade: balance %d, expiring %d; want 1050 and 1000", b.credits, b.expiring)
	}
	setPlan(users.PlanFree, "down1")
	setPlan(users.PlanPro, "up2")
	b = readGrantBooks(t, e.pool, u.ID)
	b.check(t)
	if b.credits != 1050 || b.kinds[users.TxPlanBonus] != 1 {
		t.Errorf("after down and up again: balance %d with %d bonuses; want 1050 and 1 (nothing twice)", b.credits, b.kinds[users.TxPlanBonus])
	}
	setPlan(users.PlanFree, "down2")
	// Spend all but 7 of the period's allowance; 4 of those roll over.
	if err := deduct(e, "user_plan", 993, "spend"); err != nil {
		t.Fatal(err)
	}
	e.clock.Set(start.AddDate(0, 1, 0).Add(time.Minute))
	if _, err := e.svc.RunAllowances(ctx, 0); err != nil {
		t.Fatal(err)
	}
	b = readGrantBooks(t, e.pool, u.ID)
	b.check(t)
	// 1050 - 993 = 57; 7 expire; FREE's 10 + 4 rolled over arrive.
	if b.credits != 57-7+14 || b.expiring != 14 {
		t.Errorf("next period on FREE: balance %d, expiring %d; want 64 and 14", b.credits, b.expiring)
	}
	g, err := e.svc.ListGrants(ctx, users.AccountRef{ClerkUserID: "user_plan"})
	if err != nil {
		t.Fatal(err)
	}
	// The period is anchored at the account's creation (the database's
	// clock), a moment after start.
	if g.NextRefillAmount != 10 || g.NextRefillAt.Sub(start.AddDate(0, 2, 0)).Abs() > 30*time.Second {
		t.Errorf("next refill %s of %d, want about %s of 10", g.NextRefillAt, g.NextRefillAmount, start.AddDate(0, 2, 0))
	}
}

// TestSpendsRaceExpiryAndRefill: deductions race the job expiring their
// grants and granting allowances; the books stay exact.
func TestSpendsRaceExpiryAndRefill(t *testing.T) {
	start := time.Now().UTC()
	e := newGrantEnv(t, start)
	ctx := context.Background()
	setCatalog(t, e, users.PlanAllowance{Plan: users.PlanFree, Allowance: 20, Period: users.AllowanceDaily})
	const accounts = 4
	var ids []uuid.UUID
	for i := range accounts {
		id := fmt.Sprintf("user_race%d", i)
		ids = append(ids, ensure(t, e.bundle, id).ID)
		for g := range 5 {
			grantExpiring(t, e, id, 30, start.Add(time.Duration(g+1)*time.Hour), fmt.Sprintf("g%d", g))
		}
	}
	// The job's clock stands past every grant's expiry and in the next
	// day's period; the spends run at the database's clock, before.
	e.clock.Set(start.Add(25 * time.Hour))
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := range 15 {
				err := deduct(e, fmt.Sprintf("user_race%d", (w+i)%accounts), int64(1+(w*7+i)%9), fmt.Sprintf("w%d-%d", w, i))
				if err != nil && apperr.KindOf(err) != apperr.KindInsufficientCredits {
					t.Error(err)
				}
			}
		})
	}
	for range 3 {
		wg.Go(func() {
			for range 4 {
				if _, err := e.svc.RunAllowances(ctx, 1); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	// The job skips an account a spend holds locked (SKIP LOCKED) and
	// takes it on its next run: this is that next run, with nothing racing.
	if _, err := e.svc.RunAllowances(ctx, 1); err != nil {
		t.Error(err)
	}
	for _, id := range ids {
		b := readGrantBooks(t, e.pool, id)
		b.check(t)
		for gid, g := range b.grants {
			if g.expired && g.remaining != 0 {
				t.Errorf("grant %d expired with %d remaining", gid, g.remaining)
			}
			if !g.expired && g.expiresAt.Before(start.Add(24*time.Hour)) {
				t.Errorf("grant %d due at %s was not expired by the job", gid, g.expiresAt)
			}
		}
		if b.kinds[users.TxAllowance] != 2 {
			t.Errorf("account %s: %d allowances, want 2 (creation and the next day)", id, b.kinds[users.TxAllowance])
		}
	}
}

// TestGrantsBadInputChangesNothing: every bad input to the new APIs is a
// clear invalid argument and changes nothing.
func TestGrantsBadInputChangesNothing(t *testing.T) {
	now := time.Now().UTC()
	e := newGrantEnv(t, now)
	ctx := context.Background()
	u := ensure(t, e.bundle, "user_bad")
	before := readGrantBooks(t, e.pool, u.ID)
	grant := func(c users.CreditChange) error {
		c.ClerkUserID, c.IdempotencyKey = "user_bad", "k"
		if c.Amount == 0 {
			c.Amount = 5
		}
		_, err := e.svc.GrantCredits(ctx, c)
		return err
	}
	setAllowance := func(p users.PlanAllowance) error {
		p.UpdatedBy = "service:test"
		_, _, err := e.svc.SetPlanAllowance(ctx, p)
		return err
	}
	cases := []struct {
		name  string
		call  func() error
		field string
	}{
		{"ExpiryInThePast", func() error { return grant(users.CreditChange{ExpiresAt: now.Add(-time.Second)}) }, "expires_at"},
		{"ExpiryNow", func() error { return grant(users.CreditChange{ExpiresAt: now}) }, "expires_at"},
		{"ExpiryTooFar", func() error { return grant(users.CreditChange{ExpiresAt: now.AddDate(101, 0, 0)}) }, "expires_at"},
		{"UnknownSource", func() error { return grant(users.CreditChange{ExpiresAt: now.Add(time.Hour), GrantSource: "GIFT"}) }, "grant_source"},
		{"AllowanceSourceIsUserds", func() error {
			return grant(users.CreditChange{ExpiresAt: now.Add(time.Hour), GrantSource: "ALLOWANCE"})
		}, "grant_source"},
		{"NegativeExpiringAmount", func() error { return grant(users.CreditChange{Amount: -5, ExpiresAt: now.Add(time.Hour)}) }, "amount"},
		{"DeductionWithExpiry", func() error {
			_, err := e.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_bad", Amount: 1, IdempotencyKey: "k", ExpiresAt: now.Add(time.Hour)})
			return err
		}, "expires_at"},
		{"DeductionWithSource", func() error {
			_, err := e.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_bad", Amount: 1, IdempotencyKey: "k", GrantSource: "GRANT"})
			return err
		}, "grant_source"},
		{"CatalogUnknownPlan", func() error { return setAllowance(users.PlanAllowance{Plan: "GOLD", Allowance: 5}) }, "plan"},
		{"CatalogBadPeriod", func() error {
			return setAllowance(users.PlanAllowance{Plan: users.PlanFree, Allowance: 5, Period: "year"})
		}, "period"},
		{"CatalogNegativeAllowance", func() error { return setAllowance(users.PlanAllowance{Plan: users.PlanFree, Allowance: -1}) }, "allowance"},
		{"CatalogHugeAllowance", func() error { return setAllowance(users.PlanAllowance{Plan: users.PlanFree, Allowance: 1e13}) }, "allowance"},
		{"CatalogNegativeRollover", func() error {
			return setAllowance(users.PlanAllowance{Plan: users.PlanFree, Allowance: 5, RolloverCap: -1})
		}, "rollover_cap"},
		{"CatalogNegativeBonus", func() error {
			return setAllowance(users.PlanAllowance{Plan: users.PlanFree, Allowance: 5, UpgradeBonus: -1})
		}, "upgrade_bonus"},
		{"ListGrantsBadUser", func() error {
			_, err := e.svc.ListGrants(ctx, users.AccountRef{ClerkUserID: "nope"})
			return err
		}, "clerk_user_id"},
		{"ListGrantsBadOrg", func() error {
			_, err := e.svc.ListGrants(ctx, users.AccountRef{ClerkOrgID: "user_x"})
			return err
		}, "clerk_org_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ae := wantKind(t, tc.call(), apperr.KindInvalidArgument)
			found := false
			for _, v := range ae.Violations {
				found = found || v.Field == tc.field
			}
			if !found {
				t.Errorf("violations %+v, want one on %s", ae.Violations, tc.field)
			}
		})
	}
	after := readGrantBooks(t, e.pool, u.ID)
	if after.credits != before.credits || len(after.grants) != 0 || after.kinds[users.TxGrant] != 0 {
		t.Errorf("bad input changed the account: %+v", after)
	}
	if c, err := e.svc.GetPlanCatalog(ctx); err != nil || len(c) != 0 {
		t.Errorf("catalog after bad input: %v, %v; want empty", c, err)
	}
	if _, err := e.svc.ListGrants(ctx, users.AccountRef{ClerkUserID: "user_missing"}); apperr.KindOf(err) != apperr.KindNotFound {
		t.Errorf("ListGrants of a missing user: %v, want NotFound", err)
	}
	// A replay with another expiry is a reused key.
	grantExpiring(t, e, "user_bad", 5, now.Add(time.Hour), "same")
	_, err := e.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_bad", Amount: 5, IdempotencyKey: "same", Service: "billing", ExpiresAt: now.Add(2 * time.Hour)})
	wantKind(t, err, apperr.KindConflict)
	r := grantExpiring(t, e, "user_bad", 5, now.Add(time.Hour), "same")
	if !r.Replayed {
		t.Errorf("same grant again: not a replay")
	}
}

// TestNoCatalogKeepsTodaysBehaviour: without a catalog the job grants
// nothing and touches no account.
func TestNoCatalogKeepsTodaysBehaviour(t *testing.T) {
	start := time.Now().UTC()
	e := newGrantEnv(t, start)
	u := ensure(t, e.bundle, "user_plain")
	e.clock.Set(start.AddDate(0, 3, 0))
	r, err := e.svc.RunAllowances(context.Background(), 0)
	if err != nil || r.Accounts != 0 {
		t.Fatalf("RunAllowances without a catalog: %+v, %v; want nothing done", r, err)
	}
	b := readGrantBooks(t, e.pool, u.ID)
	if b.credits != users.DefaultInitialCredits || len(b.kinds) != 1 {
		t.Errorf("books %+v, want the initial credits alone", b)
	}
}
