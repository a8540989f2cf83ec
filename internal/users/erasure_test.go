package users_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/userd/userd/internal/apperr"
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
			st := store.New(pool, store.Options{})
			b := bundle{svc: users.NewService(st, users.Options{InitialCredits: users.DefaultInitialCredits, KeepDeletedUserData: keep}), store: st}
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

// TestEraseUser: an erasure request erases a deleted user's kept data, and
// deletes and erases a live one, whatever KeepDeletedUserData says; the
// ledger stays and balances. An unknown user is NotFound and nothing is
// created.
func TestEraseUser(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	st := store.New(pool, store.Options{})
	b := bundle{svc: users.NewService(st, users.Options{InitialCredits: users.DefaultInitialCredits, KeepDeletedUserData: true}), store: st}
	ctx := context.Background()
	for i, id := range []string{"user_kept", "user_live"} {
		ev := users.ClerkEvent{MessageID: fmt.Sprintf("msg_%d", i), Type: "user.created", User: users.ClerkUser{
			ID: id, Email: id + "@example.com", FirstName: "Ada", LastName: "Lovelace", ImageURL: "https://img.example.com/a.png", UpdatedAt: 1,
		}}
		if _, err := b.svc.ApplyClerkUser(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_kept", Amount: 4, IdempotencyKey: "k"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.svc.DeleteClerkUser(ctx, "msg_del", "user.deleted", "user_kept"); err != nil {
		t.Fatal(err)
	}
	if u, _ := b.svc.UserIncludingDeleted(ctx, "user_kept"); u.Email == "" {
		t.Fatal("KeepDeletedUserData did not keep the email")
	}
	for _, id := range []string{"user_kept", "user_live"} {
		u, err := b.svc.EraseUser(ctx, id)
		if err != nil {
			t.Fatalf("EraseUser(%s): %v", id, err)
		}
		if u.DeletedAt == nil || u.Email != "" || u.FirstName != "" || u.LastName != "" || u.ImageURL != "" {
			t.Errorf("%s after EraseUser: %+v", id, u)
		}
		checkInvariants(t, b, id)
	}
	if ts := checkInvariants(t, b, "user_kept"); len(ts) != 2 {
		t.Errorf("ledger of user_kept = %+v, want the initial credits and the deduction", ts)
	}
	if _, err := b.svc.EraseUser(ctx, "user_nobody"); apperr.KindOf(err) != apperr.KindNotFound {
		t.Errorf("EraseUser of an unknown user: %v, want NotFound", err)
	}
	if _, err := st.GetUserByClerkIDIncludingDeleted(ctx, "user_nobody"); !errors.Is(err, users.ErrNoRow) {
		t.Errorf("EraseUser created a row: %v", err)
	}
}
