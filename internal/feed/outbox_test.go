package feed_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

type bundle struct {
	pool  *pgxpool.Pool
	store *store.Store
	svc   *users.Service
}

func setup(t testing.TB) bundle {
	t.Helper()
	pool := testdb.Pool(t)
	st := store.New(pool, store.Options{})
	return bundle{pool: pool, store: st, svc: users.NewService(st, users.Options{InitialCredits: users.DefaultInitialCredits})}
}

// all reads every event committed so far, in feed order. It first waits
// for the feed's horizon to pass every transaction that has committed:
// that can take a while when other transactions on the server (other
// tests) are open, since the horizon is the server's oldest one.
func all(t testing.TB, b bundle) []feed.Event {
	t.Helper()
	settle(t, b)
	var out []feed.Event
	after := feed.Position{}
	for {
		page, err := b.store.ReadUserEvents(context.Background(), after, "", 1000)
		if err != nil {
			t.Fatalf("ReadUserEvents: %v", err)
		}
		out = append(out, page.Events...)
		if len(page.Events) < 1000 {
			return out
		}
		after = page.Events[len(page.Events)-1].Position
	}
}

// settle waits until every transaction committed before the call is below
// the feed's horizon.
func settle(t testing.TB, b bundle) {
	t.Helper()
	ctx := context.Background()
	var xid int64
	if err := b.pool.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		page, err := b.store.ReadUserEvents(ctx, feed.Position{Xid: math.MaxInt64}, "", 1)
		if err != nil {
			t.Fatal(err)
		}
		if page.Horizon > xid {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the feed's horizon stayed at %d, below %d, for 2 minutes: a transaction on the server is open that long", page.Horizon, xid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// summary is an event without the parts a test cannot predict.
func summary(ev feed.Event) string {
	s := string(ev.Kind) + " " + ev.ClerkUserID
	switch {
	case ev.Transaction != nil:
		t := ev.Transaction
		s += fmt.Sprintf(" %s %+d =%d %q %q", t.Kind, t.Delta, t.BalanceAfter, t.Reason, t.IdempotencyKey)
	case ev.PlanChange != nil:
		p := ev.PlanChange
		s += fmt.Sprintf(" %s->%s bonus=%d tx=%v %q %q", p.PreviousPlan, p.Plan, p.BonusCredits, p.TransactionID != 0, p.Reason, p.IdempotencyKey)
	case ev.User != nil:
		u := ev.User
		s += fmt.Sprintf(" email=%q name=%q %q image=%q %s credits=%d deleted=%v", u.Email, u.FirstName, u.LastName, u.ImageURL, u.Plan, u.Credits, u.DeletedAt != nil)
	}
	return s
}

func summaries(evs []feed.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = summary(ev)
	}
	return out
}

// TestOutboxEmitsEachCommittedChangeOnce: every change that commits writes
// its event, in the order it was made; replays, refusals, duplicate and
// stale deliveries, and updates that change nothing a consumer sees write
// none.
func TestOutboxEmitsEachCommittedChangeOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	clerk := func(msg string, u users.ClerkUser) users.EventOutcome {
		t.Helper()
		out, err := b.svc.ApplyClerkUser(ctx, users.ClerkEvent{MessageID: msg, Type: "user.updated", User: u})
		must(err)
		return out
	}

	_, _, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_a", Email: "a@example.com", FirstName: "Ada"})
	must(err)
	_, _, err = b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_a", Email: "a@example.com"}) // exists
	must(err)
	deduct := users.CreditChange{ClerkUserID: "user_a", Amount: 3, IdempotencyKey: "k1", Reason: "render"}
	_, err = b.svc.DeductCredits(ctx, deduct)
	must(err)
	_, err = b.svc.DeductCredits(ctx, deduct) // replay
	must(err)
	_, err = b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_a", Amount: 1000, IdempotencyKey: "k2"})
	if err == nil {
		t.Fatal("deducting more than the balance succeeded")
	}
	_, err = b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: "user_a", Amount: 5, IdempotencyKey: "k3"})
	must(err)
	plan := users.SetPlanInput{ClerkUserID: "user_a", Plan: users.PlanPro, BonusCredits: 100, IdempotencyKey: "k4", Reason: "upgrade"}
	_, err = b.svc.SetPlan(ctx, plan)
	must(err)
	_, err = b.svc.SetPlan(ctx, plan) // replay
	must(err)
	_, err = b.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: "user_a", Plan: users.PlanEnterprise, IdempotencyKey: "k5"})
	must(err)

	if out := clerk("msg_1", users.ClerkUser{ID: "user_a", Email: "a@example.com", FirstName: "Ada", LastName: "Lovelace", UpdatedAt: 10}); out != users.OutcomeUpdated {
		t.Fatalf("msg_1: %s", out)
	}
	clerk("msg_1", users.ClerkUser{ID: "user_a", Email: "a@example.com", FirstName: "Other", UpdatedAt: 11}) // duplicate
	clerk("msg_2", users.ClerkUser{ID: "user_a", Email: "a@example.com", FirstName: "Old", UpdatedAt: 5})    // stale
	// Newer, but the same profile: nothing a consumer sees changed.
	if out := clerk("msg_3", users.ClerkUser{ID: "user_a", Email: "a@example.com", FirstName: "Ada", LastName: "Lovelace", UpdatedAt: 20}); out != users.OutcomeUpdated {
		t.Fatalf("msg_3: %s", out)
	}
	// A new user created by a delivery takes the email: the older holder
	// loses it (an update of user_a).
	clerk("msg_4", users.ClerkUser{ID: "user_b", Email: "a@example.com", UpdatedAt: 30})
	_, err = b.svc.DeleteClerkUser(ctx, "msg_5", "user.deleted", "user_b")
	must(err)
	_, err = b.svc.DeleteClerkUser(ctx, "msg_6", "user.deleted", "user_b") // already deleted
	must(err)
	_, err = b.svc.DeleteClerkUser(ctx, "msg_7", "user.deleted", "user_never_seen") // tombstone
	must(err)
	clerk("msg_8", users.ClerkUser{ID: "user_b", FirstName: "Zombie", UpdatedAt: 40}) // deleted stays deleted

	want := []string{
		`user.created user_a email="a@example.com" name="Ada" "" image="" FREE credits=10 deleted=false`,
		`credits.changed user_a INITIAL +10 =10 "" ""`,
		`credits.changed user_a DEDUCT -3 =7 "render" "k1"`,
		`credits.changed user_a GRANT +5 =12 "" "k3"`,
		`credits.changed user_a PLAN_BONUS +100 =112 "upgrade" "k4"`,
		`plan.changed user_a FREE->PRO bonus=100 tx=true "upgrade" "k4"`,
		`plan.changed user_a PRO->ENTERPRISE bonus=0 tx=false "" "k5"`,
		`user.updated user_a email="a@example.com" name="Ada" "Lovelace" image="" ENTERPRISE credits=112 deleted=false`,
		`user.updated user_a email="" name="Ada" "Lovelace" image="" ENTERPRISE credits=112 deleted=false`,
		// user_b's deletion erased its email from its earlier events too.
		`user.created user_b email="" name="" "" image="" FREE credits=10 deleted=false`,
		`credits.changed user_b INITIAL +10 =10 "" ""`,
		`user.deleted user_b email="" name="" "" image="" FREE credits=10 deleted=true`,
		`user.deleted user_never_seen email="" name="" "" image="" FREE credits=0 deleted=true`,
	}
	got := all(t, b)
	if diff := cmp.Diff(want, summaries(got)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	// Ids are unique and the order is the feed's.
	for i := 1; i < len(got); i++ {
		if !got[i-1].Position.Less(got[i].Position) || got[i].ID != got[i].Position.ID {
			t.Errorf("event %d at %v after %v", got[i].ID, got[i].Position, got[i-1].Position)
		}
	}
}

// TestDeletionErasesPersonalDataFromEvents: once a deletion erased a
// user's personal data, none of the user's events keeps it; with
// KeepDeletedUserData they keep it, like the user's row.
func TestDeletionErasesPersonalDataFromEvents(t *testing.T) {
	t.Parallel()
	for _, keep := range []bool{false, true} {
		t.Run(map[bool]string{false: "Erase", true: "Keep"}[keep], func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.svc = users.NewService(b.store, users.Options{InitialCredits: users.DefaultInitialCredits, KeepDeletedUserData: keep})
			ctx := context.Background()
			personal := []string{"ada.lovelace@example.com", "Augusta", "Byron-King", "https://img.example.com/ada.png"}
			for i, u := range []users.ClerkUser{
				{ID: "user_ada", Email: personal[0], FirstName: personal[1], UpdatedAt: 1},
				{ID: "user_ada", Email: personal[0], FirstName: personal[1], LastName: personal[2], ImageURL: personal[3], UpdatedAt: 2},
			} {
				if _, err := b.svc.ApplyClerkUser(ctx, users.ClerkEvent{MessageID: fmt.Sprint("msg_", i), Type: "user.updated", User: u}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := b.svc.DeleteClerkUser(ctx, "msg_del", "user.deleted", "user_ada"); err != nil {
				t.Fatal(err)
			}
			holds := func(p string) bool {
				t.Helper()
				var events string
				if err := b.pool.QueryRow(ctx, `SELECT string_agg(row_to_json(e)::text, ' ') FROM feed_events e`).Scan(&events); err != nil {
					t.Fatal(err)
				}
				return strings.Contains(events, p)
			}
			for _, p := range personal {
				if got := holds(p); got != keep {
					t.Errorf("keep=%v: the events hold %q: %v", keep, p, got)
				}
			}
			if n := len(all(t, b)); n != 4 {
				t.Errorf("%d events, want created, initial credits, updated, deleted", n)
			}
			if !keep {
				return
			}
			// An erasure request for the deleted user (userd erase-user)
			// erases its kept data from its events too, and emits nothing.
			if _, err := b.svc.EraseUser(ctx, "user_ada"); err != nil {
				t.Fatal(err)
			}
			for _, p := range personal {
				if holds(p) {
					t.Errorf("after EraseUser the events hold %q", p)
				}
			}
			if n := len(all(t, b)); n != 4 {
				t.Errorf("%d events after EraseUser, want still 4", n)
			}
		})
	}
}

// TestRolledBackWorkLeavesNoEvent: the event is written in the change's
// transaction; rolling it back takes the event with it.
func TestRolledBackWorkLeavesNoEvent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, _, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_a"}); err != nil {
		t.Fatal(err)
	}
	before := len(all(t, b))
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q := sqlcdb.New()
	row, err := q.ChangeCredits(ctx, tx, sqlcdb.ChangeCreditsParams{ClerkUserID: "user_a", Kind: "GRANT", Delta: 5, IdempotencyKey: "k"})
	if err != nil || *row.Status != "applied" {
		t.Fatalf("grant: %v %v", row.Status, err)
	}
	if _, err := q.SetPlan(ctx, tx, sqlcdb.SetPlanParams{ClerkUserID: "user_a", Plan: "PRO", IdempotencyKey: "k2"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(all(t, b)); got != before {
		t.Errorf("%d events after a rollback, want %d", got, before)
	}
}

// TestOneUsersEventsFollowItsLocks: a transaction that got its id before
// it locked a user (as a webhook batch does: its first event assigns the
// id) and changes the user after a younger transaction did still comes
// after it in the feed, so a consumer sees one user's balances in the
// order they were reached.
func TestOneUsersEventsFollowItsLocks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	for _, id := range []string{"user_a", "user_b"} {
		if _, _, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: id}); err != nil {
			t.Fatal(err)
		}
	}
	q := sqlcdb.New()
	grant := func(db sqlcdb.DBTX, user, key string) {
		t.Helper()
		row, err := q.ChangeCredits(ctx, db, sqlcdb.ChangeCreditsParams{ClerkUserID: user, Kind: "GRANT", Delta: 1, IdempotencyKey: key})
		if err != nil || *row.Status != "applied" {
			t.Fatalf("grant %s %s: %v %v", user, key, row.Status, err)
		}
	}
	older, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer older.Rollback(ctx)
	grant(older, "user_a", "older-a") // the older transaction's id
	grant(b.pool, "user_b", "younger-b")
	grant(older, "user_b", "older-b")
	if err := older.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range all(t, b) {
		if ev.ClerkUserID == "user_b" && ev.Transaction != nil {
			got = append(got, fmt.Sprintf("%s=%d", ev.Transaction.IdempotencyKey, ev.Transaction.BalanceAfter))
		}
	}
	if want := []string{"=10", "younger-b=11", "older-b=12"}; !slices.Equal(got, want) {
		t.Errorf("user_b's credit events: %v, want %v", got, want)
	}
}
