package users_test

import (
	"context"
	"strings"
	"testing"

	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// TestDeletionErasesPersonalData: after user.deleted, no column of the
// user's row (nor any recorded webhook message) holds its email or names;
// the tombstone and the ledger stay and still balance, and the email is free
// for a new user. With KeepDeletedUserData the data stays.
func TestDeletionErasesPersonalData(t *testing.T) {
	t.Parallel()
	for _, keep := range []bool{false, true} {
		t.Run(map[bool]string{false: "Erase", true: "Keep"}[keep], func(t *testing.T) {
			t.Parallel()
			pool := testdb.Pool(t)
			st := store.New(pool)
			b := bundle{svc: users.NewService(st, users.DefaultInitialCredits), store: st}
			b.svc.KeepDeletedUserData(keep)
			ctx := context.Background()
			personal := []string{"ada.lovelace@example.com", "Augusta", "Byron-King", "https://img.example.com/ada.png"}
			ev := users.ClerkEvent{MessageID: "msg_1", Type: "user.created", User: users.ClerkUser{
				ID: "user_ada", Email: personal[0], FirstName: personal[1], LastName: personal[2], ImageURL: personal[3], UpdatedAt: 1,
			}}
			if _, err := b.svc.ApplyClerkUser(ctx, ev); err != nil {
				t.Fatal(err)
			}
			if _, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_ada", Amount: 3, IdempotencyKey: "k"}); err != nil {
				t.Fatal(err)
			}
			if out, err := b.svc.DeleteClerkUser(ctx, "msg_2", "user.deleted", "user_ada"); err != nil || out != users.OutcomeDeleted {
				t.Fatalf("delete: %v, %v", out, err)
			}
			var row, events string
			if err := pool.QueryRow(ctx, `SELECT row_to_json(u)::text FROM users u WHERE clerk_user_id = 'user_ada'`).Scan(&row); err != nil {
				t.Fatal(err)
			}
			if err := pool.QueryRow(ctx, `SELECT coalesce(string_agg(row_to_json(w)::text, ' '), '') FROM webhook_events w`).Scan(&events); err != nil {
				t.Fatal(err)
			}
			for _, p := range personal {
				if strings.Contains(events, p) {
					t.Errorf("webhook_events keep %q: %s", p, events)
				}
				if got := strings.Contains(row, p); got != keep {
					t.Errorf("keep=%v: the deleted user's row holds %q: %v (%s)", keep, p, got, row)
				}
			}
			if !strings.Contains(row, `"deleted_at":"`) {
				t.Errorf("no tombstone: %s", row)
			}
			if ts := checkInvariants(t, b, "user_ada"); len(ts) != 2 {
				t.Errorf("ledger = %+v, want the initial credits and the deduction", ts)
			}
			// The email no longer blocks anyone.
			if _, _, err := b.svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_new", Email: personal[0]}); err != nil {
				t.Errorf("a new user cannot take the deleted user's email: %v", err)
			}
		})
	}
}
