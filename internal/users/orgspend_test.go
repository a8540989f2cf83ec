package users_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/internal/users"
)

// orgEnv is a Service over a fresh database, with the pool for seeding
// organizations and memberships directly (as the webhook would store
// them) and for reading the books, and a clock the test moves.
type orgEnv struct {
	bundle
	pool  *pgxpool.Pool
	clock *testClock
}

// testClock is an injectable clock: what the Service counts caps in.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// setupOrgs returns an orgEnv whose clock stands at start.
func setupOrgs(t testing.TB, start time.Time) orgEnv {
	t.Helper()
	return newOrgEnv(t, &testClock{t: start}, 0)
}

// newOrgEnv returns an orgEnv with clock (nil: the database's clock, as
// in production) and a pool of conns connections (0: pgxpool's default).
func newOrgEnv(t testing.TB, clock *testClock, conns int, storeOpts ...store.Options) orgEnv {
	t.Helper()
	url := testdb.URL(t)
	if conns > 0 {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		url += sep + "pool_max_conns=" + strconv.Itoa(conns)
	}
	pool := testdb.Connect(t, url)
	var so store.Options
	if len(storeOpts) > 0 {
		so = storeOpts[0]
	}
	st := store.New(pool, so)
	opts := users.Options{InitialCredits: users.DefaultInitialCredits}
	if clock != nil {
		opts.Clock = clock.Now
	}
	svc := users.NewService(st, opts)
	return orgEnv{bundle: bundle{svc: svc, store: st}, pool: pool, clock: clock}
}

// member is a membership to seed.
type member struct {
	clerkUserID string
	permissions []string
}

// newOrg stores an organization with an account holding credits (granted
// by a service, so that the ledger accounts for them) and the members,
// each a live user with a live membership.
func (e orgEnv) newOrg(t testing.TB, clerkOrgID string, credits int64, members ...member) uuid.UUID {
	t.Helper()
	ctx := context.Background()
	var accountID uuid.UUID
	err := e.pool.QueryRow(ctx, `
		WITH o AS (
			INSERT INTO organizations (clerk_org_id, name, clerk_updated_at) VALUES ($1, $1, 1) RETURNING id
		)
		INSERT INTO accounts (organization_id, credits) SELECT o.id, 0 FROM o RETURNING id`, clerkOrgID).Scan(&accountID)
	if err != nil {
		t.Fatalf("seed organization %s: %v", clerkOrgID, err)
	}
	if credits > 0 {
		if _, err := e.svc.GrantCredits(ctx, users.CreditChange{ClerkOrgID: clerkOrgID, Service: "seed",
			Amount: credits, IdempotencyKey: "seed-" + clerkOrgID}); err != nil {
			t.Fatalf("grant %d to %s: %v", credits, clerkOrgID, err)
		}
	}
	for _, m := range members {
		e.addMember(t, clerkOrgID, m)
	}
	return accountID
}

// addMember makes m a live user and a live member of the organization.
func (e orgEnv) addMember(t testing.TB, clerkOrgID string, m member) {
	t.Helper()
	if _, _, err := e.svc.EnsureUser(context.Background(), users.EnsureUserInput{ClerkUserID: m.clerkUserID}); err != nil {
		t.Fatalf("EnsureUser(%s): %v", m.clerkUserID, err)
	}
	perms := m.permissions
	if perms == nil {
		perms = []string{}
	}
	if _, err := e.pool.Exec(context.Background(), `
		INSERT INTO organization_memberships (clerk_membership_id, clerk_org_id, clerk_user_id, role, permissions, clerk_updated_at)
		VALUES ($1, $2, $3, 'org:member', $4, 1)`,
		membershipID(clerkOrgID, m.clerkUserID), clerkOrgID, m.clerkUserID, perms); err != nil {
		t.Fatalf("seed membership %s/%s: %v", clerkOrgID, m.clerkUserID, err)
	}
}

func membershipID(clerkOrgID, clerkUserID string) string {
	return "orgmem_" + clerkOrgID + "_" + clerkUserID
}

// removeMember deletes the membership as a webhook delivery would
// (userd_apply_clerk_membership, which locks the account first) and, in
// the same transaction, reads the highest ledger id of the account: every
// spend committed before the removal has an id at or below it.
func (e orgEnv) removeMember(t testing.TB, clerkOrgID, clerkUserID string, accountID uuid.UUID) (lastBefore int64, err error) {
	ctx := context.Background()
	err = pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		var outcome string
		if err := tx.QueryRow(ctx, `SELECT userd_apply_clerk_membership(NULL, 'organizationMembership.deleted', $1, $2, $3,
			'org:member', '{}', 2, true)`, membershipID(clerkOrgID, clerkUserID), clerkOrgID, clerkUserID).Scan(&outcome); err != nil {
			return err
		}
		if outcome != "deleted" {
			return fmt.Errorf("removal outcome %q", outcome)
		}
		return tx.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM credit_transactions WHERE user_id = $1`, accountID).Scan(&lastBefore)
	})
	return lastBefore, err
}

// books is an organization account's state as the database has it.
type books struct {
	credits int64
	// entries is the ledger, oldest first.
	entries []bookEntry
	// counters is each capped member's counter: period start and spent.
	counters map[string]counter
}

type bookEntry struct {
	id           int64
	delta        int64
	balanceAfter int64
	kind         string
	actor        string // the actor's Clerk user id, "" for none
	service      string
	key          string
}

type counter struct {
	periodStart time.Time
	spent       int64
}

func (e orgEnv) books(t testing.TB, accountID uuid.UUID) books {
	t.Helper()
	ctx := context.Background()
	var b books
	if err := e.pool.QueryRow(ctx, `SELECT credits FROM accounts WHERE id = $1`, accountID).Scan(&b.credits); err != nil {
		t.Fatalf("read account: %v", err)
	}
	rows, err := e.pool.Query(ctx, `
		SELECT t.id, t.delta, t.balance_after, t.kind, coalesce(u.clerk_user_id, ''), coalesce(t.service, ''),
		       coalesce(t.idempotency_key, '')
		FROM credit_transactions t LEFT JOIN users u ON u.id = t.actor_user_id
		WHERE t.user_id = $1 ORDER BY t.id`, accountID)
	if err != nil {
		t.Fatalf("read ledger: %v", err)
	}
	b.entries, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (bookEntry, error) {
		var x bookEntry
		err := r.Scan(&x.id, &x.delta, &x.balanceAfter, &x.kind, &x.actor, &x.service, &x.key)
		return x, err
	})
	if err != nil {
		t.Fatalf("read ledger: %v", err)
	}
	rows, err = e.pool.Query(ctx, `SELECT clerk_user_id, period_start, spent FROM account_member_caps WHERE account_id = $1`, accountID)
	if err != nil {
		t.Fatalf("read counters: %v", err)
	}
	b.counters = map[string]counter{}
	for rows.Next() {
		var (
			id string
			c  counter
		)
		if err := rows.Scan(&id, &c.periodStart, &c.spent); err != nil {
			t.Fatalf("read counters: %v", err)
		}
		b.counters[id] = c
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read counters: %v", err)
	}
	return b
}

// check reports what breaks the account's invariants: the balance is the
// sum of the ledger, every entry's balance_after the running sum (never
// negative), and no key applied twice.
func (b books) check(t testing.TB) {
	t.Helper()
	var sum int64
	keys := map[string]bool{}
	for _, x := range b.entries {
		sum += x.delta
		if x.balanceAfter != sum || sum < 0 {
			t.Errorf("entry %d: balance_after %d, running sum %d", x.id, x.balanceAfter, sum)
		}
		if x.key != "" {
			if keys[x.key] {
				t.Errorf("key %q applied twice", x.key)
			}
			keys[x.key] = true
		}
	}
	if b.credits != sum {
		t.Errorf("credits = %d, ledger sum = %d", b.credits, sum)
	}
}

// spentBy sums the member's deductions in the ledger.
func (b books) spentBy(clerkUserID string) (spent int64, n int) {
	for _, x := range b.entries {
		if x.actor == clerkUserID && x.kind == string(users.TxDeduct) {
			spent -= x.delta
			n++
		}
	}
	return spent, n
}

func orgDeduct(org, member string, amount int64, key string) users.CreditChange {
	return users.CreditChange{ClerkOrgID: org, ClerkUserID: member, Amount: amount, IdempotencyKey: key}
}

var day0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC) // a Tuesday

func TestOrgSpendAppliesAndRecordsMemberAndService(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setupOrgs(t, day0)
	acct := e.newOrg(t, "org_a", 100, member{clerkUserID: "user_m1"})
	res, err := e.svc.DeductCredits(ctx, users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_m1", Service: "render-svc",
		Amount: 30, Reason: "render", IdempotencyKey: "k1"})
	if err != nil {
		t.Fatalf("DeductCredits: %v", err)
	}
	if res.Replayed || res.Delta != -30 || res.BalanceAfter != 70 {
		t.Errorf("result = %+v, want -30 leaving 70", res)
	}
	again, err := e.svc.DeductCredits(ctx, users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_m1", Service: "render-svc",
		Amount: 30, Reason: "render", IdempotencyKey: "k1"})
	if err != nil || !again.Replayed || again.ID != res.ID {
		t.Errorf("replay = %+v, %v; want the original entry %d", again, err, res.ID)
	}
	b := e.books(t, acct)
	b.check(t)
	last := b.entries[len(b.entries)-1]
	if last.actor != "user_m1" || last.service != "render-svc" || last.delta != -30 {
		t.Errorf("ledger entry = %+v, want actor user_m1, service render-svc, -30", last)
	}
	// The member's personal account is untouched.
	u, err := e.svc.GetUser(ctx, users.Lookup{ClerkUserID: "user_m1"})
	if err != nil || u.Credits != users.DefaultInitialCredits {
		t.Errorf("personal balance = %d, %v; want %d", u.Credits, err, users.DefaultInitialCredits)
	}
}

// TestOrgSpendRefusalsChangeNothing: every refused spend answers a clear
// error and leaves the balance, the ledger and the counters as they were.
func TestOrgSpendRefusalsChangeNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setupOrgs(t, day0)
	const perm = "org:credits:spend"
	acct := e.newOrg(t, "org_a", 50,
		member{clerkUserID: "user_ok", permissions: []string{perm}},
		member{clerkUserID: "user_noperm", permissions: []string{"org:other"}},
		member{clerkUserID: "user_capped", permissions: []string{perm}},
		member{clerkUserID: "user_gone", permissions: []string{perm}})
	e.newOrg(t, "org_b", 50, member{clerkUserID: "user_b_only", permissions: []string{perm}})
	closed := e.newOrg(t, "org_closed", 50, member{clerkUserID: "user_ok2", permissions: []string{perm}})
	if _, err := e.pool.Exec(ctx, `UPDATE accounts SET closed_at = now() WHERE id = $1`, closed); err != nil {
		t.Fatal(err)
	}
	if _, err := e.removeMember(t, "org_a", "user_gone", acct); err != nil {
		t.Fatal(err)
	}
	// A membership whose user userd has not seen.
	if _, err := e.pool.Exec(ctx, `INSERT INTO organization_memberships
		(clerk_membership_id, clerk_org_id, clerk_user_id, permissions, clerk_updated_at)
		VALUES ('orgmem_x', 'org_a', 'user_unseen', '{org:credits:spend}', 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_capped",
		Period: users.CapPeriodDay, Cap: 5, ChangedBy: "user_admin"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: 6, ChangedBy: "service:test"}); err != nil {
		t.Fatal(err)
	}
	before := e.books(t, acct)

	cases := []struct {
		name   string
		c      users.CreditChange
		kind   apperr.Kind
		reason string
	}{
		{"non-member", users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_b_only", Amount: 1, IdempotencyKey: "r1", RequiredPermission: perm},
			apperr.KindPermissionDenied, apperr.ReasonNotOrganizationMember},
		{"non-member without permission required", orgDeduct("org_a", "user_b_only", 1, "r2"),
			apperr.KindPermissionDenied, apperr.ReasonNotOrganizationMember},
		{"removed member", orgDeduct("org_a", "user_gone", 1, "r3"),
			apperr.KindPermissionDenied, apperr.ReasonNotOrganizationMember},
		{"member without the permission", users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_noperm", Amount: 1, IdempotencyKey: "r4", RequiredPermission: perm},
			apperr.KindPermissionDenied, apperr.ReasonMissingOrganizationPermission},
		{"member without the permission, by action", users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_noperm", Action: "render", IdempotencyKey: "r5", RequiredPermission: perm},
			apperr.KindPermissionDenied, apperr.ReasonMissingOrganizationPermission},
		{"cap reached", orgDeduct("org_a", "user_capped", 6, "r6"),
			apperr.KindInsufficientCredits, apperr.ReasonMemberCapReached},
		{"cap reached by action", users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_capped", Action: "render", IdempotencyKey: "r6a"},
			apperr.KindInsufficientCredits, apperr.ReasonMemberCapReached},
		{"insufficient", orgDeduct("org_a", "user_ok", 51, "r7"),
			apperr.KindInsufficientCredits, apperr.ReasonInsufficientCredits},
		{"unknown organization", orgDeduct("org_nope", "user_ok", 1, "r8"), apperr.KindNotFound, ""},
		{"closed account", orgDeduct("org_closed", "user_ok2", 1, "r9"),
			apperr.KindFailedPrecondition, apperr.ReasonAccountClosed},
		{"member unknown as a user", orgDeduct("org_a", "user_unseen", 1, "r10"), apperr.KindNotFound, ""},
		{"unknown action", users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_ok", Action: "nope", IdempotencyKey: "r11"},
			apperr.KindInvalidArgument, apperr.ReasonUnknownAction},
		{"bad organization id", orgDeduct("acme", "user_ok", 1, "r12"), apperr.KindInvalidArgument, ""},
		{"no member", orgDeduct("org_a", "", 1, "r13"), apperr.KindInvalidArgument, ""},
		{"zero amount", orgDeduct("org_a", "user_ok", 0, "r14"), apperr.KindInvalidArgument, ""},
		{"no key", orgDeduct("org_a", "user_ok", 1, ""), apperr.KindInvalidArgument, ""},
		{"bad permission", users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_ok", Amount: 1, IdempotencyKey: "r15", RequiredPermission: "a\x00b"},
			apperr.KindInvalidArgument, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.svc.DeductCredits(ctx, c.c)
			got := wantKind(t, err, c.kind)
			if c.reason != "" && got.Reason != c.reason {
				t.Errorf("reason = %q, want %q (%v)", got.Reason, c.reason, err)
			}
		})
	}
	// The cap's error says how far the member is.
	_, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_capped", 6, "r16"))
	if got := wantKind(t, err, apperr.KindInsufficientCredits); got.Metadata["cap"] != "5" || got.Metadata["spent"] != "0" ||
		got.Metadata["remaining"] != "5" || got.Metadata["period"] != "day" {
		t.Errorf("cap error metadata = %v", got.Metadata)
	}
	after := e.books(t, acct)
	after.check(t)
	if after.credits != before.credits || len(after.entries) != len(before.entries) {
		t.Errorf("books changed: %d credits / %d entries, were %d / %d", after.credits, len(after.entries), before.credits, len(before.entries))
	}
	if after.counters["user_capped"] != before.counters["user_capped"] {
		t.Errorf("counter changed: %+v, was %+v", after.counters["user_capped"], before.counters["user_capped"])
	}
	// The refused keys are unused: each can apply later.
	if _, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_ok", 1, "r7")); err != nil {
		t.Errorf("key of a refused spend: %v", err)
	}
}

// TestOrgSpendRemovalRace: a member removed while 50 of its spends race
// gets none applied after the removal commits. A transaction holding the
// account's row lock lines the spends and the removal up behind it (25
// spends, the removal, 25 more), then lets them all go at once; every
// spend's ledger id is compared with the last id committed before the
// removal, read in the removal's own transaction.
func TestOrgSpendRemovalRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const spends = 50
	// A connection for each spend, the removal, the lock holder and the
	// waiting check. Each spend in its own transaction, so that each
	// waits for the account's lock in PostgreSQL, where the test sees it:
	// group commit would queue one account's spends in userd instead.
	e := newOrgEnv(t, &testClock{t: day0}, spends+4, store.Options{DisableWriteBatching: true})
	acct := e.newOrg(t, "org_a", 1000, member{clerkUserID: "user_m"})
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		ids     []int64
		refused int
		other   []error
	)
	hold, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hold.Rollback(ctx) }()
	if _, err := hold.Exec(ctx, `SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE`, acct); err != nil {
		t.Fatal(err)
	}
	waiting := func(n int) func() bool {
		return func() bool {
			var got int
			err := e.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got)
			return err == nil && got >= n
		}
	}
	spend := func(i int) {
		wg.Go(func() {
			res, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 1, "race-"+strconv.Itoa(i)))
			mu.Lock()
			defer mu.Unlock()
			switch e, _ := apperr.As(err); {
			case err == nil:
				ids = append(ids, res.ID)
			case e != nil && e.Reason == apperr.ReasonNotOrganizationMember:
				refused++
			default:
				other = append(other, err)
			}
		})
	}
	for i := range spends / 2 {
		spend(i)
	}
	testwait.Until(t, 30*time.Second, "the first spends to wait for the account", waiting(spends/2))
	var (
		cut       int64
		removeErr error
	)
	removed := make(chan struct{})
	go func() {
		defer close(removed)
		cut, removeErr = e.removeMember(t, "org_a", "user_m", acct)
	}()
	testwait.Until(t, 30*time.Second, "the removal to wait for the account", waiting(spends/2+1))
	for i := spends / 2; i < spends; i++ {
		spend(i)
	}
	testwait.Until(t, 30*time.Second, "every spend to wait for the account", waiting(spends+1))
	if err := hold.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	<-removed
	if removeErr != nil {
		t.Fatalf("remove: %v", removeErr)
	}
	if len(other) > 0 {
		t.Fatalf("unexpected errors: %v", other)
	}
	for _, id := range ids {
		if id > cut {
			t.Errorf("spend %d applied after the removal committed (last id before it: %d)", id, cut)
		}
	}
	if len(ids)+refused != spends {
		t.Errorf("%d applied + %d refused, want %d", len(ids), refused, spends)
	}
	b := e.books(t, acct)
	b.check(t)
	if _, n := b.spentBy("user_m"); n != len(ids) {
		t.Errorf("ledger holds %d spends of the member, %d were answered applied", n, len(ids))
	}
	t.Logf("%d applied before the removal, %d refused after it", len(ids), refused)
	// And later: refused.
	_, err = e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 1, "after"))
	wantKind(t, err, apperr.KindPermissionDenied)
}

// TestOrgSpendCapsRace: 20 members racing, each with a cap, never exceed
// a cap or the balance; the books agree afterwards.
func TestOrgSpendCapsRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newOrgEnv(t, &testClock{t: day0}, 24)
	const (
		members  = 20
		attempts = 12
		capDay   = 9
		balance  = 150 // below the sum of the caps (180): both bind
	)
	var ms []member
	for i := range members {
		ms = append(ms, member{clerkUserID: fmt.Sprintf("user_m%02d", i)})
	}
	acct := e.newOrg(t, "org_a", balance, ms...)
	for _, m := range ms {
		if _, err := e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: m.clerkUserID,
			Period: users.CapPeriodDay, Cap: capDay, ChangedBy: "user_admin"}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		applied = map[string]int64{}
		other   []error
	)
	start := make(chan struct{})
	for _, m := range ms {
		for a := range attempts {
			wg.Go(func() {
				<-start
				amount := int64(1 + rand.IntN(3))
				res, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", m.clerkUserID, amount, fmt.Sprintf("%s-%d", m.clerkUserID, a)))
				mu.Lock()
				defer mu.Unlock()
				switch e, _ := apperr.As(err); {
				case err == nil:
					applied[m.clerkUserID] += -res.Delta
				case e != nil && (e.Reason == apperr.ReasonMemberCapReached || e.Reason == apperr.ReasonInsufficientCredits):
				default:
					other = append(other, err)
				}
			})
		}
	}
	close(start)
	wg.Wait()
	if len(other) > 0 {
		t.Fatalf("unexpected errors: %v", other)
	}
	b := e.books(t, acct)
	b.check(t)
	var total int64
	for _, m := range ms {
		spent, _ := b.spentBy(m.clerkUserID)
		total += spent
		if spent > capDay {
			t.Errorf("%s spent %d, over its cap of %d", m.clerkUserID, spent, capDay)
		}
		if spent != applied[m.clerkUserID] {
			t.Errorf("%s: ledger %d, answered applied %d", m.clerkUserID, spent, applied[m.clerkUserID])
		}
		if c := b.counters[m.clerkUserID]; c.spent != spent || !c.periodStart.Equal(users.CapPeriodDay.Start(day0)) {
			t.Errorf("%s: counter %+v, ledger spent %d in the period of %v", m.clerkUserID, c, spent, day0)
		}
	}
	if total > balance || b.credits != balance-total {
		t.Errorf("spent %d of %d, balance now %d", total, balance, b.credits)
	}
	t.Logf("spent %d of %d by %d members (caps of %d)", total, balance, members, capDay)
}

// TestOrgSpendCapPeriodRollover: a cap counts per UTC day, ISO week and
// calendar month, by the injected clock; a new period starts from 0.
func TestOrgSpendCapPeriodRollover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cases := []struct {
		period     users.CapPeriod
		last, next time.Time // the last instant of a period, the first of the next
	}{
		{users.CapPeriodDay, time.Date(2026, 3, 10, 23, 59, 59, 999999000, time.UTC), time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC)},
		// Sunday 23:59 to Monday 00:00 UTC.
		{users.CapPeriodWeek, time.Date(2026, 3, 15, 23, 59, 0, 0, time.UTC), time.Date(2026, 3, 16, 0, 0, 0, 0, time.UTC)},
		{users.CapPeriodMonth, time.Date(2026, 2, 28, 23, 59, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, c := range cases {
		t.Run(string(c.period), func(t *testing.T) {
			t.Parallel()
			// The same period, seen from its first day: a week from Monday,
			// a month from the 1st.
			first := c.period.Start(c.last)
			e := setupOrgs(t, first)
			e.newOrg(t, "org_a", 100, member{clerkUserID: "user_m"})
			if _, err := e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_m",
				Period: c.period, Cap: 10, ChangedBy: "user_admin"}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 6, "a")); err != nil {
				t.Fatal(err)
			}
			e.clock.Set(c.last)
			if _, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 4, "b")); err != nil {
				t.Fatalf("up to the cap: %v", err)
			}
			_, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 1, "c"))
			if got := wantKind(t, err, apperr.KindInsufficientCredits); got.Reason != apperr.ReasonMemberCapReached || got.Metadata["spent"] != "10" {
				t.Fatalf("past the cap: %v %v", err, got.Metadata)
			}
			e.clock.Set(c.next)
			if _, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 7, "c")); err != nil {
				t.Fatalf("in the next period: %v", err)
			}
			caps, err := e.svc.ListMemberSpendingCaps(ctx, "org_a")
			if err != nil || len(caps) != 1 {
				t.Fatalf("caps = %+v, %v", caps, err)
			}
			got := caps[0]
			if got.Spent != 7 || got.Remaining != 3 || !got.PeriodStart.Equal(c.next) || !got.PeriodEnd.Equal(c.period.End(c.next)) {
				t.Errorf("cap in the next period = %+v, want 7 spent from %v", got.MemberCap, c.next)
			}
			_, err = e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 4, "d"))
			wantKind(t, err, apperr.KindInsufficientCredits)
		})
	}
}

// TestOrgSpendReplayAfterRemoval: a retry of an applied spend answers the
// original entry even after the member was removed, or once its cap is
// reached; a new key is refused.
func TestOrgSpendReplayAfterRemoval(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setupOrgs(t, day0)
	acct := e.newOrg(t, "org_a", 100, member{clerkUserID: "user_m"}, member{clerkUserID: "user_c"})
	if _, err := e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_c",
		Period: users.CapPeriodWeek, Cap: 5, ChangedBy: "user_admin"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: 5, ChangedBy: "service:test"}); err != nil {
		t.Fatal(err)
	}
	first, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 7, "m1"))
	if err != nil {
		t.Fatal(err)
	}
	byAction, err := e.svc.DeductCredits(ctx, users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_c", Action: "render", IdempotencyKey: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.removeMember(t, "org_a", "user_m", acct); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		in   users.CreditChange
		want users.Transaction
	}{
		{"removed member", orgDeduct("org_a", "user_m", 7, "m1"), first.Transaction},
		{"cap reached", users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_c", Action: "render", IdempotencyKey: "c1"}, byAction.Transaction},
	} {
		got, err := e.svc.DeductCredits(ctx, c.in)
		if err != nil || !got.Replayed || got.ID != c.want.ID || got.Delta != c.want.Delta {
			t.Errorf("%s: replay = %+v, %v; want entry %d", c.name, got, err, c.want.ID)
		}
	}
	// A replay with other parameters is a reused key, not a refusal.
	_, err = e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 8, "m1"))
	wantKind(t, err, apperr.KindConflict)
	_, err = e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 7, "m2"))
	wantKind(t, err, apperr.KindPermissionDenied)
	_, err = e.svc.DeductCredits(ctx, users.CreditChange{ClerkOrgID: "org_a", ClerkUserID: "user_c", Action: "render", IdempotencyKey: "c2"})
	wantKind(t, err, apperr.KindInsufficientCredits)
	b := e.books(t, acct)
	b.check(t)
	if c := b.counters["user_c"]; c.spent != 5 {
		t.Errorf("counter after replays = %+v, want 5", c)
	}
}

// TestOrgSpendEitherPath: a capped member's spend applies the same from an
// account without expiring grants (userd_org_spend's one statement after
// the lock, 00031) and from one holding some (00020's steps: the grants
// expire and are taken first): the entry names the member and the
// service, the cap's counter moves, the credits.changed event is on the
// organization's stream with the member as actor. A member whose user is
// deleted is no member, and its spend changes nothing.
func TestOrgSpendEitherPath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newOrgEnv(t, nil, 0)
	for _, c := range []struct {
		org      string
		expiring bool
	}{{"org_plain", false}, {"org_expiring", true}} {
		t.Run(c.org, func(t *testing.T) {
			acct := e.newOrg(t, c.org, 100, member{clerkUserID: "user_" + c.org}, member{clerkUserID: "user_gone_" + c.org})
			if c.expiring {
				if _, err := e.svc.GrantCredits(ctx, users.CreditChange{ClerkOrgID: c.org, Service: "seed", Amount: 10,
					IdempotencyKey: "grant", ExpiresAt: time.Now().Add(24 * time.Hour)}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: c.org, MemberClerkUserID: "user_" + c.org,
				Period: users.CapPeriodMonth, Cap: 50, ChangedBy: "user_admin"}); err != nil {
				t.Fatal(err)
			}
			res, err := e.svc.DeductCredits(ctx, users.CreditChange{ClerkOrgID: c.org, ClerkUserID: "user_" + c.org,
				Service: "render-svc", Amount: 30, IdempotencyKey: "k1"})
			if err != nil || res.Replayed || res.Delta != -30 {
				t.Fatalf("DeductCredits = %+v, %v; want -30 applied", res, err)
			}
			var (
				kind, stream, actor string
				eventEntry          int64
			)
			if err := e.pool.QueryRow(ctx, `SELECT kind, clerk_org_id, actor_clerk_user_id, (payload->>'id')::bigint
				FROM feed_events WHERE account_id = $1 AND kind = 'credits.changed' ORDER BY order_xid DESC, id DESC LIMIT 1`, acct).Scan(&kind, &stream, &actor, &eventEntry); err != nil {
				t.Fatal(err)
			}
			if kind != "credits.changed" || stream != c.org || actor != "user_"+c.org || eventEntry != res.ID {
				t.Errorf("event = %s on %s by %s for entry %d, want credits.changed on %s by user_%s for %d",
					kind, stream, actor, eventEntry, c.org, c.org, res.ID)
			}
			// 20 left of the cap: 25 is refused, and so is a member
			// whose user was deleted.
			_, err = e.svc.DeductCredits(ctx, orgDeduct(c.org, "user_"+c.org, 25, "k2"))
			wantKind(t, err, apperr.KindInsufficientCredits)
			if _, err := e.pool.Exec(ctx, `SELECT userd_delete_clerk_user(NULL, 'user.deleted', $1, false)`, "user_gone_"+c.org); err != nil {
				t.Fatal(err)
			}
			_, err = e.svc.DeductCredits(ctx, orgDeduct(c.org, "user_gone_"+c.org, 1, "k3"))
			if got := wantKind(t, err, apperr.KindPermissionDenied); got.Reason != apperr.ReasonNotOrganizationMember {
				t.Errorf("deleted user's spend: reason %q, want %q", got.Reason, apperr.ReasonNotOrganizationMember)
			}
			b := e.books(t, acct)
			b.check(t)
			last := b.entries[len(b.entries)-1]
			if last.id != res.ID || last.actor != "user_"+c.org || last.service != "render-svc" || last.key != "k1" {
				t.Errorf("last entry = %+v, want entry %d by user_%s through render-svc", last, res.ID, c.org)
			}
			if got := b.counters["user_"+c.org]; got.spent != 30 {
				t.Errorf("counter = %+v, want 30 spent", got)
			}
			if c.expiring {
				var remaining int64
				if err := e.pool.QueryRow(ctx, `SELECT coalesce(sum(remaining), 0) FROM credit_grants WHERE account_id = $1`, acct).Scan(&remaining); err != nil {
					t.Fatal(err)
				}
				if remaining != 0 {
					t.Errorf("grants keep %d, want 0: the spend takes them first", remaining)
				}
			}
		})
	}
}

// TestSetMemberSpendingCap: caps are set, changed and removed with an
// audit trail and a feed event; a new cap counts the period's spending
// so far; bad input changes nothing.
func TestSetMemberSpendingCap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setupOrgs(t, day0)
	acct := e.newOrg(t, "org_a", 100, member{clerkUserID: "user_m"})
	e.newOrg(t, "org_b", 0)
	if _, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 4, "before-cap")); err != nil {
		t.Fatal(err)
	}
	set := func(p users.CapPeriod, capCredits int64) (users.SetMemberCapResult, error) {
		return e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_m",
			Period: p, Cap: capCredits, ChangedBy: "user_admin"})
	}
	res, err := set(users.CapPeriodMonth, 10)
	if err != nil || !res.Changed || res.Cap == nil || res.Cap.Spent != 4 || res.Cap.Remaining != 6 ||
		!res.Cap.PeriodStart.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) || res.Cap.UpdatedBy != "user_admin" {
		t.Fatalf("set = %+v (%+v), %v; want 4 of 10 spent this month", res, res.Cap, err)
	}
	if res, err := set(users.CapPeriodMonth, 10); err != nil || res.Changed || res.Cap == nil || res.Cap.Cap != 10 {
		t.Errorf("same cap again = %+v, %v; want unchanged", res, err)
	}
	if res, err := set(users.CapPeriodMonth, 20); err != nil || !res.Changed || res.Cap.Spent != 4 {
		t.Errorf("raise = %+v, %v", res, err)
	}
	if res, err := set(users.CapPeriodNone, 0); err != nil || !res.Changed || res.Cap != nil {
		t.Errorf("remove = %+v, %v", res, err)
	}
	if res, err := set(users.CapPeriodNone, 0); err != nil || res.Changed {
		t.Errorf("remove again = %+v, %v", res, err)
	}
	var changes int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM account_member_cap_changes WHERE account_id = $1 AND changed_by = 'user_admin'`, acct).Scan(&changes); err != nil || changes != 3 {
		t.Errorf("audit rows = %d, %v; want 3", changes, err)
	}
	var events int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM feed_events WHERE clerk_org_id = 'org_a' AND kind = 'member_cap.changed' AND actor_clerk_user_id = 'user_admin' AND account_id = $1`, acct).Scan(&events); err != nil || events != 3 {
		t.Errorf("member_cap.changed events = %d, %v; want 3", events, err)
	}

	for _, c := range []struct {
		name string
		in   users.SetMemberCapInput
		kind apperr.Kind
	}{
		{"not a member", users.SetMemberCapInput{ClerkOrgID: "org_b", MemberClerkUserID: "user_m", Period: users.CapPeriodDay, Cap: 1, ChangedBy: "user_admin"}, apperr.KindPermissionDenied},
		{"unknown organization", users.SetMemberCapInput{ClerkOrgID: "org_zz", MemberClerkUserID: "user_m", Period: users.CapPeriodDay, Cap: 1, ChangedBy: "user_admin"}, apperr.KindNotFound},
		{"bad period", users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_m", Period: "year", Cap: 1, ChangedBy: "user_admin"}, apperr.KindInvalidArgument},
		{"negative cap", users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_m", Period: users.CapPeriodDay, Cap: -1, ChangedBy: "user_admin"}, apperr.KindInvalidArgument},
		{"cap without period", users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_m", Cap: 5, ChangedBy: "user_admin"}, apperr.KindInvalidArgument},
		{"bad member", users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "bob", Period: users.CapPeriodDay, Cap: 1, ChangedBy: "user_admin"}, apperr.KindInvalidArgument},
		{"bad organization", users.SetMemberCapInput{ClerkOrgID: "", MemberClerkUserID: "user_m", Period: users.CapPeriodDay, Cap: 1, ChangedBy: "user_admin"}, apperr.KindInvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.svc.SetMemberSpendingCap(ctx, c.in)
			wantKind(t, err, c.kind)
		})
	}
	if _, err := e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_m", Period: users.CapPeriodDay, Cap: 1}); err == nil {
		t.Error("a cap change without a principal was accepted")
	}
	caps, err := e.svc.ListMemberSpendingCaps(ctx, "org_a")
	if err != nil || len(caps) != 0 {
		t.Errorf("caps after the refusals = %+v, %v; want none", caps, err)
	}
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM account_member_cap_changes`).Scan(&changes); err != nil || changes != 3 {
		t.Errorf("audit rows after the refusals = %d, %v; want 3", changes, err)
	}
}

// TestOrgCanAfford: can-afford for a member answers as a deduction would
// check, counting the member's cap.
func TestOrgCanAfford(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setupOrgs(t, day0)
	e.newOrg(t, "org_a", 20, member{clerkUserID: "user_m", permissions: []string{"org:credits:spend"}}, member{clerkUserID: "user_n"})
	if _, err := e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_m",
		Period: users.CapPeriodDay, Cap: 8, ChangedBy: "user_admin"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_m", 5, "x")); err != nil {
		t.Fatal(err)
	}
	ask := func(member, perm string, amount int64) (users.Affordability, error) {
		return e.svc.CanAffordFor(ctx, users.AffordQuery{ClerkUserID: member, ClerkOrgID: "org_a", RequiredPermission: perm,
			Cost: users.Cost{Amount: amount}})
	}
	if a, err := ask("user_m", "org:credits:spend", 3); err != nil || !a.Allowed || a.Available != 15 || a.Cap == nil || a.Cap.Remaining != 3 {
		t.Errorf("within the cap = %+v, %v", a, err)
	}
	if a, err := ask("user_m", "", 4); err != nil || a.Allowed {
		t.Errorf("past the cap = %+v, %v; want not allowed", a, err)
	}
	if a, err := ask("user_n", "", 16); err != nil || a.Allowed || a.Cap != nil {
		t.Errorf("past the balance = %+v, %v; want not allowed", a, err)
	}
	_, err := ask("user_n", "org:credits:spend", 1)
	wantKind(t, err, apperr.KindPermissionDenied)
	_, err = ask("user_x", "", 1)
	wantKind(t, err, apperr.KindPermissionDenied)
}

// TestOrgGrantAndReadAccount: a service grants to an organization's
// account; GetAccount shows its members with caps and spending.
func TestOrgGrantAndReadAccount(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setupOrgs(t, day0)
	acct := e.newOrg(t, "org_a", 0, member{clerkUserID: "user_m", permissions: []string{"org:credits:spend"}}, member{clerkUserID: "user_n"})
	if _, err := e.svc.GrantCredits(ctx, users.CreditChange{ClerkOrgID: "org_a", Service: "billing", Amount: 40, IdempotencyKey: "g1"}); err != nil {
		t.Fatalf("grant: %v", err)
	}
	if _, err := e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: "org_a", MemberClerkUserID: "user_n",
		Period: users.CapPeriodWeek, Cap: 30, ChangedBy: "user_admin"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", "user_n", 12, "n1")); err != nil {
		t.Fatal(err)
	}
	a, err := e.svc.GetAccount(ctx, users.AccountRef{ClerkOrgID: "org_a"})
	if err != nil {
		t.Fatalf("GetAccount: %v", err)
	}
	if a.ID != acct || a.Credits != 28 || len(a.Members) != 2 {
		t.Fatalf("account = %+v", a)
	}
	sort.Slice(a.Members, func(i, j int) bool { return a.Members[i].ClerkUserID < a.Members[j].ClerkUserID })
	m, n := a.Members[0], a.Members[1]
	if m.ClerkUserID != "user_m" || m.CapPeriod != "" || len(m.Permissions) != 1 || m.Permissions[0] != "org:credits:spend" {
		t.Errorf("member m = %+v", m)
	}
	if n.ClerkUserID != "user_n" || n.CapPeriod != string(users.CapPeriodWeek) || n.Cap != 30 || n.Spent != 12 {
		t.Errorf("member n = %+v", n)
	}
	b := e.books(t, acct)
	b.check(t)
	if g := b.entries[0]; g.service != "billing" || g.actor != "" || g.delta != 40 {
		t.Errorf("grant entry = %+v", g)
	}
	_, err = e.svc.GrantCredits(ctx, users.CreditChange{ClerkOrgID: "org_zz", Service: "billing", Amount: 1, IdempotencyKey: "g2"})
	wantKind(t, err, apperr.KindNotFound)

	// A service moves the organization to a plan with a bonus; a retry
	// replays it.
	in := users.SetPlanInput{ClerkOrgID: "org_a", Service: "billing", Plan: users.PlanPro, BonusCredits: 5, IdempotencyKey: "p1"}
	plan, err := e.svc.SetPlan(ctx, in)
	if err != nil || plan.Replayed || plan.Account.Plan != users.PlanPro || plan.Account.Credits != 33 ||
		plan.Bonus == nil || plan.Bonus.Delta != 5 || plan.Change.Service != "billing" {
		t.Fatalf("SetPlan = %+v, %v", plan, err)
	}
	if again, err := e.svc.SetPlan(ctx, in); err != nil || !again.Replayed || again.Change.ID != plan.Change.ID {
		t.Errorf("SetPlan replay = %+v, %v", again, err)
	}
	for _, c := range []struct {
		name string
		in   users.SetPlanInput
		kind apperr.Kind
	}{
		{"unknown organization", users.SetPlanInput{ClerkOrgID: "org_zz", Plan: users.PlanPro, IdempotencyKey: "p2"}, apperr.KindNotFound},
		{"with a user", users.SetPlanInput{ClerkOrgID: "org_a", ClerkUserID: "user_m", Plan: users.PlanPro, IdempotencyKey: "p3"}, apperr.KindInvalidArgument},
		{"bad plan", users.SetPlanInput{ClerkOrgID: "org_a", Plan: "GOLD", IdempotencyKey: "p4"}, apperr.KindInvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.svc.SetPlan(ctx, c.in)
			wantKind(t, err, c.kind)
		})
	}
	b = e.books(t, acct)
	b.check(t)
}

// TestOrgLedgerByMember: an organization's ledger lists every entry with
// who acted, or one member's, page by page.
func TestOrgLedgerByMember(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setupOrgs(t, day0)
	e.newOrg(t, "org_a", 100, member{clerkUserID: "user_m"}, member{clerkUserID: "user_n"})
	for i := range 5 {
		for _, who := range []string{"user_m", "user_n"} {
			if _, err := e.svc.DeductCredits(ctx, orgDeduct("org_a", who, 1, fmt.Sprintf("%s-%d", who, i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	var got []users.Transaction
	q := users.LedgerQuery{ClerkOrgID: "org_a", MemberClerkUserID: "user_m", PageSize: 2}
	for pages := 0; ; pages++ {
		page, err := e.svc.ListAccountCreditTransactions(ctx, q)
		if err != nil || pages > 5 {
			t.Fatalf("page %d: %v", pages, err)
		}
		got = append(got, page.Transactions...)
		if page.NextPageToken == "" {
			break
		}
		q.PageToken = page.NextPageToken
	}
	if len(got) != 5 {
		t.Fatalf("user_m's entries = %d, want 5", len(got))
	}
	for i, tx := range got {
		if tx.ActorClerkUserID != "user_m" || tx.Delta != -1 || (i > 0 && tx.ID >= got[i-1].ID) {
			t.Errorf("entry %d = %+v", i, tx)
		}
	}
	usage, err := e.svc.SummarizeUsageByMember(ctx, "org_a", time.Time{}, time.Now().Add(time.Hour))
	if err != nil || len(usage) != 3 || usage[0].ClerkUserID != "" || usage[0].Granted != 100 ||
		usage[1].ClerkUserID != "user_m" || usage[1].Spent != 5 || usage[1].Entries != 5 || usage[2].Spent != 5 {
		t.Errorf("usage by member = %+v, %v", usage, err)
	}
	if _, err := e.svc.SummarizeUsageByMember(ctx, "org_zz", time.Time{}, time.Time{}); apperr.KindOf(err) != apperr.KindNotFound {
		t.Errorf("usage of an unknown organization: %v", err)
	}
	all, err := e.svc.ListAccountCreditTransactions(ctx, users.LedgerQuery{ClerkOrgID: "org_a", PageSize: 100})
	if err != nil || len(all.Transactions) != 11 || all.Transactions[10].ActorClerkUserID != "" || all.NextPageToken != "" {
		t.Errorf("whole ledger = %d entries (%v), want 10 spends and the seed grant", len(all.Transactions), err)
	}
	for _, c := range []struct {
		name string
		q    users.LedgerQuery
		kind apperr.Kind
	}{
		{"unknown organization", users.LedgerQuery{ClerkOrgID: "org_zz"}, apperr.KindNotFound},
		{"bad organization", users.LedgerQuery{ClerkOrgID: "acme"}, apperr.KindInvalidArgument},
		{"bad member", users.LedgerQuery{ClerkOrgID: "org_a", MemberClerkUserID: "m"}, apperr.KindInvalidArgument},
		{"member filter of a personal ledger", users.LedgerQuery{ClerkUserID: "user_m", MemberClerkUserID: "user_m"}, apperr.KindInvalidArgument},
		{"bad token", users.LedgerQuery{ClerkOrgID: "org_a", PageToken: "x"}, apperr.KindInvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.svc.ListAccountCreditTransactions(ctx, c.q)
			wantKind(t, err, c.kind)
		})
	}
}
