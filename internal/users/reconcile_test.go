package users_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/userd/userd/internal/users"
)

// TestSyncClerkUsers: listed states are classified against what is stored
// and only newer ones written; a state that can never be applied fails
// alone; a dry run writes nothing.
func TestSyncClerkUsers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	states := []users.ClerkUser{
		{ID: "user_new", Email: "new@example.com", UpdatedAt: 5},
		{ID: "org_notauser", UpdatedAt: 5},
		{ID: "user_noversion"},
	}
	want := []users.SyncResult{
		{ClerkUserID: "user_new", Outcome: users.OutcomeCreated},
		{ClerkUserID: "org_notauser", Outcome: users.OutcomeFailed},
		{ClerkUserID: "user_noversion", Outcome: users.OutcomeFailed},
	}
	ignoreReason := cmp.Transformer("", func(r users.SyncResult) users.SyncResult { r.Reason = ""; return r })
	dry, err := b.svc.SyncClerkUsers(ctx, states, true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, dry, ignoreReason); diff != "" {
		t.Errorf("dry run (-want +got):\n%s", diff)
	}
	if dry[1].Reason == "" || dry[2].Reason == "" {
		t.Errorf("failures without a reason: %+v", dry)
	}
	if _, err := b.store.GetUserByClerkIDIncludingDeleted(ctx, "user_new"); !errors.Is(err, users.ErrNoRow) {
		t.Fatalf("the dry run wrote: %v", err)
	}
	got, err := b.svc.SyncClerkUsers(ctx, states, false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, ignoreReason); diff != "" {
		t.Errorf("sync (-want +got):\n%s", diff)
	}
	checkInvariants(t, b, "user_new")

	got, err = b.svc.SyncClerkUsers(ctx, []users.ClerkUser{
		{ID: "user_new", Email: "new@example.com", UpdatedAt: 5},
		{ID: "user_new", Email: "older@example.com", UpdatedAt: 4},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Outcome != users.OutcomeUnchanged || got[1].Outcome != users.OutcomeStale {
		t.Errorf("same and older state: %+v", got)
	}
	if u := ensure(t, b, "user_new"); u.Email != "new@example.com" {
		t.Errorf("email %q after an older state", u.Email)
	}
}
