package store_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// TestAuditedCorrections: a correction made with an AuditEntry writes its
// audit row in the same transaction, once, with the account's state before
// and after; one that fails or replays writes none; bad entries and writes
// that cannot be audited change nothing.
func TestAuditedCorrections(t *testing.T) {
	t.Parallel()
	svc, console := consoleSetup(t)
	ctx := context.Background()
	u, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_audited", Email: "audited@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	entry := func(action, key string) users.AuditEntry {
		return users.AuditEntry{Operator: "user_op", Role: "support", Action: action, Reason: "because", IdempotencyKey: key}
	}
	type row struct {
		action, before, after string
	}
	rows := func() []row {
		t.Helper()
		rs, err := console.AuditLog(ctx, u.ID, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]row, len(rs))
		for i, r := range rs {
			out[len(rs)-1-i] = row{r.Action, string(r.Before), string(r.After)}
		}
		return out
	}
	balance := func() int64 {
		t.Helper()
		a, err := console.Account(ctx, u.ID)
		if err != nil {
			t.Fatal(err)
		}
		return a.Credits
	}

	grant := users.CreditChange{ClerkUserID: "user_audited", Amount: 5, IdempotencyKey: "k-grant", Reason: "because"}
	if _, err := svc.GrantCredits(users.WithAudit(ctx, entry(users.AuditGrant, "k-grant")), grant); err != nil {
		t.Fatal(err)
	}
	// The same key again: a replay, no second row.
	if r, err := svc.GrantCredits(users.WithAudit(ctx, entry(users.AuditGrant, "k-grant")), grant); err != nil || !r.Replayed {
		t.Fatalf("replay: %+v, %v", r, err)
	}
	// Refused writes record nothing.
	_, err = svc.DeductCredits(users.WithAudit(ctx, entry(users.AuditDeduct, "k-big")),
		users.CreditChange{ClerkUserID: "user_audited", Amount: 1000, IdempotencyKey: "k-big", Reason: "because"})
	if apperr.KindOf(err) != apperr.KindInsufficientCredits {
		t.Fatalf("deduct over the balance: %v", err)
	}
	for _, bad := range []users.AuditEntry{
		{Operator: "", Role: "support", Action: users.AuditGrant, Reason: "r", IdempotencyKey: "k-bad1"},
		{Operator: "user_op", Role: "support", Action: users.AuditGrant, Reason: " ", IdempotencyKey: "k-bad2"},
		{Operator: "user_op", Role: "support", Action: "drop_table", Reason: "r", IdempotencyKey: "k-bad3"},
		{Operator: "user_op", Role: "support", Action: users.AuditGrant, Reason: "r"},
	} {
		_, err := svc.GrantCredits(users.WithAudit(ctx, bad), users.CreditChange{ClerkUserID: "user_audited", Amount: 1, IdempotencyKey: "k-bad", Reason: "r"})
		if apperr.KindOf(err) != apperr.KindInvalidArgument {
			t.Errorf("entry %+v: %v, want invalid argument", bad, err)
		}
	}
	// A deduction by action cannot be audited: refused, not applied unaudited.
	if _, err := svc.DeductCredits(users.WithAudit(ctx, entry(users.AuditDeduct, "k-action")),
		users.CreditChange{ClerkUserID: "user_audited", Action: "anything", IdempotencyKey: "k-action"}); err == nil {
		t.Fatal("an audited deduction by action was applied")
	}
	if _, err := svc.SetPlan(users.WithAudit(ctx, entry(users.AuditSetPlan, "k-plan")),
		users.SetPlanInput{ClerkUserID: "user_audited", Plan: users.PlanPro, BonusCredits: 2, IdempotencyKey: "k-plan", Reason: "because"}); err != nil {
		t.Fatal(err)
	}
	// Closing needs an entry; then it is audited once, and final.
	if _, err := console.CloseAccount(ctx, u.ID); apperr.KindOf(err) != apperr.KindPermissionDenied {
		t.Fatalf("close without an audit entry: %v", err)
	}
	if replayed, err := console.CloseAccount(users.WithAudit(ctx, entry(users.AuditClose, "k-close")), u.ID); err != nil || replayed {
		t.Fatalf("close: %v, %v", replayed, err)
	}
	if replayed, err := console.CloseAccount(users.WithAudit(ctx, entry(users.AuditClose, "k-close2")), u.ID); err != nil || !replayed {
		t.Fatalf("close again: %v, %v", replayed, err)
	}
	if _, err := console.CloseAccount(users.WithAudit(ctx, entry(users.AuditClose, "k-close3")), uuid.New()); apperr.KindOf(err) != apperr.KindNotFound {
		t.Fatalf("close of no account: %v", err)
	}
	_, err = svc.GrantCredits(users.WithAudit(ctx, entry(users.AuditGrant, "k-after")),
		users.CreditChange{ClerkUserID: "user_audited", Amount: 1, IdempotencyKey: "k-after", Reason: "because"})
	if err == nil {
		t.Fatal("a grant to a closed account was applied")
	}

	want := []row{
		{users.AuditGrant, `{"plan": "FREE", "closed": false, "balance": 10}`, `{"plan": "FREE", "closed": false, "balance": 15}`},
		{users.AuditSetPlan, `{"plan": "FREE", "closed": false, "balance": 15}`, `{"plan": "PRO", "closed": false, "balance": 17}`},
		{users.AuditClose, `{"plan": "PRO", "closed": false, "balance": 17}`, `{"plan": "PRO", "closed": true, "balance": 17}`},
	}
	got := rows()
	if len(got) != len(want) {
		t.Fatalf("audit rows %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("audit row %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if b := balance(); b != 17 {
		t.Errorf("balance %d, want 17", b)
	}
}

// TestConsoleSearch finds accounts by email prefix (any case), Clerk id
// and account id, and pages.
func TestConsoleSearch(t *testing.T) {
	t.Parallel()
	svc, console := consoleSetup(t)
	ctx := context.Background()
	var ids []uuid.UUID
	for _, e := range []string{"Ada@example.com", "ada.b@example.com", "adam@example.com", "bob@example.com"} {
		u, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_" + uuid.NewString()[:8], Email: e})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, u.ID)
	}
	count := func(q string, after uuid.UUID, limit int32) int {
		t.Helper()
		as, err := console.Search(ctx, q, after, limit)
		if err != nil {
			t.Fatal(err)
		}
		return len(as)
	}
	for q, want := range map[string]int{"ada": 3, "ADA.": 1, "adam@": 1, "b": 1, "zed": 0, "%": 0, "_": 0, ids[3].String(): 1, "": 0} {
		if got := count(q, uuid.Nil, 10); got != want {
			t.Errorf("search %q: %d results, want %d", q, got, want)
		}
	}
	first, err := console.Search(ctx, "ada", uuid.Nil, 2)
	if err != nil || len(first) != 2 {
		t.Fatalf("first page: %v, %v", first, err)
	}
	if got := count("ada", first[1].ID, 2); got != 1 {
		t.Errorf("second page: %d results, want 1", got)
	}
}

func consoleSetup(t *testing.T) (*users.Service, *users.Console) {
	t.Helper()
	st := store.New(testdb.Pool(t), store.Options{})
	return users.NewService(st, users.Options{InitialCredits: 10}), users.NewConsole(st)
}
